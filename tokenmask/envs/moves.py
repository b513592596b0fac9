"""``TokenMaskMoves-v0``: the agent chooses which judged move of the search to make.

``refine_lookahead:p:BASE`` (:mod:`tokenmask.evaluate.refine`) proposes, per context and rate, up to 16
*moves* (keep an earlier run of 8-48 tokens in place of the oldest kept tokens), has the judge score
each one's recoverability ``R`` and its lookahead ``S`` along the judge's own continuation (the context
only), and a fixed rule picks: the lowest ``R`` within a lookahead tolerance. Here an agent picks
instead. One episode is one (context, rate): the observation is one row of :data:`MOVE_FEATURES` per
judged candidate (the base mask first; padding rows flagged invalid), the action is a row, and the
reward is what that choice adds to the corpus's recoverability and retention over the base mask,
scored by the frozen judge on the context and on the document's real continuation (which the
observation never contains)::

    reward = recoverability_weight * (R_base - R) / mean(R_empty - R_full)
           + retention_weight * (F_base - F) / mean(F_empty - F_full)

(nats; the means over the table's documents make the sum of rewards over a corpus its change in
the metrics of docs/evaluation.md, up to the rate's share of the documents).

The judge's passes are the expensive part, so they are made once per document and rate and kept
in a :class:`MoveTable` (:func:`build_move_table`, saved atomically with :meth:`MoveTable.save`); the env
then serves episodes from it at no LM cost::

    table = build_move_table(search, judge, documents, rates=(0.3, 0.5, 0.7))  # GPU: a few minutes
    table.save("runs/moves/train.npz")
    env = gym.make("TokenMaskMoves-v0", table="runs/moves/train.npz", retention_weight=1.0)
    model = PPO(MovePolicy, env, n_steps=256, batch_size=256)   # tokenmask.policies.MovePolicy

A trained policy is used through ``tokenmask evaluate --methods move_agent:POLICY.zip:truncation``
(:mod:`tokenmask.evaluate.move_agent`), which builds the same observation from the same search.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from tokenmask.io import atomic_write_bytes

if TYPE_CHECKING:
    from tokenmask.evaluate.metrics import EvalDocument
    from tokenmask.evaluate.refine import JudgedMoves, RecoverabilitySearch
    from tokenmask.reconstructors import Reconstructor

MOVE_FEATURES: tuple[str, ...] = (
    "r",
    "r_best",
    "s",
    "estimate",
    "allowed",
    "rule",
    "start",
    "added",
    "base",
    "rate",
)
"""One observation row per candidate (nats scaled by 10 per token, so most values lie in [-1, 1]):

- ``r``: its ``R`` minus the base mask's, per context token (negative: more recoverable);
- ``r_best``: its ``R`` minus the lowest ``R`` of the context's candidates, per context token (>= 0);
- ``s``: its lookahead ``S`` minus the base's, per lookahead token (positive: the judge's own
  continuation becomes less likely);
- ``estimate``: :func:`~tokenmask.evaluate.refine.move_estimates`' judge-light gain, per context token;
- ``allowed``: 1 where ``S`` is within the search's lookahead tolerance (the rule's guard);
- ``rule``: 1 for the rule's own choice (the lowest ``R`` among the allowed);
- ``start``: the first position the move keeps, over the context length (0 for the base mask);
- ``added``: tokens the move keeps that the base drops, over 48 (the longest move);
- ``base``: 1 for the base mask;
- ``rate``: the asked rate.
"""

_SCALE = 10.0

MOVE_AGENT_DIR = Path(__file__).resolve().parents[1] / "agents" / "moves"
"""The packaged move agent's folder: its policy (``move_agent:default``), card and tables."""
PACKAGED_TABLES: dict[str, Path] = {
    "default": MOVE_AGENT_DIR / "train.npz",
    "default:validation": MOVE_AGENT_DIR / "validation.npz",
}
"""Tables shipped in the package, by name (what :meth:`MoveTable.load` and ``TokenMaskMovesEnv(table=...)`` accept
beside a path): the pydocs train split's judged moves (1,008 windows at offsets 0 and 128, rates 0.3 / 0.5 / 0.7,
3,024 rows) and its validation split's (68 documents, 204 rows), built on one H100 by
``tokenmask moves table --config configs/prod/moves_table.json`` (each file's ``settings`` say how). The shipped
policy was cloned on the first and chosen on the second; the test split's table is not shipped."""
_LONGEST_MOVE = 48.0


