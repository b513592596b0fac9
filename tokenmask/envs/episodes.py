"""The batched episode engine behind TokenMask-v0: N episodes stepped together, numpy-vectorised.

:class:`TokenMaskEnv` is this engine with one row, :class:`TokenMaskVectorEnv` with ``num_envs``
rows, so both compute rewards the same way. Per step the engine does a few numpy operations on
``(rows, window)`` arrays and, for rewards that need it, ONE batched reconstructor forward pass
(:class:`~tokenmask.envs.scoring.IncrementalScorer`) over one window per row.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from gymnasium import spaces

from tokenmask.envs.corpus import DocumentCorpus
from tokenmask.envs.env_config import TokenMaskConfig, _check_rate
from tokenmask.envs.judge_bonus import JudgeBonus
from tokenmask.envs.rewards import MaskingReward
from tokenmask.envs.scoring import TOKEN_FEATURES, IncrementalScorer, weights_fingerprint
from tokenmask.reconstructors import Reconstructor

GLOBAL_FEATURES: tuple[str, ...] = (
    "progress",
    "target_rate",
    "rate_so_far",
    "required_rate",
    "window_fill",
    "mean_masked_bits",
)
"""Names of the ``global_features`` entries, in order (see :meth:`EpisodeBatch.observe`)."""

RECORD_KEY = "episode_record"
"""Info key of the finished episode's :class:`EpisodeRecord` (last step only)."""
RECOVERABILITY_KEY = "recoverability"
"""Info key of the judge's recoverability of the document (last step only, with the judge bonus on)."""
RETENTION_KEY = "retention"
"""Info key of the judge's retention of the document (last step only, with the judge bonus on and continuations)."""
TERMINAL_INFOS: tuple[str, ...] = (RECOVERABILITY_KEY, RETENTION_KEY, RECORD_KEY)
"""Step-info keys reported only at an episode's last step: the judge bonus's parts (when on) and the record."""

RESET_OPTIONS: tuple[str, ...] = ("document", "target_rate")
"""Keys ``reset(options=...)`` accepts: a document index to play, a target rate for this episode."""


@dataclass
class EpisodeRecord:
    """A finished episode: what the agent masked in which document (e.g. for joint fine-tuning).

    :param document: index of the document in the corpus.
    :param source: where the document came from.
    :param ids: its token ids.
    :param mask: ``True`` where the agent masked.
    :param target_rate: the rate asked for.
    :param rate: the rate reached (masked tokens / tokens).
    :param bits: total cost in bits of the masked tokens (as priced by the reward).
    :param episode_return: sum of the episode's rewards.
    :param recoverability: the judge's recoverability of the document from the kept tokens (the
        bonus's part per unit weight); ``nan`` when the env has no judge bonus.
    :param retention: the judge's retention of the document's continuation from the kept tokens;
        ``nan`` without a judge bonus or without continuations (``continuation_tokens = 0``).
    """

    document: int
    source: str
    ids: np.ndarray
    mask: np.ndarray
    target_rate: float
    rate: float
    bits: float
    episode_return: float
    recoverability: float = math.nan
    retention: float = math.nan

    def __eq__(self, other: object) -> bool:
        """Field by field: arrays element-wise, ``nan`` equal to ``nan`` (a record equals its replay)."""
        if not isinstance(other, EpisodeRecord):
            return NotImplemented
        return all(_same_value(getattr(self, f.name), getattr(other, f.name)) for f in fields(EpisodeRecord))

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value


def _same_value(first: Any, second: Any) -> bool:
    if isinstance(first, np.ndarray) or isinstance(second, np.ndarray):
        return bool(np.array_equal(first, second))
    if isinstance(first, float) and isinstance(second, float) and math.isnan(first) and math.isnan(second):
        return True
    return bool(first == second)


