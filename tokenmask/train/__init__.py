"""Training the agent: ``tokenmask train`` (PPO/A2C on TokenMask-v0), its callbacks, the run folder,
and the trained agent as a compressor (``agent:RUN_DIR`` in ``tokenmask evaluate``,
``tokenmask compress --agent RUN_DIR``).

Importing this package registers the ``agent`` method with :mod:`tokenmask.evaluate`; the heavy
modules load when the method is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tokenmask.evaluate.compressor import MethodContext, register_method

if TYPE_CHECKING:
    from tokenmask.train.agent import AgentCompressor


def _agent_method(argument: str, context: MethodContext) -> AgentCompressor:
    """``agent:RUN_DIR``: the trained agent of a run folder, measured with the judge's tokenizer."""
    from tokenmask.train.agent import AgentCompressor

    return AgentCompressor.load(argument, judge=context.judge, device=context.device)


register_method("agent", _agent_method, overwrite=True)
