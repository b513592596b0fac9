"""Behaviour cloning of a :class:`~tokenmask.policies.TokenMaskPolicy` on ``tokenmask label`` masks (the warm start).

Each label (a document's context, a rate and a judge-searched keep mask) is replayed through
TokenMask-v0 with the run's env options (:func:`~tokenmask.train.replay.documents_env`: the label
contexts as documents, no shuffling, ``target_rate`` = the label's rate), the label's own decisions
taken as the actions (teacher forcing). So every observation — the rate reached so far, the
masked context shown around the window — is the one the labelled mask produces, and the policy
learns what to do in the states its target behaviour visits. The policy then minimises the
negative log-likelihood of the label's actions under its action distribution, with Adam.

Span mapping: a label decides spans of ``span`` tokens (its ``span`` column); the env decides runs
of its own ``span`` tokens per action entry. The label's span must be a multiple of the env's; an
entry is masked when more than half of its tokens are (so with equal spans the entries are the
label's ``span_keep``; a span cut to hit the rate exactly counts by its majority).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tokenmask.envs.env_config import TokenMaskConfig
from tokenmask.policies import TokenMaskPolicy
from tokenmask.train.replay import documents_env

if TYPE_CHECKING:
    from datasets import Dataset

    from tokenmask.reconstructors import Reconstructor

LabelSource = Any
"""A ``tokenmask label`` output folder (or its ``labels`` subfolder), or the labels ``datasets.Dataset``."""


@dataclass
class Demonstrations:
    """Teacher-forced (observation, action) pairs: one per label and env step.

    :param observations: each observation key with a leading samples axis.
    :param actions: ``(samples, window // span)`` float32, 1 = mask.
    """

    observations: dict[str, np.ndarray]
    actions: np.ndarray

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    def subset(self, index: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Observations and actions of the samples ``index``."""
        return {k: v[index] for k, v in self.observations.items()}, self.actions[index]


def label_actions(keep: np.ndarray, label_span: int, env_span: int, window: int) -> np.ndarray:
    """The env's actions of one label, ``(steps, window // env_span)`` bool, 1 = mask.

    Entry ``j`` of step ``t`` covers tokens ``t * window + j * env_span`` onwards (``env_span``
    of them): masked when more than half of those in the context are masked; entries past the
    context's end are 0 (the env keeps them anyway).

    :param keep: the label's keep mask, one bool per context token.
    :param label_span: tokens per span of the label.
    :param env_span: the env's ``span`` (must divide ``label_span``).
    :param window: the env's ``window``.
    :raises ValueError: when ``label_span`` is not a multiple of ``env_span``.
    """
    if label_span % env_span:
        raise ValueError(
            f"The labels decide spans of {label_span} tokens, the env decides runs of span={env_span}: "
            f"{label_span} is not a multiple of {env_span}. Fix: label with --span {env_span} (or a multiple), "
            f"or train with env.span dividing {label_span}."
        )
    keep = np.asarray(keep, dtype=bool)
    steps = math.ceil(len(keep) / window)
    masked = np.zeros(steps * window, dtype=np.float64)
    valid = np.zeros(steps * window, dtype=np.float64)
    masked[: len(keep)] = ~keep
    valid[: len(keep)] = 1.0
    runs = (steps * window) // env_span
    masked_count = masked.reshape(runs, env_span).sum(axis=1)
    valid_count = valid.reshape(runs, env_span).sum(axis=1)
    entries = (valid_count > 0) & (masked_count > valid_count / 2)
    return entries.reshape(steps, window // env_span)


def _read_labels(labels: LabelSource) -> Dataset:
    if isinstance(labels, (str, Path)):
        from tokenmask.train.labels import load_labels

        return load_labels(labels)
    missing = [
        c for c in ("context_ids", "keep", "rate", "span") if c not in getattr(labels, "column_names", [])
    ]
    if missing:
        raise ValueError(
            f"The labels have no column(s) {missing}. Fix: pass a `tokenmask label` output folder or its labels dataset."
        )
    return labels


def _env_parts(
    model: Any, env_options: TokenMaskConfig | dict[str, Any] | None, reconstructor: Reconstructor | None
) -> tuple[dict[str, Any], Reconstructor]:
    """The env options and reconstructor to replay with: given, or those of the model's training env."""
    if env_options is None or reconstructor is None:
        env = model.get_env() if hasattr(model, "get_env") else None
        if env is None:
            raise ValueError(
                "clone_policy needs the run's env options and reconstructor. Fix: pass env_options= and reconstructor=, "
                "or a model built on its TokenMask-v0 training env."
            )
        if env_options is None:
            env_options = env.get_attr("config", [0])[0]
        if reconstructor is None:
            reconstructor = env.get_attr("reconstructor", [0])[0]
    assert env_options is not None and reconstructor is not None
    options = asdict(env_options) if isinstance(env_options, TokenMaskConfig) else dict(env_options)
    return options, reconstructor


def collect_demonstrations(
    labels: LabelSource,
    reconstructor: Reconstructor,
    env_options: TokenMaskConfig | dict[str, Any],
    policy: TokenMaskPolicy | None = None,
    batch_documents: int = 256,
    seed: int = 0,
) -> Demonstrations:
    """Replay every label through TokenMask-v0 with its own actions and record (observation, action) pairs.

    :param labels: see :data:`LabelSource`.
    :param reconstructor: the run's reconstructor (computes the observations' token features); its
        vocabulary must be the judge's that made the labels.
    :param env_options: the run's TokenMask-v0 options (``config.env`` or a dict of its keys).
    :param policy: when given, its observation and action spaces are checked against the env's.
    :param batch_documents: labels replayed together (one batched reconstructor pass per step).
    :param seed: seed of the env resets (the replay itself is deterministic).
    """
    dataset = _read_labels(labels)
    options = asdict(env_options) if isinstance(env_options, TokenMaskConfig) else dict(env_options)
    if batch_documents < 1:
        raise ValueError(f"batch_documents must be >= 1, got {batch_documents}.")
    if len(dataset) == 0:
        raise ValueError(
            "The labels dataset is empty. Fix: run `tokenmask label` on a corpus with long-enough documents."
        )
    contexts: list[list[int]] = [list(c) for c in dataset["context_ids"]]
    keeps = [np.asarray(k, dtype=bool) for k in dataset["keep"]]
    rates = [float(r) for r in dataset["rate"]]
    spans = [int(s) for s in dataset["span"]]
    vocab = len(reconstructor.tokenizer)
    top = max(max(c) for c in contexts if c)
    if top >= vocab:
        raise ValueError(
            f"The labels hold token id {top}, outside the reconstructor's vocabulary ({vocab}). "
            "Fix: label with a judge of the reconstructor's tokenizer family."
        )
    observations: dict[str, list[np.ndarray]] = {}
    actions: list[np.ndarray] = []
    for rate in sorted(set(rates)):
        rows = [i for i, r in enumerate(rates) if r == rate]
        for start in range(0, len(rows), batch_documents):
            chunk = rows[start : start + batch_documents]
            env = documents_env([contexts[i] for i in chunk], reconstructor, options, rate)
            config = env.config
            if policy is not None:
                _check_spaces(policy, env)
            plans = [label_actions(keeps[i], spans[i], config.span, config.window) for i in chunk]
            finished = np.zeros(len(chunk), dtype=bool)
            obs, _ = env.reset(seed=seed)
            step = 0
            while not finished.all():
                active = np.flatnonzero(~finished)
                step_actions = np.zeros((len(chunk), config.action_size), dtype=bool)
                for row in active:
                    if step < len(plans[row]):
                        step_actions[row] = plans[row][step]
                for key, value in obs.items():
                    observations.setdefault(key, []).append(np.asarray(value)[active].copy())
                actions.append(step_actions[active].astype(np.float32))
                obs, _, terminated, _, _ = env.step(step_actions)
                finished |= terminated
                step += 1
            env.close()
    return Demonstrations(
        observations={k: np.concatenate(v, axis=0) for k, v in observations.items()},
        actions=np.concatenate(actions, axis=0),
    )


def _check_spaces(policy: TokenMaskPolicy, env: Any) -> None:
    expected = policy.observation_space["token_ids"].shape  # type: ignore[index]
    got = env.single_observation_space["token_ids"].shape
    entries = int(policy.action_space.n)  # type: ignore[attr-defined]
    if got != expected or env.config.action_size != entries:
        raise ValueError(
            f"The env options give windows of {got[0]} tokens and {env.config.action_size} action entries; the policy "
            f"was built for {expected[0]} tokens and {entries} entries. Fix: pass the env options the policy was trained with."
        )


def _policy_of(model: Any) -> TokenMaskPolicy:
    policy = model.policy if hasattr(model, "policy") else model
    if not isinstance(policy, TokenMaskPolicy):
        raise ValueError(
            f"Behaviour cloning needs a TokenMaskPolicy (or an SB3 model of one), got {type(policy).__name__}."
        )
    return policy


def _label_log_probs(
    policy: TokenMaskPolicy, observations: dict[str, np.ndarray], actions: np.ndarray
) -> torch.Tensor:
    """Per sample, ``log pi(label actions | observation)`` in nats (summed over the action entries)."""
    tensor_obs, _ = policy.obs_to_tensor(observations)
    target = torch.as_tensor(actions, dtype=torch.float32, device=policy.device)
    return policy.get_distribution(tensor_obs).log_prob(target)  # type: ignore[arg-type]


def demonstration_nll(model: Any, demonstrations: Demonstrations, batch_size: int = 1024) -> float:
    """Mean negative log-likelihood (nats per window decision) of the demonstrations' actions under the policy."""
    policy = _policy_of(model)
    was_training = policy.training
    policy.set_training_mode(False)
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(demonstrations), batch_size):
            index = np.arange(start, min(len(demonstrations), start + batch_size))
            total -= float(_label_log_probs(policy, *demonstrations.subset(index)).sum())
    policy.set_training_mode(was_training)
    return total / max(1, len(demonstrations))


def clone_policy(
    model: Any,
    labels: LabelSource | Demonstrations,
    epochs: int = 5,
    batch_size: int = 256,
    learning_rate: float = 3e-4,
    *,
    env_options: TokenMaskConfig | dict[str, Any] | None = None,
    reconstructor: Reconstructor | None = None,
    max_grad_norm: float | None = 1.0,
    seed: int = 0,
    batch_documents: int = 256,
    progress: bool = False,
) -> list[float]:
    """Behaviour cloning: fit the policy's action distribution to the labels' teacher-forced actions.

    Minimises the mean NLL ``-log pi(a_label | o)`` (nats per window decision) with Adam over shuffled
    minibatches, on the policy's device. The critic is left as it is (PPO fits it next).

    :param model: an SB3 PPO/A2C model of a :class:`TokenMaskPolicy` (or the policy itself).
    :param labels: a ``tokenmask label`` output (see :data:`LabelSource`), or demonstrations already
        collected with :func:`collect_demonstrations`.
    :param epochs: passes over the demonstrations.
    :param batch_size: samples (window decisions) per minibatch.
    :param learning_rate: Adam's learning rate.
    :param env_options: the run's TokenMask-v0 options; default: those of the model's env.
    :param reconstructor: the run's reconstructor; default: the model's env's.
    :param max_grad_norm: clip the gradient norm to this (``None``: no clipping).
    :param seed: seed of the minibatch order.
    :param batch_documents: labels replayed together while collecting.
    :param progress: print the loss after each epoch.
    :return: the mean training loss of each epoch (nats per window decision).
    """
    if epochs < 0 or batch_size < 1 or not learning_rate > 0:
        raise ValueError(
            f"Behaviour cloning needs epochs >= 0, batch_size >= 1 and learning_rate > 0, got {epochs}, {batch_size}, "
            f"{learning_rate}. Fix: e.g. epochs=5, batch_size=256, learning_rate=3e-4."
        )
    policy = _policy_of(model)
    if isinstance(labels, Demonstrations):
        demonstrations = labels
    else:
        options, recon = _env_parts(model, env_options, reconstructor)
        demonstrations = collect_demonstrations(labels, recon, options, policy, batch_documents, seed)
    optimizer = torch.optim.Adam(policy.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    history: list[float] = []
    policy.set_training_mode(True)
    count = len(demonstrations)
    for epoch in range(epochs):
        order = torch.randperm(count, generator=generator).numpy()
        total = 0.0
        for start in range(0, count, batch_size):
            index = order[start : start + batch_size]
            loss = -_label_log_probs(policy, *demonstrations.subset(index)).mean()
            optimizer.zero_grad()
            loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(policy.parameters(), max_grad_norm)
            optimizer.step()
            total += float(loss.detach()) * len(index)
        history.append(total / max(1, count))
        if progress:
            print(
                f"behaviour cloning: epoch {epoch + 1}/{epochs}, NLL {history[-1]:.4f} nats per window ({count} samples)"
            )
    policy.set_training_mode(False)
    return history


__all__ = ["Demonstrations", "clone_policy", "collect_demonstrations", "demonstration_nll", "label_actions"]