def lookahead_allowed(s: np.ndarray, lookahead: int, tolerance: float) -> np.ndarray:
    """The candidates (base first) the search's lookahead guard lets through: ``S`` within ``lookahead * tolerance``
    nats of the base's (the base always)."""
    allowed = np.asarray(s) <= s[0] + lookahead * tolerance
    allowed[0] = True
    return allowed


def guarded_choice(r: np.ndarray, allowed: np.ndarray) -> int:
    """The lowest ``R`` among the ``allowed`` candidates (base first), if it beats the base's; else the base (first
    on ties). The search's rule with its guard (:func:`rule_choice`), or with any other guard."""
    allowed = np.array(allowed, dtype=bool)
    allowed[0] = True
    masked = np.where(allowed, r, np.inf)
    best = int(np.argmin(masked))
    return best if masked[best] < r[0] else 0


def rule_choice(r: np.ndarray, s: np.ndarray, lookahead: int, tolerance: float) -> int:
    """The search's rule over one context's candidates (base first): the lowest ``R`` whose ``S`` is within
    ``lookahead * tolerance`` nats of the base's; the base when none beats it (first on ties)."""
    return guarded_choice(r, lookahead_allowed(s, lookahead, tolerance))


def move_features(moves: JudgedMoves, rate: float, lookahead: int, tolerance: float) -> np.ndarray:
    """``(candidates, len(MOVE_FEATURES))`` observation rows of one context's judged moves (:data:`MOVE_FEATURES`)."""
    masks = np.stack(moves.masks)
    context = masks.shape[1]
    r, s = np.asarray(moves.r, dtype=np.float64), np.asarray(moves.s, dtype=np.float64)
    allowed = lookahead_allowed(s, lookahead, tolerance)
    rule = np.zeros(len(r))
    rule[guarded_choice(r, allowed)] = 1.0
    added = masks & ~masks[0]
    start = np.array([np.flatnonzero(a)[0] / context if a.any() else 0.0 for a in added])
    base = np.zeros(len(r))
    base[0] = 1.0
    columns = [
        (r - r[0]) / context * _SCALE,
        (r - r.min()) / context * _SCALE,
        (s - s[0]) / lookahead * _SCALE,
        np.asarray(moves.estimates, dtype=np.float64) / context * _SCALE,
        allowed.astype(np.float64),
        rule,
        start,
        added.sum(axis=1) / _LONGEST_MOVE,
        base,
        np.full(len(r), float(rate)),
    ]
    return np.stack(columns, axis=1).astype(np.float32)


