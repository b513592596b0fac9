"""The env's own reward of any keep mask: replay the mask through TokenMask-v0, window by window.

This puts the agent and the baselines on the training objective's scale: each method's masks are
played as actions in the same environment (same reward, same reconstructor) and the episode
returns are compared (``eval/env_return`` in TensorBoard). With a judge and a
``recoverability_weight``, the env's reward includes its end-of-episode recoverability bonus, as in
training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tokenmask.envs.vector_env import TokenMaskVectorEnv
from tokenmask.reconstructors import Reconstructor


def documents_env(
    documents: Sequence[Sequence[int]],
    reconstructor: Reconstructor,
    env_options: dict[str, Any],
    rate: float,
    judge: Reconstructor | None = None,
    recoverability_weight: float = 0.0,
    **overrides: Any,
) -> TokenMaskVectorEnv:
    """A TokenMask-v0 vector env playing exactly these documents, one per sub-env, in order, at ``rate``.

    The run's options shape the observations and the reward; what belongs to a training corpus is
    replaced (as :meth:`~tokenmask.envs.TokenMaskEnv.from_texts` does): no shuffling, whole
    documents, none dropped for being short, one fixed target rate, no per-episode rate draw.

    :param documents: token ids of the reconstructor's vocabulary, one non-empty list per sub-env.
    :param env_options: the run's TokenMask-v0 options (any subset of ``TokenMaskConfig``'s keys).
    :param rate: the target rate of every episode.
    :param judge: the frozen judge of the recoverability bonus (read when ``recoverability_weight > 0``).
    :param recoverability_weight: the bonus's weight (0: off, whatever ``env_options`` says).
    :param overrides: further env options that win over ``env_options`` (e.g. ``span=1``).
    """
    options = {
        **env_options,
        "shuffle": False,
        "max_tokens": None,
        "min_tokens": 1,
        "target_rate": rate,
        "target_rate_range": None,
        "recoverability_weight": recoverability_weight,
        # the documents are whole contexts: none of their ids is a continuation, and the bonus is paid once
        "continuation_tokens": 0,
        "retention_weight": 0.0,
        "judge_credit": "terminal",
        **overrides,
    }
    return TokenMaskVectorEnv(
        num_envs=len(documents),
        documents=[list(d) for d in documents],
        reconstructor=reconstructor,
        judge=judge,
        **options,
    )


def replay_returns(
    contexts: Sequence[Sequence[int]],
    keep_masks: Sequence[np.ndarray],
    rate: float,
    reconstructor: Reconstructor,
    env_options: dict[str, Any],
    seed: int = 0,
    judge: Reconstructor | None = None,
    recoverability_weight: float = 0.0,
) -> np.ndarray:
    """Return of one TokenMask-v0 episode per context when its tokens are masked as ``~keep``.

    The returns of :func:`replay_episodes` (see there for the arguments).
    """
    return replay_episodes(
        contexts, keep_masks, rate, reconstructor, env_options, seed, judge, recoverability_weight
    )[0]


def replay_episodes(
    contexts: Sequence[Sequence[int]],
    keep_masks: Sequence[np.ndarray],
    rate: float,
    reconstructor: Reconstructor,
    env_options: dict[str, Any],
    seed: int = 0,
    judge: Reconstructor | None = None,
    recoverability_weight: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Return and recoverability of one TokenMask-v0 episode per context masked as ``~keep``.

    :param contexts: per document, token ids of the reconstructor's vocabulary (non-empty).
    :param keep_masks: per document, ``True`` = kept (masked = ``~keep``).
    :param rate: the target rate of the episodes (the end-of-episode penalty uses it).
    :param reconstructor: prices the masked tokens.
    :param env_options: TokenMask-v0 options (``window``, ``context_size``, ``reward_type``, ...; any
        subset of ``TokenMaskConfig``'s keys, e.g. ``asdict(config.env)``).
    :param seed: seed of the env reset.
    :param judge: the frozen judge of the env's recoverability bonus (read when ``recoverability_weight > 0``).
    :param recoverability_weight: the bonus's weight (0: the per-token reward and rate penalty only).
    :return: ``(returns, recoverability)``, each ``(documents,)``: the episode returns (bonus
        included) and the judge's recoverability the bonus paid (``nan`` without the bonus), so
        ``returns - recoverability_weight * recoverability`` is the per-token part of the return.
    """
    if len(contexts) != len(keep_masks):
        raise ValueError(f"{len(keep_masks)} masks for {len(contexts)} contexts; they must match.")
    if any(len(c) == 0 for c in contexts):
        raise ValueError("Every replayed context needs at least one token.")
    # token-level masks of any method are replayed token by token: the reward does not depend on
    # how the agent's actions were grouped, only on which tokens end up masked
    env = documents_env(contexts, reconstructor, env_options, rate, judge, recoverability_weight, span=1)
    window = env.config.window
    masked = [~np.asarray(k, dtype=bool) for k in keep_masks]
    returns = np.zeros(len(contexts), dtype=np.float64)
    recoverability = np.full(len(contexts), np.nan)
    finished = np.zeros(len(contexts), dtype=bool)
    env.reset(seed=seed)
    step = 0
    while not finished.all():
        actions = np.zeros((len(contexts), window), dtype=bool)
        for row, m in enumerate(masked):
            chunk = m[step * window : (step + 1) * window]
            actions[row, : len(chunk)] = chunk
        _, rewards, terminated, _, infos = env.step(actions)
        returns[~finished] += rewards[~finished]
        ended = terminated & ~finished
        if ended.any() and "recoverability" in infos.get("final_info", {}):
            recoverability[ended] = infos["final_info"]["recoverability"][ended]
        finished |= terminated
        step += 1
    env.close()
    return returns, recoverability
