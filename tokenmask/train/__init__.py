"""Training the agent: ``tokenmask train`` (PPO/A2C on TokenMask-v0), its callbacks, the run folder,
and the trained agent as a compressor (``agent:RUN_DIR`` in ``tokenmask evaluate``,
``tokenmask compress --agent RUN_DIR``).

Importing this package registers the ``agent`` method with :mod:`tokenmask.evaluate`; the heavy
modules load when the method is built. ``agent:default`` names the agent shipped in the package
(:data:`tokenmask.shipped_agent.DEFAULT_AGENT_DIR`). :func:`check_agent_argument` is the method's argument
check, which ``tokenmask evaluate`` runs before any model loads (importing this package is light).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tokenmask.evaluate.compressor import MethodContext, register_method
from tokenmask.shipped_agent import DEFAULT_AGENT, shipped_agent_dir

if TYPE_CHECKING:
    from tokenmask.train.agent import AgentCompressor


def agent_dir(argument: str) -> Path:
    """The run folder an ``agent:`` argument names: the shipped agent for ``default``, else the path.

    :raises AgentNotFoundError: for ``default`` when no agent ships with this install.
    :raises InputError: for an empty argument.
    """
    from tokenmask.errors import InputError

    if not argument:
        raise InputError(
            "The agent method needs a run folder.",
            fix="name it as agent:RUN_DIR, or agent:default for the agent shipped in the package.",
            key="methods",
        )
    if argument == DEFAULT_AGENT:
        return shipped_agent_dir(
            f"agent:{DEFAULT_AGENT}",
            "name a run folder as agent:RUN_DIR (`tokenmask train`), or use another method such as "
            "span_self_information.",
        )
    return Path(argument)


def check_agent_argument(argument: str) -> None:
    """``agent:RUN_DIR`` must name a run folder holding a saved agent (checked before any model loads).

    :raises AgentNotFoundError: no shipped agent for ``agent:default``.
    :raises InputError: no argument, or no such folder.
    :raises RunFolderError: a folder without a readable config or agent.
    """
    from tokenmask.errors import InputError

    path = agent_dir(argument)
    if not path.is_dir():
        raise InputError(
            f"agent:{argument}: no such run folder.",
            fix="pass a folder written by `tokenmask train` (its run_dir).",
            path=argument,
        )
    # these import torch: only once a folder is there to read
    from tokenmask.train.export import check_policy_folder, is_policy_folder

    if is_policy_folder(path):  # an exported agent (tokenmask export): policy.pt, no agent.zip
        check_policy_folder(path)
        return
    from tokenmask.train.loading import check_run_reconstructor, load_run_config

    config, run = load_run_config(path)
    run.require_agent()
    check_run_reconstructor(config, run)


def _agent_method(argument: str, context: MethodContext) -> AgentCompressor:
    """``agent:RUN_DIR``: the trained agent of a run folder, measured with the judge's tokenizer."""
    from tokenmask.train.agent import AgentCompressor

    return AgentCompressor.load(
        str(agent_dir(argument)), judge=context.judge, device=context.device, name=f"agent:{argument}"
    )


register_method("agent", _agent_method, overwrite=True)