def observation_rows(features: Sequence[np.ndarray], rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad each context's feature rows to ``rows`` candidates: ``(contexts, rows, F + 1)`` observations (last
    column: 1 = a real candidate) and the valid flags.

    :raises ValueError: if a context has more candidates than ``rows``.
    """
    width = len(MOVE_FEATURES)
    out = np.zeros((len(features), rows, width + 1), dtype=np.float32)
    for i, f in enumerate(features):
        if len(f) > rows:
            raise ValueError(
                f"a context has {len(f)} judged candidates but the observation holds {rows}. "
                "Fix: use the proposals the policy was trained with (move_agent's pK head)."
            )
        out[i, : len(f), :width] = f
        out[i, : len(f), width] = 1.0
    return out, out[..., width] > 0.5


@dataclass
class MoveTable:
    """Judged candidates of many (context, rate) pairs: what ``TokenMaskMoves-v0`` serves.

    Row ``i`` is one (document, rate); column ``j`` its ``j``-th candidate (the base mask first), padded
    to ``K + 1`` columns (``valid``). ``gain_r`` / ``gain_f`` are the frozen judge's ``R`` and ``F`` gains
    over the base mask (nats; ``F`` on the real continuation), ``d_r`` / ``d_f`` each document's metric
    denominators (``R_empty - R_full``, ``F_empty - F_full``); ``r`` / ``s`` the search's own ``R`` and ``S``.
    """

    observations: np.ndarray
    valid: np.ndarray
    gain_r: np.ndarray
    gain_f: np.ndarray
    d_r: np.ndarray
    d_f: np.ndarray
    rate: np.ndarray
    document: np.ndarray
    r: np.ndarray
    s: np.ndarray
    settings: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rate)

    def metric_gains(self) -> tuple[np.ndarray, np.ndarray]:
        """Every candidate's (recoverability, retention) gain over its base mask in units of the metrics: the gains
        over the table's mean denominators (the two terms of ``TokenMaskMoves-v0``'s reward)."""
        return self.gain_r / self.d_r.mean(), self.gain_f / self.d_f.mean()

    @classmethod
    def concatenate(cls, tables: Sequence[MoveTable]) -> MoveTable:
        """One table of several (rows in order; documents renumbered so each table's stay distinct; the first's
        settings)."""
        if not tables:
            raise ValueError("MoveTable.concatenate got no tables.")
        arrays = {k: np.concatenate([getattr(t, k) for t in tables]) for k in _ARRAYS}
        offsets = np.cumsum([0] + [int(t.document.max()) + 1 for t in tables[:-1]])
        arrays["document"] = np.concatenate([t.document + o for t, o in zip(tables, offsets)])
        return cls(**arrays, settings=dict(tables[0].settings))

    def subset(self, rows: np.ndarray) -> MoveTable:
        """The table of the given rows only (e.g. one rate)."""
        arrays = {k: getattr(self, k)[rows] for k in _ARRAYS}
        return MoveTable(**arrays, settings=dict(self.settings))

    def changes(self, choice: np.ndarray, rows: np.ndarray | None = None) -> tuple[float, float]:
        """(recoverability, retention) change over the base masks of one candidate per row (``choice``, one per
        row of the table), as a corpus metric over ``rows`` (default all): sums of gains over sums of denominators."""
        rows = np.arange(len(self)) if rows is None else np.asarray(rows)
        picked = np.asarray(choice)[rows]
        rec = self.gain_r[rows, picked].sum() / self.d_r[rows].sum()
        ret = self.gain_f[rows, picked].sum() / self.d_f[rows].sum()
        return float(rec), float(ret)

    def rule_choices(self) -> np.ndarray:
        """The search's rule per row (:func:`rule_choice` with the table's lookahead and tolerance)."""
        lookahead, tolerance = int(self.settings["lookahead"]), float(self.settings["tolerance"])
        out = np.zeros(len(self), dtype=np.int64)
        for i in range(len(self)):
            n = int(self.valid[i].sum())
            out[i] = rule_choice(self.r[i, :n], self.s[i, :n], lookahead, tolerance)
        return out

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the table as one ``.npz`` (temporary file, then rename)."""
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer, **{k: getattr(self, k) for k in _ARRAYS}, settings=np.array(json.dumps(self.settings))
        )
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> MoveTable:
        """Read a table written by :meth:`save`, or a packaged one by name (:data:`PACKAGED_TABLES`).

        :raises ValueError: if there is no such file, or it is not such a table (names the missing part and the fix).
        """
        from tokenmask.errors import InputError

        named, path = path, PACKAGED_TABLES.get(str(path), path)
        if not Path(path).is_file():
            raise InputError(
                f"{named}: no such table.",
                fix=f"build it with tokenmask moves table, or use a packaged table ({', '.join(PACKAGED_TABLES)}).",
                path=named,
            )
        if not zipfile.is_zipfile(path):
            raise ValueError(
                f"{path} is not a move table (not an .npz archive). Fix: build one with tokenmask moves table "
                "(tokenmask.envs.moves.build_move_table, saved with MoveTable.save)."
            )
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in _ARRAYS}
                settings = json.loads(str(data["settings"]))
        except (OSError, KeyError, ValueError) as error:
            raise ValueError(
                f"{path} is not a move table ({error}). Fix: build one with tokenmask.envs.moves.build_move_table "
                "(tokenmask moves table) and save it with MoveTable.save."
            ) from error
        table = cls(**arrays, settings=settings)
        if table.observations.shape[-1] != len(MOVE_FEATURES) + 1:
            raise ValueError(
                f"{path} has {table.observations.shape[-1] - 1} features per candidate, this version reads "
                f"{len(MOVE_FEATURES)} ({', '.join(MOVE_FEATURES)}). Fix: rebuild the table."
            )
        return table


