"""Values of the env option ``judge_credit`` (light: no torch, so configs can check them)."""

from __future__ import annotations

JUDGE_CREDITS: tuple[str, ...] = ("terminal", "dense")
"""``judge_credit`` values: the bonus at the last step, or its change at every step."""
