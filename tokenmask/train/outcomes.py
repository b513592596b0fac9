"""``EpisodeOutcomes``: an SB3 ``VecEnvWrapper`` that reports each finished episode, and can add a
recoverability bonus to its last reward.

Why a bonus: the env's ``information`` reward prices a masked token by how well the reconstructor
predicts it *from the masked prefix*, which favours scattered masks of predictable tokens. The
primary metric of EVALUATION.md instead asks how much of the document a judge recovers when it
reads the compressed text first, which favours keeping readable, contiguous spans. The bonus is
that metric for the episode's document, with the metrics module's NLLs (one definition)::

    bonus = recoverability_weight * (R(empty) - R(kept)) / (R(empty) - R(document))

with ``R(p) = NLL(document | BOS + p + sep)`` (:func:`tokenmask.evaluate.metrics.recovery_nlls`)
and ``kept`` the document's unmasked ids: 1 when the kept tokens help the judge as much as the
whole document, 0 when they help as little as nothing. It is added to the reward of the episode's
last step. Keep ``recoverability_weight`` below the env's ``rate_penalty``: a bonus that grows
faster with kept tokens than the penalty for missing the rate teaches the agent to mask too little.
"""

from __future__ import annotations

import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn

from tokenmask.envs.episodes import EpisodeRecord
from tokenmask.evaluate.metrics import recovery_nlls, separator_ids
from tokenmask.reconstructors import Reconstructor

RECORD_KEY = "episode_record"
"""Info key of the finished episode's :class:`~tokenmask.envs.EpisodeRecord` (terminal steps only)."""
GAIN_KEY = "recoverability"
"""Info key of the episode's document recoverability (terminal steps, when a judge is set)."""


def vocabulary_without_mask(reconstructor: Reconstructor) -> dict[str, int]:
    """The tokenizer's vocabulary without an added mask token (a judge is loaded without one)."""
    vocab = dict(reconstructor.tokenizer.get_vocab())
    if reconstructor.mask_token_id is not None:
        vocab = {k: v for k, v in vocab.items() if v != reconstructor.mask_token_id}
    return vocab


def same_vocabulary(first: Reconstructor, second: Reconstructor) -> bool:
    """True when both tokenizers give text the same ids (an added mask token aside)."""
    return first is second or vocabulary_without_mask(first) == vocabulary_without_mask(second)


class EpisodeOutcomes(VecEnvWrapper):
    """Puts each finished episode's record in its terminal info, and optionally adds the recoverability bonus.

    Wraps a :class:`~tokenmask.envs.TokenMaskSB3VecEnv` (or a wrapper of it) whose batched env has
    ``pop_completed_episodes``. Terminal infos get ``info["episode_record"]`` (document ids and the
    agent's mask: the joint fine-tuning reads them) and, with a judge, ``info["recoverability"]``.

    :param venv: the TokenMask SB3 vector env.
    :param reconstructor: the env's reconstructor (its tokenizer made the document ids).
    :param judge: the frozen judge of the bonus; ``None`` = no bonus.
    :param recoverability_weight: weight of the bonus (reward units per unit of recoverability).
    """

    def __init__(
        self,
        venv: VecEnv,
        reconstructor: Reconstructor,
        judge: Reconstructor | None = None,
        recoverability_weight: float = 0.0,
    ) -> None:
        super().__init__(venv)
        if recoverability_weight < 0:
            raise ValueError(f"recoverability_weight must be >= 0, got {recoverability_weight}.")
        if recoverability_weight > 0 and judge is None:
            raise ValueError(
                "A recoverability bonus needs a judge. Fix: pass judge=, or recoverability_weight=0."
            )
        self.reconstructor = reconstructor
        self.judge = judge if recoverability_weight > 0 else None
        self.recoverability_weight = float(recoverability_weight)
        self._sep = separator_ids(self.judge) if self.judge is not None else []
        self._reference: dict[int, tuple[float, float]] = {}  # document -> (R(empty), R(document))
        self._same_vocab = self.judge is None or same_vocabulary(reconstructor, self.judge)

    def reset(self) -> VecEnvObs:
        obs = self.venv.reset()
        self.venv.env_method("pop_completed_episodes")  # drop episodes of an earlier life of the env
        return obs

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = self.venv.step_wait()
        if not dones.any():
            return obs, rewards, dones, infos
        records: list[EpisodeRecord] = self.venv.env_method("pop_completed_episodes", indices=[0])[0]
        done_rows = np.flatnonzero(dones)
        # the env appends records in row order of the episodes that ended in this step
        records = records[-len(done_rows) :]
        if len(records) != len(done_rows):
            raise RuntimeError(f"{len(done_rows)} episodes ended but the env reported {len(records)}.")
        gains = self.recoverabilities(records) if self.judge is not None else None
        rewards = rewards.copy()
        for j, (row, record) in enumerate(zip(done_rows, records)):
            infos[row][RECORD_KEY] = record
            if gains is not None:
                infos[row][GAIN_KEY] = float(gains[j])
                rewards[row] += self.recoverability_weight * gains[j]
        return obs, rewards, dones, infos

    def _judge_ids(self, ids: np.ndarray) -> list[int]:
        """Reconstructor ids as judge ids (decoded and re-encoded when the vocabularies differ)."""
        if self._same_vocab:
            return [int(t) for t in ids]
        assert self.judge is not None
        return self.judge.encode(self.reconstructor.decode([int(t) for t in ids]))

    def recoverabilities(self, records: list[EpisodeRecord]) -> np.ndarray:
        """Recoverability of each record's document from its kept tokens, in one batched judge pass.

        ``R(empty)`` and ``R(document)`` of a document are computed once and cached by its corpus index.
        """
        assert self.judge is not None
        documents = [self._judge_ids(r.ids) for r in records]
        kept = [self._judge_ids(np.asarray(r.ids)[~np.asarray(r.mask, dtype=bool)]) for r in records]
        first = {r.document: d for r, d in zip(records, documents)}
        missing = sorted(set(first) - set(self._reference))
        if missing:
            targets = [first[m] for m in missing]
            empty = recovery_nlls(self.judge, [[] for _ in missing], targets, self._sep)
            full = recovery_nlls(self.judge, targets, targets, self._sep)
            self._reference.update(zip(missing, zip(empty.tolist(), full.tolist())))
        with_kept = recovery_nlls(self.judge, kept, documents, self._sep)
        empty_nll = np.array([self._reference[r.document][0] for r in records])
        full_nll = np.array([self._reference[r.document][1] for r in records])
        # a document the judge recovers no better with itself than without carries no signal
        denominator = np.maximum(empty_nll - full_nll, 1e-6)
        return np.clip((empty_nll - with_kept) / denominator, -1.0, 2.0)