_ARRAYS = ("observations", "valid", "gain_r", "gain_f", "d_r", "d_f", "rate", "document", "r", "s")


class JudgedChunk(NamedTuple):
    """One chunk of :func:`judged_chunks`: the documents, their judged moves and every candidate's kept ids."""

    rate: float
    documents: range
    """Indices of the chunk's documents."""
    judged: list[JudgedMoves]
    """Per document, the search's judged candidates (base mask first)."""
    owners: list[int]
    """Per candidate (documents in order, each document's candidates in order), its document."""
    prefixes: list[list[int]]
    """Per candidate, the kept context ids (what the judge reads as ``p``)."""


def judged_chunks(
    search: RecoverabilitySearch, contexts: Sequence[Sequence[int]], rates: Sequence[float], chunk: int = 16
) -> Iterator[JudgedChunk]:
    """The search's judged moves of ``contexts`` at each rate, ``chunk`` documents per batched search call, with
    every candidate's kept ids flattened for one batched judge pass (what :func:`build_move_table` and
    ``benchmarks/foresight_oracle.py`` score)."""
    for rate in rates:
        for start in range(0, len(contexts), chunk):
            batch = range(start, min(start + chunk, len(contexts)))
            judged = search.judged_moves([contexts[d] for d in batch], rate)
            owners = [d for d, moves in zip(batch, judged) for _ in moves.masks]
            prefixes = [
                np.asarray(contexts[d])[m].tolist() for d, moves in zip(batch, judged) for m in moves.masks
            ]
            yield JudgedChunk(float(rate), batch, judged, owners, prefixes)


def build_move_table(
    search: RecoverabilitySearch,
    judge: Reconstructor,
    documents: Sequence[EvalDocument],
    rates: Sequence[float],
    chunk: int = 16,
    progress: Callable[[int], None] | None = None,
) -> MoveTable:
    """Judge every proposed move of ``search`` on ``documents`` at each rate, with its real gains.

    :param search: a ``refine_lookahead:p`` search (lookahead and proposals on), e.g. built by
        ``build_method("refine_lookahead:p:truncation", context)``.
    :param judge: the frozen judge of the metrics (scores ``R`` and ``F`` of every candidate).
    :param documents: context and continuation of each document (:func:`~tokenmask.evaluate.metrics.select_documents`).
    :param rates: asked rates; each (document, rate) is one row.
    :param chunk: documents per batched search call.
    :param progress: called with the number of documents done after each chunk (e.g. a tqdm ``update``).
    """
    from tokenmask.evaluate.metrics import ReferenceNLLs
    from tokenmask.reconstructors.judge import recovery_and_continuation_nlls, separator_ids

    if not documents:
        raise ValueError("build_move_table got no documents. Fix: select_documents on a longer corpus.")
    sep = separator_ids(judge)
    contexts = [list(d.context) for d in documents]
    continuations = [list(d.continuation) for d in documents]
    reference = ReferenceNLLs.compute(judge, documents, sep)
    d_r = reference.recover_empty - reference.recover_full
    d_f = reference.continue_empty - reference.continue_full
    n = len(documents)
    rows = search.proposals + 1
    lookahead, tolerance = search.lookahead, search.lookahead_tolerance
    parts: dict[str, list[Any]] = {k: [] for k in _ARRAYS}
    for rate, batch, judged, owners, prefixes in judged_chunks(search, contexts, rates, chunk):
        r, f = recovery_and_continuation_nlls(
            judge,
            prefixes,
            [contexts[d] for d in owners],
            prefixes,
            [continuations[d] for d in owners],
            sep,
        )
        features = [move_features(moves, rate, lookahead, tolerance) for moves in judged]
        observations, valid = observation_rows(features, rows)
        first = 0
        for i, (d, moves) in enumerate(zip(batch, judged)):
            k = len(moves.masks)
            pad = np.zeros(rows)
            gain_r, gain_f, own_r, own_s = pad.copy(), pad.copy(), pad.copy(), np.full(rows, np.inf)
            gain_r[:k] = r[first] - r[first : first + k]
            gain_f[:k] = f[first] - f[first : first + k]
            own_r[:k], own_s[:k] = moves.r, moves.s
            first += k
            for key, value in (
                ("observations", observations[i]),
                ("valid", valid[i]),
                ("gain_r", gain_r),
                ("gain_f", gain_f),
                ("d_r", d_r[d]),
                ("d_f", d_f[d]),
                ("rate", float(rate)),
                ("document", d),
                ("r", own_r),
                ("s", own_s),
            ):
                parts[key].append(value)
        if progress is not None:
            progress(len(batch))
    settings = {
        "method": search.name,
        "proposals": search.proposals,
        "lookahead": lookahead,
        "tolerance": tolerance,
        "moves": list(search.moves),
        "protect": search.protect,
        "dtype": search.dtype,
        "rates": [float(x) for x in rates],
        "documents": n,
        "features": list(MOVE_FEATURES),
    }
    return MoveTable(**{k: np.asarray(v) for k, v in parts.items()}, settings=settings)