def check_actions(actions: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Validate a MultiBinary action batch and return it as a bool array.

    :raises ValueError: wrong shape, or entries other than 0/1.
    """
    array = np.asarray(actions)
    if array.shape != shape:
        raise ValueError(
            f"The action has shape {array.shape}, expected {shape}: one 0/1 per token of the window, or per "
            "span of tokens with span > 1 (1 = mask). Fix: sample it from env.action_space."
        )
    if array.dtype != np.bool_:
        if not np.all((array == 0) | (array == 1)):
            raise ValueError(
                "Action entries must be 0 or 1 (1 = mask the token). Fix: sample from env.action_space."
            )
        array = array != 0
    return array


def expand_actions(actions: np.ndarray, span: int) -> np.ndarray:
    """Per-token decisions ``(..., window)`` from per-span ones ``(..., window // span)`` (each entry repeated ``span`` times)."""
    return actions if span == 1 else np.repeat(actions, span, axis=-1)


class EpisodeBatch:
    """State of ``num_rows`` episodes and the vectorised reset / step / observation logic.

    :param config: the environment's options.
    :param corpus: the documents episodes are drawn from.
    :param reconstructor: computes the features and (for the ``information`` reward) the bits.
    :param reward: prices each step.
    :param num_rows: episodes stepped together.
    :param keep_episodes: finished episodes kept in :attr:`completed` (oldest dropped first).
    :param bonus: the judge bonus (see :mod:`tokenmask.envs.judge_bonus`), paid as
        ``config.judge_credit`` says; ``None`` = no bonus.
    """

    def __init__(
        self,
        config: TokenMaskConfig,
        corpus: DocumentCorpus,
        reconstructor: Reconstructor,
        reward: MaskingReward,
        num_rows: int,
        keep_episodes: int = 1024,
        bonus: JudgeBonus | None = None,
    ) -> None:
        if num_rows < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_rows}.")
        self.config = config
        self.corpus = corpus
        self.reconstructor = reconstructor
        self.reward = reward
        self.bonus = bonus
        self.num_rows = num_rows
        self.window = window = config.window
        self.context_size = config.context_size
        self.max_steps = math.ceil(corpus.max_length / window)
        self.length = self.max_steps * window
        self.vocab_size = len(reconstructor.tokenizer)
        self.pad_id = self.vocab_size
        self.mask_id = reconstructor.mask_token_id if reconstructor.mask_token_id is not None else self.pad_id
        c, n = self.context_size, num_rows
        # one extra window of padding serves the observation after the last step
        self.ids = np.full((n, self.length + window), self.pad_id, dtype=np.int64)
        self.valid = np.zeros((n, self.length + window), dtype=bool)
        self.masked = np.zeros((n, self.length + window), dtype=bool)
        self.features = np.zeros((n, self.length + window, len(TOKEN_FEATURES)), dtype=np.float32)
        self.shown = np.full((n, c + self.length + window + c), self.pad_id, dtype=np.int64)
        self.doc_index = np.zeros(n, dtype=np.int64)
        self.doc_tokens = np.ones(n, dtype=np.int64)
        self.steps = np.zeros(n, dtype=np.int64)
        self.num_steps = np.ones(n, dtype=np.int64)
        self.target_rate = np.zeros(n, dtype=np.float64)
        self.masked_count = np.zeros(n, dtype=np.int64)
        self.bits = np.zeros(n, dtype=np.float64)
        self.returns = np.zeros(n, dtype=np.float64)
        # dense judge credit: rec / ret of the mask decided so far, undecided tokens kept (nan = keep-all)
        self.judge_rec = np.full(n, np.nan)
        self.judge_ret = np.full(n, np.nan)
        self.active = np.zeros(n, dtype=bool)
        self.rngs: list[np.random.Generator | None] = [None] * n
        self._orders: list[np.ndarray | None] = [None] * n
        self._cursor = np.zeros(n, dtype=np.int64)
        # for checkpoints: the generator's state before each row's current permutation was drawn,
        # and each row's draw state at the start of its current episode (see draw_state)
        self._order_rng: list[Mapping[str, Any] | None] = [None] * n
        self._episode_draws: list[dict[str, Any] | None] = [None] * n
        self.completed: deque[EpisodeRecord] = deque(maxlen=keep_episodes)
        self.scorer = (
            IncrementalScorer(reconstructor, n, self.length, config.mask_mode)
            if reward.needs_masked_bits
            else None
        )
        self._fingerprint: tuple[int, int, int] | None = None

    # ------------------------------------------------------------------ spaces
    def observation_space(self) -> spaces.Dict:
        """The observation space of one episode (see :class:`~tokenmask.envs.TokenMaskEnv`)."""
        w, c = self.window, self.context_size
        return spaces.Dict(
            {
                "token_ids": spaces.Box(0, self.vocab_size, (w,), np.int64),
                "context_ids": spaces.Box(0, self.vocab_size, (2 * c,), np.int64),
                "token_features": spaces.Box(-np.inf, np.inf, (w, len(TOKEN_FEATURES)), np.float32),
                "valid": spaces.MultiBinary(w),
                "global_features": spaces.Box(-np.inf, np.inf, (len(GLOBAL_FEATURES),), np.float32),
            }
        )

    def action_space(self) -> spaces.MultiBinary:
        """The action space of one episode: ``MultiBinary(window // span)``, 1 = mask (a run of ``span`` tokens)."""
        return spaces.MultiBinary(self.config.action_size)

    # ------------------------------------------------------------------ documents
    def seed_row(self, row: int, rng: np.random.Generator) -> None:
        """Give row ``row`` its random generator; its document order restarts from it."""
        self.rngs[row] = rng
        self._orders[row] = None
        self._order_rng[row] = None
        self._cursor[row] = 0

    def _rng(self, row: int) -> np.random.Generator:
        rng = self.rngs[row]
        if rng is None:
            rng = np.random.default_rng()
            self.seed_row(row, rng)
        return rng

    def _next_document(self, row: int) -> int:
        """Shuffled: a seeded permutation per pass over the corpus. Else rows stride through the corpus."""
        count = len(self.corpus)
        if not self.config.shuffle:
            doc = (row + int(self._cursor[row]) * self.num_rows) % count
            self._cursor[row] += 1
            return doc
        order = self._orders[row]
        if order is None or self._cursor[row] >= count:
            rng = self._rng(row)
            self._order_rng[row] = rng.bit_generator.state
            order = self._orders[row] = rng.permutation(count)
            self._cursor[row] = 0
        doc = int(order[self._cursor[row]])
        self._cursor[row] += 1
        return doc

    def _row_draw_state(self, row: int) -> dict[str, Any]:
        rng = self.rngs[row]
        return {
            "rng": None if rng is None else rng.bit_generator.state,
            "order_rng": self._order_rng[row],
            "cursor": int(self._cursor[row]),
        }

    def draw_state(self) -> list[dict[str, Any]]:
        """Per row, what draws its episodes (documents and target rates), as JSON-able values.

        Taken at the start of each row's current episode, so that :meth:`restore_draw_state`
        followed by a reset of every row plays the episodes in flight again from their first
        window, then the very episodes the rows would have played next. (A row whose current
        episode was forced by the ``document`` reset option draws a document there instead.)
        """
        return [
            dict(saved) if saved is not None else self._row_draw_state(row)
            for row, saved in enumerate(self._episode_draws)
        ]

    def restore_draw_state(self, state: Sequence[dict[str, Any]]) -> None:
        """Restore what :meth:`draw_state` returned (e.g. from a checkpoint), row by row.

        :raises ValueError: if ``state`` does not hold one entry per row.
        """
        if len(state) != self.num_rows:
            raise ValueError(
                f"The draw state holds {len(state)} rows, this env has {self.num_rows}. Fix: restore it "
                "into an env with as many sub-envs as the one it was taken from."
            )
        for row, saved in enumerate(state):
            if saved.get("rng") is None:
                continue
            rng = self.rngs[row]
            if rng is None:
                rng = self.rngs[row] = np.random.default_rng()
            order = None
            if saved.get("order_rng") is not None:
                rng.bit_generator.state = saved["order_rng"]
                order = rng.permutation(len(self.corpus))
            rng.bit_generator.state = saved["rng"]
            self._orders[row] = order
            self._order_rng[row] = saved.get("order_rng")
            self._cursor[row] = int(saved["cursor"])
            self._episode_draws[row] = dict(saved)

    def _draw_rate(self, row: int) -> float:
        bounds = self.config.target_rate_range
        if bounds is None:
            return float(self.config.target_rate)
        return float(self._rng(row).uniform(bounds[0], bounds[1]))

    # ------------------------------------------------------------------ reset
    def reset_rows(self, rows: np.ndarray, options: Sequence[dict[str, Any] | None]) -> dict[str, np.ndarray]:
        """Start a new episode in each of ``rows``; return their reset infos as arrays.

        :param options: per row, ``None`` or a dict with optional ``document`` (corpus index) and
            ``target_rate`` (overrides the drawn rate for this episode).
        :raises ValueError: unknown option keys or values out of range.
        """
        rows = np.asarray(rows, dtype=np.int64)
        self._sync_weights()
        docs: list[int] = []
        for row, opts in zip(rows, options):
            self._episode_draws[row] = self._row_draw_state(int(row))
            opts = opts or {}
            unknown = sorted(set(opts) - set(RESET_OPTIONS))
            if unknown:
                raise ValueError(f"Unknown reset option(s) {unknown}. Fix: use only {list(RESET_OPTIONS)}.")
            if "document" in opts and opts["document"] is not None:
                doc = int(opts["document"])
                if not 0 <= doc < len(self.corpus):
                    raise ValueError(
                        f"reset option document={doc} is outside the corpus (0 .. {len(self.corpus) - 1})."
                    )
            else:
                doc = self._next_document(int(row))
            rate = opts.get("target_rate")
            if rate is None:
                rate = self._draw_rate(int(row))
            _check_rate("reset option target_rate", rate)
            docs.append(doc)
            self.target_rate[row] = float(rate)
        feats = self.corpus.features(
            docs, self.reconstructor, cache=self.config.cache_features, kind=self.config.token_features
        )
        c = self.context_size
        for row, doc, f in zip(rows, docs, feats):
            ids = self.corpus.documents[doc]
            n = len(ids)
            self.ids[row] = self.pad_id
            self.ids[row, :n] = ids
            self.valid[row] = False
            self.valid[row, :n] = True
            self.masked[row] = False
            self.features[row] = 0.0
            self.features[row, :n] = f
            self.shown[row] = self.pad_id
            self.shown[row, c : c + n] = ids
            self.doc_index[row] = doc
            self.doc_tokens[row] = n
            self.num_steps[row] = math.ceil(n / self.window)
        self.steps[rows] = 0
        self.masked_count[rows] = 0
        self.bits[rows] = 0.0
        self.returns[rows] = 0.0
        self.judge_rec[rows] = np.nan
        self.judge_ret[rows] = np.nan
        self.active[rows] = True
        if self.scorer is not None:
            self.scorer.start(rows)
        return {
            "document": self.doc_index[rows].copy(),
            "doc_tokens": self.doc_tokens[rows].copy(),
            "target_rate": self.target_rate[rows].copy(),
        }

    def _sync_weights(self) -> None:
        """After the reconstructor's weights changed (fine-tuning), refresh features and KV caches.

        Running episodes get the new weights' features and a cache re-read from their masked
        prefix, so every later step is priced by the current reconstructor.
        """
        fingerprint = weights_fingerprint(self.reconstructor.model)
        if self._fingerprint is not None and fingerprint != self._fingerprint and self.active.any():
            rows = np.nonzero(self.active)[0]
            feats = self.corpus.features(
                self.doc_index[rows].tolist(),
                self.reconstructor,
                cache=self.config.cache_features,
                kind=self.config.token_features,
            )
            for row, f in zip(rows, feats):
                self.features[row, : len(f)] = f
            if self.scorer is not None:
                decided = np.where(self.active, self.steps * self.window, 0)
                self.scorer.rebuild(self.ids, self.valid, self.masked, decided)
        self._fingerprint = fingerprint

    # ------------------------------------------------------------------ step
    def _window_index(self, rows: np.ndarray) -> np.ndarray:
        return (self.steps[rows] * self.window)[:, None] + np.arange(self.window)[None, :]

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Decide the current window of every row.

        :param actions: ``(rows, window // span)`` bool, True = mask (see :func:`check_actions`);
            entry ``j`` decides tokens ``j * span`` to ``(j + 1) * span - 1`` of the window.
        :return: ``(rewards, terminated, infos)``; ``infos`` maps each key to a ``(rows,)`` array
            (the :data:`TERMINAL_INFOS` keys only when an episode ended; ``episode_record`` holds an
            :class:`EpisodeRecord` in the ended rows, ``None`` elsewhere).
        """
        actions = expand_actions(actions, self.config.span)
        if not self.active.all():
            raise RuntimeError(
                "Every episode must be reset before it is stepped, and reset again once it ended."
            )
        self._sync_weights()
        rows = np.arange(self.num_rows)
        index = self._window_index(rows)
        r = rows[:, None]
        tokens = self.ids[r, index]
        valid = self.valid[r, index]
        masked = actions & valid
        self.masked[r, index] = masked
        shown = index + self.context_size
        self.shown[r, shown] = np.where(masked, self.mask_id, self.shown[r, shown])
        masked_bits = self.scorer.score(tokens, valid, masked) if self.scorer is not None else None
        cost = np.where(masked, self.reward.token_cost(masked_bits, self.features[r, index, 0]), 0.0)
        rewards = self.reward.step_reward(masked, cost, self.doc_tokens)
        step_bits = cost.sum(axis=1)
        self.masked_count += masked.sum(axis=1)
        self.bits += step_bits
        self.steps += 1
        terminated = self.steps >= self.num_steps
        final_rate = self.masked_count / self.doc_tokens
        rewards = rewards + np.where(terminated, self.reward.final_reward(final_rate, self.target_rate), 0.0)
        recoverability = np.full(self.num_rows, np.nan)
        retention = np.full(self.num_rows, np.nan)
        if self.bonus is not None:
            judge_reward, recoverability, retention = self._judge_credit(
                self.bonus, masked.any(axis=1), terminated
            )
            rewards = rewards + judge_reward
        report_bonus = self.bonus is not None and terminated.any()
        self.returns += rewards
        decided = np.minimum(self.steps * self.window, self.doc_tokens)
        rate = self.masked_count / decided
        infos = {
            "rate": rate,
            "target_rate": self.target_rate.copy(),
            "rate_error": np.abs(rate - self.target_rate),
            "masked_tokens": self.masked_count.copy(),
            "decided_tokens": decided,
            "doc_tokens": self.doc_tokens.copy(),
            "step_bits": step_bits,
            "bits": self.bits.copy(),
            "document": self.doc_index.copy(),
        }
        if report_bonus:
            infos[RECOVERABILITY_KEY] = recoverability
            if self.config.continuation_tokens > 0:
                infos[RETENTION_KEY] = retention
        if terminated.any():
            records = np.full(self.num_rows, None, dtype=object)
            for row in np.nonzero(terminated)[0]:
                n = int(self.doc_tokens[row])
                doc = int(self.doc_index[row])
                records[row] = EpisodeRecord(
                    document=doc,
                    source=self.corpus.sources[doc],
                    ids=self.corpus.documents[doc],
                    mask=self.masked[row, :n].copy(),
                    target_rate=float(self.target_rate[row]),
                    rate=float(final_rate[row]),
                    bits=float(self.bits[row]),
                    episode_return=float(self.returns[row]),
                    recoverability=float(recoverability[row]),
                    retention=float(retention[row]),
                )
                self.completed.append(records[row])
            infos[RECORD_KEY] = records
        self.active[terminated] = False
        return rewards, terminated, infos

    def _judge_credit(
        self, bonus: JudgeBonus, changed: np.ndarray, terminated: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The judge bonus's reward of this step, and ``(rec, ret)`` of the rows that ended.

        ``terminal``: the ended rows earn the bonus of their final mask. ``dense``: a row earns
        ``Phi(after) - Phi(before)``, ``Phi`` = the bonus of its mask so far with the undecided
        tokens kept; only rows that masked something this step change ``Phi`` and are judged
        (all in one batched pass with the ended rows' unweighted parts and new references).

        :param changed: ``(rows,)`` True where this step masked a token.
        :param terminated: ``(rows,)`` True where the episode ended.
        :return: ``(reward, rec, ret)``, each ``(rows,)``; ``rec`` / ``ret`` are ``nan`` except at ended rows.
        """
        n = self.num_rows
        has_ret = self.config.continuation_tokens > 0
        dense = self.config.judge_credit == "dense"
        if dense:  # a weighted part follows every change; an unweighted one is measured once, for the info
            want_rec = changed if bonus.recoverability_weight > 0 else terminated
            want_ret = (changed if bonus.retention_weight > 0 else terminated) & has_ret
            judged = changed | terminated
        else:
            want_rec = terminated
            want_ret = terminated & has_ret
            judged = terminated
        reward = np.zeros(n, dtype=np.float64)
        recoverability = np.full(n, np.nan)
        retention = np.full(n, np.nan)
        rows = np.nonzero(judged)[0]
        if not len(rows):
            return reward, recoverability, retention
        docs = [int(d) for d in self.doc_index[rows]]
        rec, ret = bonus.measure(
            docs,
            [self.corpus.documents[d] for d in docs],
            [self.masked[row, : int(self.doc_tokens[row])] for row in rows],
            [self.corpus.continuations[d] for d in docs] if has_ret else None,
            recover=want_rec[rows],
            retain=want_ret[rows],
        )
        if dense:
            keep_rec, keep_ret = bonus.keep_all(docs)
            before_rec = np.where(np.isnan(self.judge_rec[rows]), keep_rec, self.judge_rec[rows])
            before_ret = np.where(np.isnan(self.judge_ret[rows]), keep_ret, self.judge_ret[rows])
            after_rec = np.where(want_rec[rows], rec, before_rec)
            after_ret = np.where(want_ret[rows], ret, before_ret)
            reward[rows] = bonus.bonus(after_rec, after_ret) - bonus.bonus(before_rec, before_ret)
            self.judge_rec[rows] = after_rec
            self.judge_ret[rows] = after_ret
            rec, ret = after_rec, after_ret
        else:
            reward[rows] = bonus.bonus(rec, ret)
        ended = terminated[rows]
        recoverability[rows[ended]] = rec[ended]
        retention[rows[ended]] = ret[ended]
        return reward, recoverability, retention

    # ------------------------------------------------------------------ observation
    def observe(self, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Observations of ``rows`` (all by default), each key with a leading rows axis.

        ``global_features`` (see :data:`GLOBAL_FEATURES`): ``progress`` = decided tokens / n;
        ``target_rate``; ``rate_so_far`` = masked / decided (0 before the first step);
        ``required_rate`` = (target * n - masked) / (n - decided), the rate the rest of the
        document needs (0 once all is decided); ``window_fill`` = real tokens in the window /
        window; ``mean_masked_bits`` = cost bits per masked token so far.
        """
        rows = np.arange(self.num_rows) if rows is None else np.asarray(rows, dtype=np.int64)
        r = rows[:, None]
        index = self._window_index(rows)
        start = self.steps[rows] * self.window
        c, w = self.context_size, self.window
        before = self.shown[r, start[:, None] + np.arange(c)[None, :]]
        after = self.shown[r, (start + c + w)[:, None] + np.arange(c)[None, :]]
        valid = self.valid[r, index]
        n = self.doc_tokens[rows]
        decided = np.minimum(start, n)
        masked = self.masked_count[rows]
        remaining = n - decided
        target = self.target_rate[rows]
        glob = np.stack(
            [
                decided / n,
                target,
                np.where(decided > 0, masked / np.maximum(decided, 1), 0.0),
                np.where(remaining > 0, (target * n - masked) / np.maximum(remaining, 1), 0.0),
                valid.sum(axis=1) / w,
                # LM-derived: 0 when the observation holds no LM features (token_features="position")
                self.bits[rows] / np.maximum(masked, 1) * (self.config.token_features == "lm"),
            ],
            axis=1,
        ).astype(np.float32)
        return {
            "token_ids": self.ids[r, index],
            "context_ids": np.concatenate([before, after], axis=1),
            "token_features": self.features[r, index],
            "valid": valid.astype(np.int8),
            "global_features": glob,
        }

    def masked_text(self, row: int) -> str:
        """The row's document so far, masked tokens shown as the mask token (for rendering and logs)."""
        n = int(self.doc_tokens[row])
        decided = min(int(self.steps[row]) * self.window, n)
        ids = np.where(self.masked[row, :decided], self.mask_id, self.ids[row, :decided])
        if self.mask_id >= self.vocab_size:
            ids = self.ids[row, :decided][~self.masked[row, :decided]]
        return self.reconstructor.decode(ids.tolist())
