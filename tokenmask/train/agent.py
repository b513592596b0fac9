"""The trained agent as a compressor: ``agent:RUN_DIR`` in ``tokenmask evaluate``, ``tokenmask compress --agent``.

The agent reads each context window by window in TokenMask-v0 (the same observations as in
training: the run's reconstructor computes the token features), and acts deterministically
(mask where its probability exceeds 0.5), so the masked context it sees follows its own choices.
The mask probabilities of that pass rank the tokens; the compressor then drops exactly
``round(rate * n)`` of the highest-ranked ones, and corrects that count when the judge's
re-tokenization of the kept text would miss the requested rate by more than half a percent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tokenmask.config import ConfigError, build_config
from tokenmask.envs.env_config import TokenMaskConfig
from tokenmask.envs.episodes import expand_actions
from tokenmask.envs.recoverability import vocabulary_without_mask
from tokenmask.evaluate.compressor import MaskingCompressor, TokenIds, check_rate, tokens_to_drop
from tokenmask.policies import TokenMaskPolicy
from tokenmask.reconstructors import MaskMode, Reconstructor
from tokenmask.train.config import TrainConfig
from tokenmask.train.loading import algorithm_class, load_run_config, load_run_reconstructor
from tokenmask.train.replay import documents_env

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


RATE_TOLERANCE = 0.005
"""Per-document rate error (after re-tokenization) above which the dropped count is corrected."""


def drop_highest(scores: np.ndarray, count: int) -> np.ndarray:
    """Keep mask dropping the ``count`` highest-scoring positions (ties: the earlier one first)."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((np.arange(len(scores)), -scores))
    keep = np.ones(len(scores), dtype=bool)
    keep[order[: max(0, min(count, len(scores)))]] = False
    return keep