class TokenMaskMovesEnv(gym.Env[np.ndarray, np.int64]):
    """One step per (context, rate) of a :class:`MoveTable`: choose a candidate, get its real gains (module doc).

    :param table: a :class:`MoveTable`, the path of one (:meth:`MoveTable.save`), or a packaged table's name
        (:data:`PACKAGED_TABLES`; default ``"default"``, the pydocs train split's, so ``gym.make("TokenMaskMoves-v0")``
        works offline at once).
    :param recoverability_weight: weight of the recoverability gain in the reward.
    :param retention_weight: weight of the retention gain (the real continuation's) in the reward.
    :param rates: serve only the rows of these rates (default: every row).

    An invalid action (a padding row) is taken as the base mask. ``reset(options={"row": i})`` serves row ``i``;
    otherwise rows are drawn uniformly with the env's seeded generator. ``info`` carries the row, the choice
    and its ``recoverability_gain`` and ``retention_gain`` (the reward's two terms before weighting).
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        table: MoveTable | str | os.PathLike[str] = "default",
        recoverability_weight: float = 1.0,
        retention_weight: float = 1.0,
        rates: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        full = table if isinstance(table, MoveTable) else MoveTable.load(table)
        if rates is not None:
            full = full.subset(np.flatnonzero(np.isin(np.round(full.rate, 6), np.round(list(rates), 6))))
        if not len(full):
            raise ValueError(
                f"the move table has no rows at rates {rates}. Fix: one of {full.settings.get('rates')}."
            )
        if recoverability_weight < 0 or retention_weight < 0:
            raise ValueError(
                f"the reward's weights must be >= 0, got recoverability_weight={recoverability_weight}, "
                f"retention_weight={retention_weight}."
            )
        self.table = full
        self.recoverability_weight = float(recoverability_weight)
        self.retention_weight = float(retention_weight)
        self._gain_r, self._gain_f = full.metric_gains()
        rows, width = full.observations.shape[1:]
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(rows, width), dtype=np.float32)
        self.action_space = spaces.Discrete(rows)
        self._row = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if options and "row" in options:
            self._row = int(options["row"])
            if not 0 <= self._row < len(self.table):
                raise ValueError(f"row {self._row} is outside the table's {len(self.table)} rows.")
        else:
            self._row = int(self.np_random.integers(len(self.table)))
        return self.table.observations[self._row].copy(), {"row": self._row}

    def gains(self, row: int, action: int) -> tuple[float, float]:
        """The (recoverability, retention) change of choosing ``action`` at ``row``, in units of the metrics."""
        return float(self._gain_r[row, action]), float(self._gain_f[row, action])

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        choice = int(action)
        if not (0 <= choice < self.table.valid.shape[1] and self.table.valid[self._row, choice]):
            choice = 0
        rec, ret = self.gains(self._row, choice)
        reward = self.recoverability_weight * rec + self.retention_weight * ret
        info = {"row": self._row, "choice": choice, "recoverability_gain": rec, "retention_gain": ret}
        return self.table.observations[self._row].copy(), reward, True, False, info
