"""The trained agent as a compressor: ``agent:RUN_DIR`` in ``tokenmask evaluate``, ``tokenmask compress``.

The agent reads each context window by window in TokenMask-v0 (the observations of training: the
run's reconstructor computes the per-token features in one LM pass per batch of documents), and
acts deterministically (mask where its probability exceeds 0.5), so the masked context it sees
follows its own choices. Every document of a call is one row of a single vector env, so the policy
runs once per step for all of them. The mask probabilities of that pass rank the tokens; the
compressor drops the ``round(rate * n)`` highest-ranked ones and corrects that count with
:meth:`~tokenmask.evaluate.MaskingCompressor.fit_rate` until the emitted text, re-tokenized by the
judge, is within :data:`~tokenmask.evaluate.compressor.RATE_TOLERANCE` of the rate.

Speed: with the ``information`` reward, training prices every masked token under the masked prefix
(one more LM pass per window, sequential over the windows) and the observation's
``mean_masked_bits`` reads that price. By default (``exact_bits=False``) the compressor plays the
episode with the ``simple`` reward instead: ``mean_masked_bits`` is then the masked tokens' surprisal
from the features pass, so a context costs one LM pass and no per-window pass. ``exact_bits=True``
reproduces the training observations exactly, at about twice to three times the cost on a CPU.
An agent trained with ``token_features="position"`` observes no LM output at all: its compressor runs
no LM pass (the policy alone, a few ms per context on a CPU).
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
from tokenmask.evaluate.compressor import (
    MaskingCompressor,
    TokenIds,
    check_rate,
    drop_highest,
    tokens_to_drop,
)
from tokenmask.policies import TokenMaskPolicy
from tokenmask.reconstructors import MaskMode, Reconstructor
from tokenmask.train.config import TrainConfig
from tokenmask.train.export import check_policy_folder, is_policy_folder, load_policy
from tokenmask.train.loading import algorithm_class, load_run_config, load_run_reconstructor
from tokenmask.train.replay import documents_env

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


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
    :param batch_documents: most documents stepped together in one vector env (``None``: every
        document of a call); lower it only to bound memory on very large calls.
    :param exact_bits: observe ``mean_masked_bits`` as training with the ``information`` reward
        does (bits under the masked prefix: one more LM pass per window); default ``False``: the
        masked tokens' surprisal from the features pass (one LM pass per context, see the module doc).
    """

    default_name = "agent"

    def __init__(
        self,
        policy: TokenMaskPolicy,
        reconstructor: Reconstructor,
        env_options: TokenMaskConfig | dict[str, Any],
        tokenizer: PreTrainedTokenizerBase | None = None,
        name: str | None = None,
        batch_documents: int | None = None,
        exact_bits: bool = False,
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
        if batch_documents is not None and batch_documents < 1:
            raise ValueError(f"batch_documents must be >= 1 or None, got {batch_documents}.")
        self.policy = policy
        self._reconstructor = reconstructor
        #: the run's TokenMask-v0 options, one entry per key of ``TokenMaskConfig``
        self.env_options: dict[str, Any] = asdict(env_options)
        self.batch_documents = batch_documents
        self.exact_bits = exact_bits

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        run_dir: str,
        judge: Reconstructor | None = None,
        device: str = "auto",
        name: str | None = None,
        exact_bits: bool = False,
    ) -> AgentCompressor:
        """The agent of a run folder or of an exported (policy-only) agent folder, with its reconstructor.

        A run folder gives its newest checkpoint's agent and its fine-tuned reconstructor (joint
        training), else the configured one. An exported folder (``tokenmask export``: ``policy.pt``,
        ``config.json``, ``agent.json``) gives ``TokenMaskPolicy.load`` of ``policy.pt`` and its
        ``reconstructor/`` when it carries one, else the base model its config names.

        :param run_dir: a folder written by ``tokenmask train`` or ``tokenmask export``.
        :param judge: the judge whose tokenizer measures the rate (default: the reconstructor's).
        :param device: device of the policy and the reconstructor.
        :param name: name in reports (default ``agent:RUN_DIR``).
        :param exact_bits: see :class:`AgentCompressor`.
        :raises RunFolderError: if the folder holds no config or no agent, or they are damaged.
        """
        if not run_dir:
            raise ValueError("The agent method needs a run folder. Fix: name it as agent:RUN_DIR.")
        exported = is_policy_folder(run_dir)
        if exported:
            check_policy_folder(run_dir)  # a damaged policy.pt is named before the reconstructor loads
        config, run = load_run_config(run_dir)
        reconstructor = load_run_reconstructor(config, run, device=device, trainable=False)
        if exported:
            policy: Any = load_policy(run_dir, device=reconstructor.device)
        else:
            policy = (
                algorithm_class(config.algo).load(run.require_agent(), device=reconstructor.device).policy
            )
        if not isinstance(policy, TokenMaskPolicy):
            raise ValueError(f"{run_dir} holds a {type(policy).__name__}, not a TokenMaskPolicy.")
        return cls(
            policy,
            reconstructor,
            config.env,
            tokenizer=judge.tokenizer if judge is not None else None,
            name=name or f"agent:{run_dir}",
            exact_bits=exact_bits,
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
        """Per context, ``True`` = kept: the highest-scoring tokens dropped, fitted to the emitted rate.

        ``round(rate * n)`` tokens are dropped first; :meth:`fit_rate` then drops or restores tokens
        in the order of the agent's scores until the emitted text is within the rate tolerance.
        """
        check_rate(rate)
        scores = self.mask_scores(contexts, rate, seed=seed)
        return [
            self.fit_rate(ids, drop_highest(s, tokens_to_drop(len(ids), rate)), rate, priority=s)
            for ids, s in zip(contexts, scores)
        ]

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
        step = self.batch_documents or max(1, len(nonempty))
        for start in range(0, len(nonempty), step):
            chunk = nonempty[start : start + step]
            for i, s in zip(chunk, self._score_batch([list(contexts[i]) for i in chunk], rate, seed)):
                scores[i] = s
        return scores

    def _score_batch(self, documents: list[list[int]], rate: float, seed: int) -> list[np.ndarray]:
        # rows that end early restart on their own document: its cached features, no second LM pass;
        # without exact_bits no reward needs the masked prefix priced, so the env runs no LM pass per window
        overrides: dict[str, Any] = {"cache_features": True}
        if not self.exact_bits or self.env_options.get("token_features") == "position":
            overrides["reward_type"] = "simple"
        env = documents_env(documents, self._reconstructor, self.env_options, rate, **overrides)
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


def _without_mask(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    vocab = dict(tokenizer.get_vocab())
    if tokenizer.mask_token_id is not None:
        vocab = {k: v for k, v in vocab.items() if v != tokenizer.mask_token_id}
    return vocab