class AgentCompressor(MaskingCompressor):
    """A trained TokenMask policy used as a :class:`~tokenmask.evaluate.MaskingCompressor`.

    :param policy: the trained policy.
    :param reconstructor: the run's reconstructor (fine-tuned with the agent when joint training was on).
    :param env_options: the run's TokenMask-v0 options: its ``config.env``, or a dict of any of
        :data:`~tokenmask.envs.env_config.ENV_OPTION_KEYS` (the others take the env's defaults).
        The agent's pass keeps those that shape what it observes and replaces the corpus ones
        (see :func:`~tokenmask.train.replay.documents_env`).
    :param tokenizer: the judge's tokenizer (decodes kept ids, measures the achieved rate); default:
        the reconstructor's. Both must share one vocabulary, since the agent masks judge tokens.
    :param name: name in reports.
    :param batch_documents: documents stepped together (one batched reconstructor pass per step).
    """

    default_name = "agent"

    def __init__(
        self,
        policy: TokenMaskPolicy,
        reconstructor: Reconstructor,
        env_options: TokenMaskConfig | dict[str, Any],
        tokenizer: PreTrainedTokenizerBase | None = None,
        name: str | None = None,
        batch_documents: int = 64,
    ) -> None:
        tokenizer = tokenizer if tokenizer is not None else reconstructor.tokenizer
        if tokenizer is not reconstructor.tokenizer and _without_mask(tokenizer) != vocabulary_without_mask(
            reconstructor
        ):
            raise ValueError(
                "The agent's reconstructor has another vocabulary than the judge, so its masks would not be judge tokens. "
                "Fix: evaluate with a judge of the same tokenizer family as the run's reconstructor."
            )
        super().__init__(tokenizer, name)
        if not isinstance(env_options, TokenMaskConfig):
            try:
                env_options = build_config(TokenMaskConfig, dict(env_options), section="env")
            except ConfigError as exc:
                raise ValueError(f"The agent's env options: {exc}") from exc
        if batch_documents < 1:
            raise ValueError(f"batch_documents must be >= 1, got {batch_documents}.")
        self.policy = policy
        self._reconstructor = reconstructor
        #: the run's TokenMask-v0 options, one entry per key of ``TokenMaskConfig``
        self.env_options: dict[str, Any] = asdict(env_options)
        self.batch_documents = batch_documents

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        run_dir: str,
        judge: Reconstructor | None = None,
        device: str = "auto",
        name: str | None = None,
    ) -> AgentCompressor:
        """The agent of a run folder, with the run's (fine-tuned) reconstructor.

        :param run_dir: a folder written by ``tokenmask train``.
        :param judge: the judge whose tokenizer measures the rate (default: the reconstructor's).
        :param device: device of the policy and the reconstructor.
        :raises RunFolderError: if the folder holds no config or no agent.
        """
        if not run_dir:
            raise ValueError("The agent method needs a run folder. Fix: name it as agent:RUN_DIR.")
        config, run = load_run_config(run_dir)
        reconstructor = load_run_reconstructor(config, run, device=device, trainable=False)
        model = algorithm_class(config.algo).load(run.require_agent(), device=reconstructor.device)
        policy = model.policy
        if not isinstance(policy, TokenMaskPolicy):
            raise ValueError(f"{run_dir} holds a {type(policy).__name__}, not a TokenMaskPolicy.")
        return cls(
            policy,
            reconstructor,
            config.env,
            tokenizer=judge.tokenizer if judge is not None else None,
            name=name or f"agent:{run_dir}",
        )

    @classmethod
    def from_training(cls, model: Any, reconstructor: Reconstructor, config: TrainConfig) -> AgentCompressor:
        """The agent being trained (for evaluations during training)."""
        return cls(model.policy, reconstructor, config.env, name="agent")

    # ------------------------------------------------------------------ Compressor API
    @property
    def reconstructor(self) -> Reconstructor:
        """The run's reconstructor (the evaluation measures ``recon_bits_per_masked`` with it)."""
        return self._reconstructor

    @property
    def mask_mode(self) -> MaskMode:
        """How the reconstructor reads masked tokens (the run's ``mask_mode``)."""
        return self.env_options["mask_mode"]  # type: ignore[no-any-return]

    def keep_masks(self, contexts: Sequence[TokenIds], rate: float, seed: int = 0) -> list[np.ndarray]:
        """Per context, ``True`` = kept; exactly ``round(rate * n)`` dropped, corrected for re-tokenization."""
        check_rate(rate)
        scores = self.mask_scores(contexts, rate, seed=seed)
        return [self._fit_rate(list(ids), s, rate) for ids, s in zip(contexts, scores)]

    # ------------------------------------------------------------------ the agent's pass
    def mask_scores(self, contexts: Sequence[TokenIds], rate: float, seed: int = 0) -> list[np.ndarray]:
        """The policy's probability of masking each token, from one deterministic pass per context.

        :param contexts: per document, token ids of the reconstructor's (= the judge's) vocabulary.
        :param rate: the target rate the agent is told.
        :param seed: seed of the env reset (the pass itself is deterministic).
        """
        check_rate(rate)
        scores: list[np.ndarray] = [np.zeros(0) for _ in contexts]
        nonempty = [i for i, c in enumerate(contexts) if len(c) > 0]
        for start in range(0, len(nonempty), self.batch_documents):
            chunk = nonempty[start : start + self.batch_documents]
            for i, s in zip(chunk, self._score_batch([list(contexts[i]) for i in chunk], rate, seed)):
                scores[i] = s
        return scores

    def _score_batch(self, documents: list[list[int]], rate: float, seed: int) -> list[np.ndarray]:
        env = documents_env(documents, self._reconstructor, self.env_options, rate)
        expected = self.policy.observation_space
        if env.single_observation_space["token_ids"].shape != expected["token_ids"].shape:  # type: ignore[index]
            raise ValueError(
                "The run's window does not match its policy's observation space; the run folder is inconsistent."
            )
        window = env.config.window
        scores = [np.zeros(len(d), dtype=np.float64) for d in documents]
        steps_done = np.zeros(len(documents), dtype=np.int64)
        finished = np.zeros(len(documents), dtype=bool)
        obs, _ = env.reset(seed=seed)
        self.policy.set_training_mode(False)
        while not finished.all():
            with torch.no_grad():
                tensor_obs, _ = self.policy.obs_to_tensor(obs)
                entries = self.policy.action_probabilities(tensor_obs).float().cpu().numpy()  # type: ignore[arg-type]
            probs = expand_actions(entries, env.config.span)
            for row in np.flatnonzero(~finished):
                lo = int(steps_done[row]) * window
                hi = min(lo + window, len(documents[row]))
                scores[row][lo:hi] = probs[row, : hi - lo]
            obs, _, terminated, _, _ = env.step(entries > 0.5)
            steps_done += 1
            finished |= terminated
        env.close()
        return scores

    def _fit_rate(self, ids: list[int], scores: np.ndarray, rate: float) -> np.ndarray:
        """Drop the highest-scoring tokens; correct the count until the re-tokenized rate is within tolerance."""
        n = len(ids)
        if n == 0:
            return np.ones(0, dtype=bool)
        count = tokens_to_drop(n, rate)
        keep = drop_highest(scores, count)
        for _ in range(4):
            kept_text = str(self.tokenizer.decode([t for t, k in zip(ids, keep) if k]))
            achieved = 1.0 - len(self.tokenizer(kept_text, add_special_tokens=False)["input_ids"]) / n
            correction = int(round((rate - achieved) * n))
            if abs(achieved - rate) <= RATE_TOLERANCE or correction == 0:
                break
            count = max(0, min(n, count + correction))
            keep = drop_highest(scores, count)
        return keep


def _without_mask(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    vocab = dict(tokenizer.get_vocab())
    if tokenizer.mask_token_id is not None:
        vocab = {k: v for k, v in vocab.items() if v != tokenizer.mask_token_id}
    return vocab
