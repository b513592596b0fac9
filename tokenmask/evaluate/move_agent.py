"""``move_agent:POLICY[:bf16]:BASE``: ``refine_lookahead:p:BASE`` with a trained policy choosing the move.

The search proposes and judges the moves exactly as ``refine_lookahead:p`` does
(:meth:`~tokenmask.evaluate.refine.RecoverabilitySearch.judged_moves`: ``R`` and the lookahead ``S``
of the best estimated moves, the context only); a :class:`~tokenmask.policies.move_policy.MovePolicy`
trained on ``TokenMaskMoves-v0`` (:mod:`tokenmask.envs.moves`) picks one of them, or the base mask,
in place of the rule. ``POLICY`` is the SB3 ``.zip`` it was saved to (``model.save``; PPO or A2C), or ``default``
for the shipped one (:data:`DEFAULT_MOVE_POLICY`);
its observation's row count fixes the number of judged moves (rows - 1). ``bf16`` runs the search's
passes in bfloat16 (as ``refine_lookahead:p:bf16``); the policy should be trained on a table built
with the same passes. ::

    tokenmask evaluate --methods move_agent:default:bf16:truncation,truncation --device cuda
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tokenmask.envs.moves import MOVE_AGENT_DIR
from tokenmask.evaluate.compressor import (
    MethodContext,
    TokenIds,
    build_method,
    check_rate,
    register_method,
)
from tokenmask.evaluate.refine import (
    GUARD_MOVES,
    LOOKAHEAD_PROTECT,
    LOOKAHEAD_TOKENS,
    LOOKAHEAD_TOLERANCE,
    RecoverabilitySearch,
)
from tokenmask.evaluate.refine_methods import OTHER_DTYPES, SEARCH_DTYPES, check_refine_argument

if TYPE_CHECKING:
    from tokenmask.evaluate.compressor import Method
    from tokenmask.policies.move_policy import MovePolicy
    from tokenmask.reconstructors import Reconstructor


DEFAULT_MOVE_POLICY = MOVE_AGENT_DIR / "policy.zip"
"""The shipped move policy (``move_agent:default:...``): cloning on the pydocs train split's best moves, chosen on
validation (``tokenmask/agents/moves/agent.json`` says how it was made and what it measured)."""


_POLICY_FIX = "train one on TokenMaskMoves-v0 (tokenmask moves train) and pass its .zip, or use default."


def check_move_policy_file(path: str | os.PathLike[str]) -> Path:
    """The policy file ``path`` names (``default``: :data:`DEFAULT_MOVE_POLICY`), if it is a zip archive.

    :raises ValueError: if there is no such file, or it is not a zip archive (an SB3 policy is one).
    """
    file = DEFAULT_MOVE_POLICY if str(path) == "default" else Path(path)
    if not file.is_file():
        raise ValueError(f"move_agent: no policy file at {file}. Fix: {_POLICY_FIX}")
    if not zipfile.is_zipfile(file):
        raise ValueError(
            f"move_agent: {file} is not a zip archive (an SB3 policy file is one). Fix: {_POLICY_FIX}"
        )
    return file


def check_move_agent_argument(argument: str) -> None:
    """``move_agent:POLICY[:bf16]:BASE`` before any model loads: the parts parse, the policy file is a zip archive
    and the base is a method ``refine_lookahead`` could refine.

    :raises ValueError: naming the fix.
    """
    path, _, base = split_move_agent_argument(argument)
    check_move_policy_file(path)
    check_refine_argument(base, "move_agent")


def load_move_policy(path: str | os.PathLike[str]) -> MovePolicy:
    """The :class:`MovePolicy` of an SB3 ``.zip`` (on the CPU: it is a few thousand parameters); ``default`` is
    :data:`DEFAULT_MOVE_POLICY`.

    :raises ValueError: if the file is missing, damaged, or holds another kind of policy (names the fix).
    """
    from tokenmask.envs.moves import MOVE_FEATURES
    from tokenmask.policies.move_policy import MovePolicy
    from tokenmask.train.loading import load_agent

    path = check_move_policy_file(path)
    # only the policy is read: PPO's loader reads an A2C file's policy as well
    policy = load_agent(path, "ppo", device="cpu", fix=_POLICY_FIX).policy
    if not isinstance(policy, MovePolicy):
        raise ValueError(
            f"move_agent: {path} holds a {type(policy).__name__}, not a MovePolicy. Fix: {_POLICY_FIX}"
        )
    width = policy.observation_space.shape[-1]  # type: ignore[index]
    if width != len(MOVE_FEATURES) + 1:
        raise ValueError(
            f"move_agent: {path} reads {width - 1} features per candidate, this version gives {len(MOVE_FEATURES)}. "
            f"Fix: {_POLICY_FIX}"
        )
    policy.set_training_mode(False)
    return policy


class MoveAgentSearch(RecoverabilitySearch):
    """``refine_lookahead:p`` whose choice among the judged moves is a trained :class:`MovePolicy`'s (module doc).

    :param base: the masking method that proposes the masks.
    :param judge: the evaluation's judge.
    :param policy: the trained policy; its observation's rows - 1 = moves judged per context.
    :param dtype: dtype of the search's own passes (``None``: the judge's).
    :param name: name in reports.
    """

    default_name = "move_agent"

    def __init__(
        self,
        base: Method,
        judge: Reconstructor,
        policy: MovePolicy,
        dtype: str | None = None,
        name: str | None = None,
    ) -> None:
        rows = int(policy.observation_space.shape[0])  # type: ignore[index]
        super().__init__(
            base,
            judge,
            moves=GUARD_MOVES,
            protect=LOOKAHEAD_PROTECT,
            lookahead=LOOKAHEAD_TOKENS,
            lookahead_tolerance=LOOKAHEAD_TOLERANCE,
            proposals=rows - 1,
            dtype=dtype,
            name=name or f"move_agent:{base.name}",
        )
        self.policy = policy

    def keep_masks(self, contexts: Sequence[TokenIds], rate: float, seed: int = 0) -> list[np.ndarray]:
        from tokenmask.envs.moves import move_features, observation_rows

        check_rate(rate)
        judged = self.judged_moves(contexts, rate, seed=seed)
        features = [move_features(m, rate, self.lookahead, self.lookahead_tolerance) for m in judged]
        observations, _ = observation_rows(features, self.proposals + 1)
        actions, _ = self.policy.predict(observations, deterministic=True)
        return [m.masks[int(a)] if int(a) < len(m.masks) else m.masks[0] for m, a in zip(judged, actions)]


def split_move_agent_argument(argument: str) -> tuple[str, str | None, str]:
    """``POLICY[:bf16]:BASE`` -> ``(policy path, search dtype or None, BASE)``.

    :raises ValueError: if the policy path or the base is missing.
    """
    path, _, rest = argument.partition(":")
    head, _, base = rest.partition(":")
    dtype = SEARCH_DTYPES.get(head) if base else None
    if dtype is None and base and head in OTHER_DTYPES:
        raise ValueError(
            f"move_agent:{argument}: the search's passes run in the judge's dtype or in {', '.join(SEARCH_DTYPES)}, "
            f"not {head}. Fix: e.g. move_agent:{path}:bf16:{base}, or load the judge in that dtype (--dtype)."
        )
    if dtype is None:
        base = rest
    if not path or not base:
        raise ValueError(
            f"move_agent:{argument} needs a policy file and a base method. "
            "Fix: e.g. move_agent:runs/moves/agent.zip:truncation or move_agent:runs/moves/agent.zip:bf16:truncation."
        )
    return path, dtype, base


def _move_agent(argument: str, context: MethodContext) -> MoveAgentSearch:
    path, dtype, base = split_move_agent_argument(argument)
    check_refine_argument(base, "move_agent")
    return MoveAgentSearch(
        build_method(base, context),
        context.judge,
        load_move_policy(path),
        dtype,
        name=f"move_agent:{argument}",
    )


register_method("move_agent", _move_agent, overwrite=True)
