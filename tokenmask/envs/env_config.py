"""Options of TokenMask-v0: one dataclass shared by the single env, the vector env and configs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from tokenmask.envs.judge_credit import JUDGE_CREDITS
from tokenmask.envs.rewards import REWARD_TYPES
from tokenmask.reconstructors.options import MASK_MODES

TOKEN_FEATURE_KINDS: tuple[str, ...] = ("lm", "position")
"""Values of ``TokenMaskConfig.token_features``."""


@dataclass
class TokenMaskConfig:
    """Every scalar option of ``TokenMask-v0`` (``gym.make("TokenMask-v0", **options)``).

    Objects (a corpus in memory, a loaded reconstructor, a reward instance) are passed to the
    environment separately (``documents=``, ``reconstructor=``, ``reward=``).
    """

    data_path: str = field(
        default="sample",
        metadata={"help": "prepared corpus folder, .txt/.jsonl file or folder, or 'sample' (shipped corpus)"},
    )
    split: str = field(default="train", metadata={"help": "split of a prepared corpus"})
    text_column: str = field(default="text", metadata={"help": "JSONL key / dataset column holding the text"})
    max_tokens: int | None = field(
        default=512,
        metadata={"help": "texts are cut into documents of at most this many tokens (None: whole texts)"},
    )
    min_tokens: int | None = field(
        default=None, metadata={"help": "documents shorter than this are dropped (default: one window)"}
    )
    model_name: str = field(default="default", metadata={"help": "reconstructor to load when none is passed"})
    device: str = field(default="auto", metadata={"help": "device of a loaded reconstructor"})
    dtype: str = field(default="auto", metadata={"help": "dtype of a loaded reconstructor"})
    window: int = field(default=16, metadata={"help": "tokens decided per step"})
    span: int = field(
        default=1,
        metadata={
            "help": "tokens per action entry: each entry masks or keeps a run of span tokens (window must be a multiple)"
        },
    )
    context_size: int = field(default=8, metadata={"help": "tokens shown before and after the window"})
    target_rate: float = field(default=0.5, metadata={"help": "fraction of tokens to mask, in [0, 1)"})
    target_rate_range: list[float] | None = field(
        default=None, metadata={"help": "lo,hi: draw the target rate per episode, uniformly"}
    )
    reward_type: str = field(default="information", metadata={"help": f"one of {sorted(REWARD_TYPES)}"})
    bits_weight: float = field(
        default=0.1, metadata={"help": "tokens of compression one bit of reconstruction costs"}
    )
    rate_penalty: float = field(
        default=4.0, metadata={"help": "weight of the end-of-episode |rate - target| penalty"}
    )
    continuation_tokens: int = field(
        default=0,
        metadata={
            "help": "T: tokens after each document kept as its continuation for the retention bonus, never observed (texts are cut into max_tokens + T; 0 = none)"
        },
    )
    recoverability_weight: float = field(
        default=0.0,
        metadata={
            "help": "weight of the judge bonus's recoverability: how much of the document a frozen judge recovers from the kept tokens (0 = off; the weights' sum stays below rate_penalty)"
        },
    )
    retention_weight: float = field(
        default=0.0,
        metadata={
            "help": "weight of the judge bonus's retention: how well the judge predicts the continuation after reading the kept tokens (0 = off; needs continuation_tokens > 0)"
        },
    )
    judge_credit: str = field(
        default="terminal",
        metadata={
            "help": f"how the judge bonus is paid, one of {list(JUDGE_CREDITS)}: the final mask's bonus at the last step, or at every step the change of the bonus of the mask so far with undecided tokens kept (same optimum, denser signal)"
        },
    )
    judge_name: str = field(
        default="default",
        metadata={"help": "judge LM of the judge bonus, loaded when none is passed as judge="},
    )
    judge_dtype: str = field(default="auto", metadata={"help": "dtype of a loaded judge"})
    mask_mode: str = field(
        default="delete", metadata={"help": "delete (masked tokens removed) or placeholder (mask token kept)"}
    )
    shuffle: bool = field(
        default=True, metadata={"help": "draw documents in a seeded random order (else in corpus order)"}
    )
    token_features: str = field(
        default="lm",
        metadata={
            "help": "what the token_features observation holds: lm (surprisal, entropy, top-1, next surprisal from one reconstructor pass; mean_masked_bits too) or position (the position alone, the rest 0: an agent that needs no LM pass at inference)"
        },
    )
    cache_features: bool = field(
        default=True,
        metadata={"help": "keep per-document features across episodes (recomputed when the weights change)"},
    )

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be >= 1 token, got {self.window}. Fix: e.g. window=16.")
        if self.span < 1 or self.window % self.span:
            raise ValueError(
                f"span must be >= 1 and divide window ({self.window}), got {self.span}. Fix: e.g. span=1 (one decision per "
                f"token) or span={max(1, self.window // 4)}."
            )
        if self.context_size < 0:
            raise ValueError(f"context_size must be >= 0, got {self.context_size}.")
        _check_rate("target_rate", self.target_rate)
        if self.target_rate_range is not None:
            bounds = list(self.target_rate_range)
            if len(bounds) != 2:
                raise ValueError(
                    f"target_rate_range must be two numbers (lo, hi), got {self.target_rate_range}."
                )
            _check_rate("target_rate_range[0]", bounds[0])
            _check_rate("target_rate_range[1]", bounds[1])
            if bounds[0] > bounds[1]:
                raise ValueError(f"target_rate_range {bounds} has lo > hi. Fix: give (lo, hi) with lo <= hi.")
            self.target_rate_range = [float(bounds[0]), float(bounds[1])]
        if self.reward_type not in REWARD_TYPES:
            raise ValueError(
                f"Unknown reward_type {self.reward_type!r}. Fix: use one of {sorted(REWARD_TYPES)}."
            )
        self._check_judge_bonus()
        if self.token_features not in TOKEN_FEATURE_KINDS:
            raise ValueError(
                f"Unknown token_features {self.token_features!r}. Fix: use one of {list(TOKEN_FEATURE_KINDS)}."
            )
        if self.mask_mode not in MASK_MODES:
            raise ValueError(f"Unknown mask_mode {self.mask_mode!r}. Fix: use one of {list(MASK_MODES)}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 or None, got {self.max_tokens}.")
        if self.min_tokens is not None and self.min_tokens < 1:
            raise ValueError(f"min_tokens must be >= 1 or None, got {self.min_tokens}.")
        if self.max_tokens is not None and self.min_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) is larger than max_tokens ({self.max_tokens}).")

    def _check_judge_bonus(self) -> None:
        if (
            isinstance(self.continuation_tokens, bool)
            or not isinstance(self.continuation_tokens, int)
            or self.continuation_tokens < 0
        ):
            raise ValueError(
                f"continuation_tokens must be an integer >= 0, got {self.continuation_tokens!r}. Fix: e.g. 64, or 0 for none."
            )
        for name in ("recoverability_weight", "retention_weight"):
            weight = getattr(self, name)
            if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
                raise ValueError(
                    f"{name} must be a finite number >= 0, got {weight!r}. Fix: 0 turns that part of the judge bonus off."
                )
        if self.retention_weight > 0 and self.continuation_tokens == 0:
            raise ValueError(
                f"retention_weight={self.retention_weight} needs the documents' continuations, but continuation_tokens is 0. "
                "Fix: set continuation_tokens (e.g. 64) or retention_weight=0."
            )
        total = self.recoverability_weight + self.retention_weight
        if total > 0 and total >= self.rate_penalty:
            raise ValueError(
                f"The judge bonus weights (recoverability_weight {self.recoverability_weight} + retention_weight "
                f"{self.retention_weight}) must stay below rate_penalty ({self.rate_penalty}): a larger bonus pays for keeping "
                "more tokens than asked. Fix: lower the weights or raise rate_penalty."
            )
        if self.judge_credit not in JUDGE_CREDITS:
            raise ValueError(
                f"Unknown judge_credit {self.judge_credit!r}. Fix: use one of {list(JUDGE_CREDITS)}."
            )

    @property
    def judge_bonus(self) -> bool:
        """True when the env pays a judge bonus (a weight above 0) and so needs a judge."""
        return self.recoverability_weight > 0 or self.retention_weight > 0

    @property
    def action_size(self) -> int:
        """Entries of one action: ``window // span``."""
        return self.window // self.span

    @property
    def effective_min_tokens(self) -> int:
        """Shortest document kept: ``min_tokens``, or one window by default."""
        return self.min_tokens if self.min_tokens is not None else self.window


ENV_OPTION_KEYS: tuple[str, ...] = tuple(f.name for f in fields(TokenMaskConfig))
"""Every option of TokenMask-v0: the keys of ``TokenMaskConfig``, of ``tokenmask train``'s ``"env"`` section
and of a run folder's saved env."""


def _check_rate(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1) (the fraction of tokens masked), got {value!r}.")
