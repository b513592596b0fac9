"""The agent shipped inside the package: where it lives, whether this install carries one, and the error when not.

Below both :mod:`tokenmask.api` (``tokenmask.compress(agent="default")``) and :mod:`tokenmask.train`
(``agent:default``), which name it with their own fix; standard library only.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_AGENT = "default"
"""The name (``agent="default"``, ``agent:default``) of the agent shipped in the package."""

DEFAULT_AGENT_DIR = Path(__file__).resolve().parent / "agents" / "default"
"""Where the package's shipped agent lives: a folder of ``tokenmask export`` (``policy.pt``, ``config.json``,
``agent.json``), put there by ``tokenmask export RUN_DIR --output_dir tokenmask/agents/default``."""


class AgentNotFoundError(ValueError):
    """Raised when ``agent`` names no shipped agent and no run folder."""


def shipped_agent_available() -> bool:
    """Whether this install carries an agent in :data:`DEFAULT_AGENT_DIR` (its ``config.json`` is there)."""
    return (DEFAULT_AGENT_DIR / "config.json").is_file()


def shipped_agent_dir(named_as: str, fix: str) -> Path:
    """:data:`DEFAULT_AGENT_DIR`, if this install carries an agent there.

    :param named_as: how the caller's user named it (``agent:default``), to start the message.
    :param fix: what that user can do instead (ends the message).
    :raises AgentNotFoundError: if no agent ships with this install.
    """
    if not shipped_agent_available():
        raise AgentNotFoundError(
            f"{named_as}: no agent ships with this install of tokenmask yet (looked in {DEFAULT_AGENT_DIR}). Fix: {fix}"
        )
    return DEFAULT_AGENT_DIR
