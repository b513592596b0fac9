"""What ``refine``'s candidates can give, read from their judged R and F (``benchmarks/run_candidates.py``).

Every figure here is exact for the documents of the JSON files: the corpus metric of a choice of
one candidate per document is a ratio of sums of their judged NLLs (docs/evaluation.md), so no
judge runs here. Three reports, each a Markdown table (deltas over the base mask, i.e. truncation):

- ``oracle``: the search on ``R`` alone (``refine``), and choices that also read the continuation
  (``argmax dR + mu * dF``): how much retention the choice of run could give with the continuation known.
- ``guard``: every (moves, guard k, tolerance) of ``refine_guard`` on the pooled files; the setting
  whose worst rate is furthest above the bar (recoverability +0.02, retention >= -0.01), and the
  probability that a draw of ``--draw`` documents passes at each rate (bootstrap, without replacement).
- ``lookahead``: every (protected tail, stand-in guard, lookahead tolerance) of ``refine_lookahead``
  on the pooled files (they need ``run_candidates.py --soft 64``), ranked by the probability that a
  random draw of ``--draw`` documents meets the bar at all three rates at once; then the ablation
  of the chosen setting (each part alone).
- ``score``: fixed ``refine_lookahead`` settings (``--settings``) on every document of the files:
  recoverability / retention of the base and of each setting's choice, and the verdict against the
  bar. For a held-out split, where nothing may be chosen.
- ``draws``: how fixed settings vary over random draws of ``--draw`` documents (mean, 5th percentile,
  the share meeting each side of the bar, the share at or below ``--below`` retention change), and
  the share meeting the bar at every rate at once. A setting is ``DROPS:PROTECT:TOL``, then optionally
  ``:KEY@CEILING`` (a signal's ceiling) and ``:r2@TOL`` (the second round of a ``--rounds 2`` file).
- ``chooser``: a learned choice among the judged candidates. A linear or small MLP score per
  candidate reads the judge's context-only deltas (``R``, the stand-ins ``g*``, the judge's own
  continuations ``p*`` and ``s``) and the move's shape; it is trained on ``--train`` by exact
  expected-reward policy gradient (softmax over each document's candidates, reward
  ``d rec + lambda d ret`` from the real continuation) and scored on ``--validation``.
- ``pointer``: a learned run pointer without the judge. A small MLP reads per-candidate features
  (the LM's per-token surprisal/entropy of the run and of the dropped tokens, positions, token-id
  overlaps) and predicts ``dR`` and ``dF``. It is fitted on ``--train`` and scored on
  ``--validation`` (the correlations and the metrics of its choices). With ``--protect 32`` only
  ``refine_lookahead``'s moves compete (beside the rule and a perfect ``R`` predictor among them); with
  ``--base_nll`` it also reads each token's judge NLL after the base mask's kept tokens and with nothing
  kept (two judge passes per context and rate, cached as ``.basenll.npz``), and the plain estimate
  ``est`` from them is scored too. ``--train`` and ``--validation`` take comma-separated files.
- ``proposals``: ``refine_lookahead:pK`` (judge only the ``K`` moves of best ``est``,
  :func:`tokenmask.evaluate.refine.move_estimates`) for each ``K`` of ``--proposals`` on the pooled
  ``--files``: the deltas and the share of draws meeting the bar at every rate (needs ``--soft 64`` files).

Example (the files of docs/results.md)::

    python benchmarks/candidate_analysis.py guard --files runs/cand2_train.json,runs/cand2_validation.json
    python benchmarks/candidate_analysis.py pointer --train runs/candidates_train.json --validation runs/candidates_validation.json
    python benchmarks/candidate_analysis.py pointer --protect 32 --base_nll --train runs/r2/r2_train_0.json,... \
        --validation runs/r2/r2_validation_0.json,...
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np

RATES = ("0.3", "0.5", "0.7")
GAIN, SLACK = 0.02, 0.01  # the bar of docs/evaluation.md over truncation
MOVE_SETS: tuple[tuple[int, ...], ...] = (
    (16, 32),
    (8, 16, 32),
    (16, 32, 48),
    (8, 16, 24, 32),
    (8, 16, 24, 32, 48),
    (16, 24, 32, 48),
    (8, 16, 32, 48),
)
"""The run-length sets the guard report compares (refine's default first)."""


# ---------------------------------------------------------------------------------------- reading
def load(path: str) -> list[dict[str, Any]]:
    """Documents of a run_candidates JSON, with numpy arrays per rate and each candidate's moved length ``m``."""
    data = json.loads(Path(path).read_text())
    docs = data["documents"]
    for x in docs:
        x["protect"] = data.get("protect", 0)  # the tail the file's span/thin moves spare
        for c in x["rates"].values():
            keeps = [np.frombuffer(k.encode(), dtype=np.uint8) == ord("1") for k in c["keep"]]
            c["masks"] = keeps
            for key in [k for k in c if k in ("r", "f") or k.startswith(("g", "p", "s"))]:
                c[key] = np.asarray(c[key], dtype=np.float64)
    return docs


def metric(docs: list[dict[str, Any]], rate: str, choice: list[int]) -> tuple[float, float]:
    """(recoverability, retention) deltas over the base mask of one candidate per document."""
    (rec, ret), (rec0, ret0) = absolute(docs, rate, choice), absolute(docs, rate, [0] * len(docs))
    return rec - rec0, ret - ret0


def allowed_moves(c: dict[str, Any], moves: tuple[int, ...]) -> np.ndarray:
    """Which candidates ``refine`` over ``moves`` tries: the base mask and ``move_variants(base, moves, stride)``.

    Matched by mask, not by moved length: a run may overlap the kept tokens it replaces, so the
    tokens a candidate adds can be fewer than its ``m``.
    """
    from tokenmask.evaluate.refine import DEFAULT_STRIDE, move_variants

    cache = c.setdefault("allowed", {})
    if moves not in cache:
        keys = {v.tobytes() for v in move_variants(c["masks"][0], moves, DEFAULT_STRIDE)}
        cache[moves] = np.array([i == 0 or m.tobytes() in keys for i, m in enumerate(c["masks"])])
    return cache[moves]  # type: ignore[no-any-return]


def guarded_choice(
    docs: list[dict[str, Any]], rate: str, moves: tuple[int, ...], guard: int, tolerance: float
) -> list[int]:
    """``refine_guard``'s choice per document: lowest R among the allowed moves within the guard."""
    return filtered_choice(docs, rate, moves, 0, (guard, tolerance) if guard else None, None)


def document_draws(
    docs: list[dict[str, Any]], draw: int, count: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """``count`` random subsets of ``draw`` documents (without replacement; all of them when fewer)."""
    return [rng.choice(len(docs), min(draw, len(docs)), replace=False) for _ in range(count)]


def draw_changes(
    docs: list[dict[str, Any]], rate: str, choice: list[int], draws: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Per document draw: the (recoverability, retention) changes over the base of one candidate per document."""
    c = [x["rates"][rate] for x in docs]
    gain_r = np.array([v["r"][0] - v["r"][k] for v, k in zip(c, choice)])
    gain_f = np.array([v["f"][0] - v["f"][k] for v, k in zip(c, choice)])
    d_r = np.array([x["r_empty"] - x["r_full"] for x in docs])
    d_f = np.array([x["f_empty"] - x["f_full"] for x in docs])
    rec = np.array([gain_r[i].sum() / d_r[i].sum() for i in draws])
    ret = np.array([gain_f[i].sum() / d_f[i].sum() for i in draws])
    return rec, ret


def pass_probability(
    docs: list[dict[str, Any]], rate: str, choice: list[int], draw: int, rng: np.random.Generator, boots: int
) -> float:
    """Share of ``draw``-document subsets (without replacement) on which the choice meets the bar."""
    draws = document_draws(docs, draw, boots, rng)
    rec, ret = draw_changes(docs, rate, choice, draws)
    return float(np.mean((rec >= GAIN) & (ret >= -SLACK)))


# ---------------------------------------------------------------------------------------- reports
def oracle(docs: list[dict[str, Any]]) -> None:
    print("| choice | " + " | ".join(f"{r} (d rec / d ret)" for r in RATES) + " |")
    print("| --- |" + " --- |" * len(RATES))
    rows: list[tuple[str, Any]] = [("refine (R only, no continuation)", None)]
    rows += [(f"oracle dR + {mu} dF (reads the continuation)", mu) for mu in (0.1, 0.25, 0.5, 1.0)]
    for name, mu in rows:
        cells = []
        for rate in RATES:
            if mu is None:
                choice = [int(np.argmin(x["rates"][rate]["r"])) for x in docs]
            else:
                d_r = np.mean([x["r_empty"] - x["r_full"] for x in docs])
                d_f = np.mean([x["f_empty"] - x["f_full"] for x in docs])
                choice = []
                for x in docs:
                    c = x["rates"][rate]
                    choice.append(
                        int(np.argmax((c["r"][0] - c["r"]) / d_r + mu * (c["f"][0] - c["f"]) / d_f))
                    )
            r, f = metric(docs, rate, choice)
            cells.append(f"{r:+.3f} / {f:+.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


def guard(docs: list[dict[str, Any]], draw: int, seed: int, top: int) -> None:
    guards = sorted({int(k[1:]) for k in docs[0]["rates"][RATES[0]] if k.startswith("g") and k[1:].isdigit()})
    move_sets = list(MOVE_SETS)
    settings = [(0, 0.0)] + [(k, t) for k in guards for t in (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)]
    rows = []
    for moves, (k, t) in itertools.product(move_sets, settings):
        cells, margins = [], []
        for rate in RATES:
            r, f = metric(docs, rate, guarded_choice(docs, rate, moves, k, t))
            cells.append((r, f))
            margins.append(min(r - GAIN, f + SLACK))
        rows.append((min(margins), moves, k, t, cells))
    rows.sort(key=lambda row: -row[0])
    rng = np.random.default_rng(seed)
    print(
        f"{len(docs)} documents; margin = worst rate's min(d rec - {GAIN}, d ret + {SLACK}); "
        f"P(pass) over {draw}-document draws\n"
    )
    print("| moves | guard | margin | " + " | ".join(f"{r}: d rec / d ret, P(pass)" for r in RATES) + " |")
    print("| --- | --- | --- |" + " --- |" * len(RATES))
    for margin, moves, k, t, cells in rows[:top]:
        probs = [
            pass_probability(docs, rate, guarded_choice(docs, rate, moves, k, t), draw, rng, 500)
            for rate in RATES
        ]
        text = " | ".join(f"{r:+.3f} / {f:+.3f}, {p:.2f}" for (r, f), p in zip(cells, probs))
        print(f"| {','.join(map(str, moves))} | {f'{k}@{t:g}' if k else '-'} | {margin:+.4f} | {text} |")


def lookahead_choice(
    docs: list[dict[str, Any]],
    rate: str,
    protect: int,
    guard: tuple[int, float] | None,
    tolerance: float | None,
    tokens: int = 64,
    drops: str = "o",
    limit: tuple[str, float] | None = None,
) -> list[int]:
    """``refine_lookahead``'s choice per document over :data:`~tokenmask.evaluate.refine.GUARD_MOVES` (:func:`filtered_choice`)."""
    from tokenmask.evaluate.refine import GUARD_MOVES

    return filtered_choice(docs, rate, GUARD_MOVES, protect, guard, tolerance, tokens, drops, limit)


def searched(c: dict[str, Any], moves: tuple[int, ...], protect: int, drops: str = "o") -> np.ndarray:
    """Which candidates of one document and rate the search tries: ``oldest`` moves over ``moves`` (matched by
    mask), the other drop rules of ``drops`` by their ``kind``, all keeping the base's last ``protect`` kept
    tokens; the base mask (index 0) is always one."""
    kind = np.array(list(c.get("kind", "")) or ["o"] * len(c["r"]))
    ok = (allowed_moves(c, moves) if "o" in drops else kind == "b") | np.isin(
        kind, list(drops.replace("o", ""))
    )
    if protect:
        last = np.flatnonzero(c["masks"][0])[-protect:]
        ok &= np.array([m[last].all() for m in c["masks"]])
    return ok  # type: ignore[no-any-return]


def filtered_choice(
    docs: list[dict[str, Any]],
    rate: str,
    moves: tuple[int, ...],
    protect: int,
    guard: tuple[int, float] | None,
    tolerance: float | None,
    tokens: int = 64,
    drops: str = "o",
    limit: tuple[str, float] | None = None,
) -> list[int]:
    """``RecoverabilitySearch``'s choice per document: lowest R among the ``moves`` candidates that keep the
    base's last ``protect`` kept tokens, within the stand-in guard ``(k, tol)`` and the lookahead tolerance.

    ``drops`` names the drop rules by letter (``o``ldest, ``s``pan, ``t``hin; a file without ``kind``
    holds ``oldest`` moves only): ``oldest`` moves are matched by mask, the others by their ``kind``.
    ``limit = (key, ceiling)`` also drops the moves whose per-candidate signal ``c[key]`` exceeds the
    ceiling (``benchmarks/candidate_signals.py``); the base mask always stays a candidate."""
    out = []
    for x in docs:
        c = x["rates"][rate]
        ok = searched(c, moves, protect, drops)
        if guard:
            g = c[f"g{guard[0]}"]
            ok &= g <= g[0] + guard[0] * guard[1]
        if tolerance is not None:
            ok &= c["s"] <= c["s"][0] + tokens * tolerance
        if limit is not None:
            ok &= (c[limit[0]] <= limit[1]) | (np.arange(len(ok)) == 0)
        out.append(int(np.argmin(np.where(ok, c["r"], np.inf))))
    return out


def joint_pass_probability(
    docs: list[dict[str, Any]], choices: dict[str, list[int]], draws: list[np.ndarray]
) -> float:
    """Share of the document draws on which the choices meet the bar at every rate at once."""
    ok = np.ones(len(draws), dtype=bool)
    for rate, choice in choices.items():
        rec, ret = draw_changes(docs, rate, choice, draws)
        ok &= (rec >= GAIN) & (ret >= -SLACK)
    return float(ok.mean())


def lookahead(
    docs: list[dict[str, Any]], draw: int, seed: int, top: int, drop_sets: tuple[str, ...] = ("o",)
) -> None:
    rng = np.random.default_rng(seed)
    draws = document_draws(docs, draw, 2000, rng)
    guards: list[tuple[int, float] | None] = [None, (32, 0.5), (32, 0.2), (16, 0.2), (16, 0.1)]
    if drop_sets != ("o",):  # the drop rules are compared without the stand-in guard
        guards = [None]
    rows = []
    spared = {x["protect"] for x in docs}
    for drops, protect, g, tol in itertools.product(
        drop_sets, (0, 16, 24, 32, 40, 48), guards, (None, 0.0, 0.02, 0.05, 0.1)
    ):
        if drops != "o" and {protect} != spared:
            continue  # span/thin moves are exact only with the tail the file spared
        choices = {rate: lookahead_choice(docs, rate, protect, g, tol, drops=drops) for rate in RATES}
        rows.append((joint_pass_probability(docs, choices, draws), protect, g, tol, choices, drops))
    rows.sort(key=lambda row: -row[0])

    def line(
        p: float, protect: int, g: Any, tol: Any, choices: dict[str, list[int]], drops: str = "o"
    ) -> str:
        cells = " | ".join("{:+.3f} / {:+.3f}".format(*metric(docs, r, choices[r])) for r in RATES)
        guard_text = f"{g[0]}@{g[1]:g}" if g else "-"
        head = f"| {drops} " if drop_sets != ("o",) else ""
        return f"{head}| {protect or '-'} | {guard_text} | {'-' if tol is None else f'{tol:g}'} | {p:.3f} | {cells} |"

    print(
        f"{len(docs)} documents; P(all) = share of {len(draws)} draws of {draw} documents meeting the bar at all rates\n"
    )
    header = (
        ("| drops " if drop_sets != ("o",) else "")
        + "| protect | guard | lookahead tol | P(all) | "
        + " | ".join(f"{r}: d rec / d ret" for r in RATES)
        + " |"
    )
    rule = "\n" + "| --- " * (header.count("|") - 1) + "|"
    print(header + rule)
    for row in rows[:top]:
        print(line(*row))
    print("\nAblation of the chosen setting (first row above), and refine_guard's default:\n")
    print(header + rule)
    _, protect, g, tol, _, drops = rows[0]
    has_guard = all("g32" in x["rates"][r] for x in docs for r in RATES)
    settings: list[tuple[int, Any, Any, str]] = [(0, (32, 0.5), None, "o")] if has_guard else []
    # each part alone, then the chosen setting with oldest moves only, then the chosen setting
    settings += [(0, None, None, "o"), (protect, None, None, drops), (0, g, tol, "o")]
    settings += [(protect, g, tol, "o")] if drops != "o" else []
    for protect_, g_, tol_, drops_ in [*settings, (protect, g, tol, drops)]:
        choices = {rate: lookahead_choice(docs, rate, protect_, g_, tol_, drops=drops_) for rate in RATES}
        print(line(joint_pass_probability(docs, choices, draws), protect_, g_, tol_, choices, drops_))


def absolute(docs: list[dict[str, Any]], rate: str, choice: list[int]) -> tuple[float, float]:
    """(recoverability, retention) of one candidate per document: the corpus ratios of docs/evaluation.md."""
    c = [x["rates"][rate] for x in docs]
    rec = sum(x["r_empty"] - v["r"][k] for x, v, k in zip(docs, c, choice))
    ret = sum(x["f_empty"] - v["f"][k] for x, v, k in zip(docs, c, choice))
    return rec / sum(x["r_empty"] - x["r_full"] for x in docs), ret / sum(
        x["f_empty"] - x["f_full"] for x in docs
    )


def parse_setting(setting: str) -> tuple[str, int, float, tuple[str, float] | None, float | None]:
    """``DROPS:PROTECT:TOL[:KEY@CEILING][:r2@TOL2]`` -> (drops, protect, tolerance, limit or None, second-round
    tolerance or None)."""
    drops, protect, tol, *rest = setting.split(":")
    fields = dict((part.split("@")[0], float(part.split("@")[1])) for part in rest)
    second = fields.pop("r2", None)
    limit = next(iter(fields.items())) if fields else None
    return drops, int(protect), float(tol), limit, second


def setting_choice(docs: list[dict[str, Any]], rate: str, setting: str) -> list[int]:
    """The choice of a fixed setting (:func:`parse_setting`): :func:`lookahead_choice`, then the second round."""
    drops, protect, tol, limit, second = parse_setting(setting)
    choice = lookahead_choice(docs, rate, protect, None, tol, drops=drops, limit=limit)
    return choice if second is None else second_round_choice(docs, rate, choice, second)


def second_round_choice(
    docs: list[dict[str, Any]], rate: str, first: list[int], tolerance: float, tokens: int = 64
) -> list[int]:
    """Per document, the lowest ``R`` among the first-round choice and its second-round moves (``run_candidates.py
    --rounds 2``: kind ``2``, ``parent``) within ``S <= S(base) + tokens * tolerance``; ties keep the first choice.

    :raises ValueError: when the first choice of a document was not expanded (``expanded``: another
        tolerance than the file's ``--round_tolerances``)."""
    out = []
    for x, k in zip(docs, first):
        c = x["rates"][rate]
        parent = np.asarray(c.get("parent", []))
        if k and k not in c.get("expanded", []):
            raise ValueError(
                f"candidate {k} has no judged second round: run run_candidates.py --rounds 2 with its tolerance"
            )
        rows = np.concatenate([[k], np.flatnonzero(parent == k)]) if k else np.array([0])
        ok = c["s"][rows] <= c["s"][0] + tokens * tolerance
        ok[0] = True
        out.append(int(rows[np.argmin(np.where(ok, c["r"][rows], np.inf))]))
    return out


def score(docs: list[dict[str, Any]], settings: str) -> None:
    """Fixed settings scored on every document of the files (a held-out split: nothing is chosen here).

    ``settings``: comma-separated ``DROPS:PROTECT:TOL``, optionally ``:KEY@CEILING`` for a ceiling on a
    per-candidate signal that ``benchmarks/candidate_signals.py`` attached."""
    rates = [r for r in RATES if all(r in x["rates"] for x in docs)]
    print(
        f"{len(docs)} documents; each cell: recoverability / retention, then the change over the base mask\n"
    )
    print("| setting | " + " | ".join(rates) + " |\n" + "| --- " * (len(rates) + 1) + "|")
    base = [absolute(docs, r, [0] * len(docs)) for r in rates]
    print("| base (truncation) | " + " | ".join(f"{a:.3f} / {b:.3f}" for a, b in base) + " |")
    for setting in settings.split(","):
        drops, protect, tol, limit, second = parse_setting(setting)
        cells = []
        for rate, (r0, f0) in zip(rates, base):
            choice = setting_choice(docs, rate, setting)
            rec, ret = absolute(docs, rate, choice)
            verdict = "meets" if rec - r0 >= GAIN and ret - f0 >= -SLACK else "fails"
            cells.append(f"{rec:.3f} / {ret:.3f} ({rec - r0:+.3f} / {ret - f0:+.3f}, {verdict})")
        name = f"{drops} protect {protect} tol {tol}" + (f" {limit[0]} <= {limit[1]:g}" if limit else "")
        name += f", second round tol {second:g}" if second is not None else ""
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(
        "\nThe same changes with their 90 % intervals and P(meets the bar) over 2,000 paired bootstrap draws of these "
        "documents (tokenmask.evaluate.bar):\n"
    )
    print("| setting | " + " | ".join(rates) + " |\n" + "| --- " * (len(rates) + 1) + "|")
    for setting in settings.split(","):
        cells = [interval_cell(docs, rate, setting_choice(docs, rate, setting)) for rate in rates]
        print(f"| {setting} | " + " | ".join(cells) + " |")


def interval_cell(docs: list[dict[str, Any]], rate: str, choice: list[int], seed: int = 0) -> str:
    """``d rec [interval] / d ret [interval], P(meets)`` of one choice over the base: :func:`tokenmask.evaluate.bar.bar_rows`
    on the judged NLLs (the base is truncation, rate error 0: the candidates keep the base's count)."""
    from tokenmask.evaluate.bar import bar_rows

    c = [x["rates"][rate] for x in docs]
    reference = {
        key: [x[name] for x in docs]
        for key, name in (
            ("recover_empty", "r_empty"),
            ("recover_full", "r_full"),
            ("continue_empty", "f_empty"),
            ("continue_full", "f_full"),
        )
    }

    def row(method: str, picks: list[int]) -> dict[str, Any]:
        return {
            "method": method,
            "requested_rate": float(rate),
            "rate_error": 0.0,
            "recover_nlls": [v["r"][k] for v, k in zip(c, picks)],
            "continue_nlls": [v["f"][k] for v, k in zip(c, picks)],
        }

    (b,) = bar_rows([row("truncation", [0] * len(docs)), row("choice", choice)], reference, seed=seed)
    return (
        f"{b.d_rec:+.3f} [{b.rec_interval[0]:+.3f}, {b.rec_interval[1]:+.3f}] / "
        f"{b.d_ret:+.3f} [{b.ret_interval[0]:+.3f}, {b.ret_interval[1]:+.3f}], P {b.p_meets:.2f}"
    )


def draw_report(docs: list[dict[str, Any]], settings: str, draw: int, seed: int, below: float) -> None:
    """How fixed settings vary over random ``draw``-document draws of the files: per rate, the mean and
    5th percentile of d rec and d ret, the share of draws meeting each side of the bar, and the share
    with d ret at or below ``below`` (how rare a held-out figure would be under these documents); then
    per setting the share of draws meeting the bar at every rate at once (``P(all)``)."""
    rng = np.random.default_rng(seed)
    picks = document_draws(docs, draw, 4000, rng)
    print(f"{len(docs)} documents, {len(picks)} draws of {draw}\n")
    print(
        f"| setting | rate | d rec: mean, p5 | P(d rec >= {GAIN}) | d ret: mean, p5 | P(d ret >= -{SLACK}) "
        f"| P(d ret <= {below:g}) |\n" + "| --- " * 7 + "|"
    )
    joint = {}
    for setting in settings.split(","):
        choices = {rate: setting_choice(docs, rate, setting) for rate in RATES}
        joint[setting] = joint_pass_probability(docs, choices, picks)
        for rate, choice in choices.items():
            rec, ret = draw_changes(docs, rate, choice, picks)
            print(
                f"| {setting} | {rate} | {rec.mean():+.3f}, {np.quantile(rec, 0.05):+.3f} | {np.mean(rec >= GAIN):.3f} "
                f"| {ret.mean():+.3f}, {np.quantile(ret, 0.05):+.3f} | {np.mean(ret >= -SLACK):.3f} "
                f"| {np.mean(ret <= below):.4f} |"
            )
    print("\n| setting | P(all): the bar at every rate at once |\n| --- | --- |")
    for setting, p in joint.items():
        print(f"| {setting} | {p:.3f} |")


def chooser_groups(path: str) -> tuple[list[dict[str, Any]], list[tuple[str, np.ndarray, Any, Any, Any]]]:
    """Per (document, rate): the candidates' indices, features and normalised judged gains (d rec, d ret)."""
    import torch

    from tokenmask.evaluate.refine import GUARD_MOVES

    docs = load(path)
    d_r = np.mean([x["r_empty"] - x["r_full"] for x in docs])
    d_f = np.mean([x["f_empty"] - x["f_full"] for x in docs])
    out = []
    for rate in RATES:
        for x in docs:
            c = x["rates"][rate]
            idx = np.flatnonzero(allowed_moves(c, GUARD_MOVES))
            masks = np.stack([c["masks"][i] for i in idx])
            added = masks & ~masks[0]
            cols = [
                (c[k][0] - c[k][idx]) / 10 for k in ("r", "s", "p0", "p1", "p2", "g8", "g16", "g32") if k in c
            ]
            cols.append(np.array([np.flatnonzero(a)[0] / len(a) if a.any() else 0.0 for a in added]))
            cols += [added.sum(1) / 32, np.full(len(idx), float(rate))]
            gains = ((c["r"][0] - c["r"][idx]) / d_r, (c["f"][0] - c["f"][idx]) / d_f)
            out.append(
                (rate, idx, torch.tensor(np.stack(cols, 1), dtype=torch.float32), *map(torch.tensor, gains))
            )
    return docs, out


def chooser(train: str, validation: str, epochs: int, seed: int) -> None:
    import torch

    train_docs, train_groups = chooser_groups(train)
    val_docs, val_groups = chooser_groups(validation)

    def scores(net: Any, docs: list[dict[str, Any]], groups: list[Any]) -> str:
        cells = []
        with torch.no_grad():
            for rate in RATES:
                choice = [int(idx[int(net(x)[:, 0].argmax())]) for r, idx, x, _, _ in groups if r == rate]
                cells.append("{:+.3f} / {:+.3f}".format(*metric(docs, rate, choice)))
        return " | ".join(cells)

    print(f"trained on {train}, scored on {validation} (d rec / d ret over the base at 0.3 | 0.5 | 0.7)\n")
    print(
        "| score | lambda | train 0.3 | 0.5 | 0.7 | validation 0.3 | 0.5 | 0.7 |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    for hidden, lam in itertools.product((0, 16), (0.5, 1.0, 2.0)):
        torch.manual_seed(seed)
        width = train_groups[0][2].shape[1]
        net = (
            torch.nn.Linear(width, 1)
            if hidden == 0
            else torch.nn.Sequential(
                torch.nn.Linear(width, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1)
            )
        )
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        for _ in range(epochs):
            opt.zero_grad()
            loss = sum(
                -(torch.softmax(net(x)[:, 0] * 10, 0) * (g_r + lam * g_f).float()).sum()
                for _, _, x, g_r, g_f in train_groups
            )
            (loss / len(train_groups)).backward()  # type: ignore[union-attr]
            opt.step()
        kind = "linear" if hidden == 0 else f"MLP {hidden}"
        print(
            f"| {kind} | {lam:g} | {scores(net, train_docs, train_groups)} | {scores(net, val_docs, val_groups)} |"
        )


# ---------------------------------------------------------------------------------------- learned pointer
def candidate_features(
    ctx: np.ndarray, feats: np.ndarray, base: np.ndarray, mask: np.ndarray, rate: float
) -> list[float]:
    """What a judge-free pointer sees of one candidate (context and the LM's one-pass features only)."""
    n = len(ctx)
    added, dropped = mask & ~base, base & ~mask
    run, gone = np.flatnonzero(added), np.flatnonzero(dropped)
    surprisal, entropy, top1 = feats[:, 0], feats[:, 1], feats[:, 2]
    rest = set(ctx[mask & ~added].tolist())
    last = set(ctx[-32:].tolist())
    counts: dict[int, int] = {}
    for t in ctx.tolist():
        counts[t] = counts.get(t, 0) + 1
    run_ids, gone_ids = ctx[run].tolist(), ctx[gone].tolist()
    return [
        len(run) / 32,
        rate,
        run[0] / n,
        (np.flatnonzero(base)[0] - run[0]) / n,
        surprisal[run].mean() / 10,
        surprisal[run].max() / 20,
        entropy[run].mean() / 10,
        top1[run].mean(),
        surprisal[gone].mean() / 10,
        entropy[gone].mean() / 10,
        top1[gone].mean(),
        (surprisal[run].sum() - surprisal[gone].sum()) / 200,
        np.mean([t in rest for t in run_ids]),
        np.mean([t in last for t in run_ids]),
        np.mean([t in rest for t in gone_ids]),
        np.mean([t in last for t in gone_ids]),
        np.log1p(np.mean([counts[t] - 1 for t in run_ids])),
        np.log1p(np.mean([counts[t] - 1 for t in gone_ids])),
        len(set(run_ids) - rest) / 32,
    ]


def token_features(path: str, docs: list[dict[str, Any]]) -> np.ndarray:
    """The environment's per-token LM features of every context (cached beside the JSON as ``.features.npy``)."""
    cache = Path(path).with_suffix(".features.npy")
    if cache.is_file():
        return np.load(cache)
    from tokenmask.envs.scoring import document_features
    from tokenmask.reconstructors import Reconstructor

    judge = Reconstructor.load("default", add_mask_token=False)
    feats = np.stack(document_features(judge, [np.asarray(x["context"]) for x in docs]))
    np.save(cache, feats)
    return feats


def base_nlls(path: str, docs: list[dict[str, Any]], judge: Any = None) -> dict[str, np.ndarray]:
    """Per-token judge NLLs of every context (nats): ``e`` after ``BOS + sep`` (nothing kept) and ``b_RATE``
    after ``BOS + base kept tokens + sep`` (the base mask of that rate): the terms ``R`` sums, before any
    move. Two judge passes per context and rate, not one per candidate; cached beside the JSON as
    ``.basenll.npz``. ``judge``: the judge of the file (default: the embedded model)."""
    cache = Path(path).with_suffix(".basenll.npz")
    if cache.is_file():
        return dict(np.load(cache))
    from tokenmask.reconstructors import Reconstructor
    from tokenmask.reconstructors.judge import recovery_token_nlls, separator_ids

    judge = judge or Reconstructor.load("default", add_mask_token=False)
    keys, prefixes, contexts = [], [], []
    for x in docs:
        ctx = np.asarray(x["context"])
        for key in ("e", *(f"b_{r}" for r in x["rates"])):
            keys.append(key)
            prefixes.append([] if key == "e" else ctx[x["rates"][key[2:]]["masks"][0]].tolist())
            contexts.append(ctx.tolist())
    out: dict[str, list[np.ndarray]] = {}
    for key, nll in zip(keys, recovery_token_nlls(judge, prefixes, contexts, separator_ids(judge))):
        out.setdefault(key, []).append(nll)
    arrays = {k: np.stack(v) for k, v in out.items()}
    tmp = cache.with_name(cache.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(cache)
    return arrays


NLL_FEATURES = 12
"""How many columns :func:`nll_features` adds."""

EST_COLUMN = 4
"""Where :func:`nll_features` puts the estimate ``est`` among its columns."""


def nll_features(b: np.ndarray, e: np.ndarray, base: np.ndarray, mask: np.ndarray) -> list[float]:
    """What :func:`base_nlls` says of one move: the base NLLs of the run it adds (what copying could save),
    the no-prefix NLLs of the kept tokens it drops (what they cost once gone), their difference (the estimate
    ``est``, :func:`tokenmask.evaluate.refine.move_estimates`), and the NLL level around the run and in the
    unkept region."""
    from tokenmask.evaluate.refine import move_estimates

    run, gone = mask & ~base, base & ~mask
    where = np.flatnonzero(run)
    after = b[where[-1] + 1 : where[-1] + 33]
    before = b[max(0, where[0] - 32) : where[0]]
    return [
        b[run].sum() / 50,
        e[gone].sum() / 50,
        b[gone].sum() / 50,
        e[run].sum() / 50,
        float(move_estimates(base, [mask], b, e)[0]) / 50,
        b[run].mean() / 5,
        e[gone].mean() / 5,
        after.mean() / 5 if len(after) else 0.0,
        before.mean() / 5 if len(before) else 0.0,
        b[~base].mean() / 5,
        run.sum() / 32,
        gone.sum() / 32,
    ]


def pointer_rows(
    paths: str, protect: int = 0, with_nll: bool = False
) -> tuple[list[dict[str, Any]], list[tuple[int, str, int]], np.ndarray, np.ndarray]:
    """Per candidate of the comma-separated files: ``(document, rate, index)``, features, and the judged
    ``(dR, dF)`` in units of the files' mean ``R(empty) - R(full)`` and ``F(empty) - F(full)``.

    :param protect: > 0: only ``refine_lookahead``'s moves (oldest-token drops of its run lengths) that keep
        the base's last ``protect`` kept tokens.
    :param with_nll: add :func:`nll_features` (judge passes of :func:`base_nlls`, cached)."""
    from tokenmask.evaluate.refine import GUARD_MOVES

    docs: list[dict[str, Any]] = []
    keys, x_rows, y_rows = [], [], []
    for path in paths.split(","):
        part = load(path)
        feats = token_features(path, part)
        nlls = base_nlls(path, part) if with_nll else {}
        for i, x in enumerate(part):
            ctx = np.asarray(x["context"])
            for rate in RATES:
                c = x["rates"][rate]
                base = c["masks"][0]
                allowed = allowed_moves(c, GUARD_MOVES) if protect else None
                last = np.flatnonzero(base)[-protect:] if protect else None
                for j in range(1, len(c["masks"])):
                    if protect and (c["kind"][j] != "o" or not allowed[j] or not c["masks"][j][last].all()):
                        continue
                    row = candidate_features(ctx, feats[i], base, c["masks"][j], float(rate))
                    if with_nll:
                        row += nll_features(nlls[f"b_{rate}"][i], nlls["e"][i], base, c["masks"][j])
                    keys.append((len(docs) + i, rate, j))
                    x_rows.append(row)
                    y_rows.append((c["r"][0] - c["r"][j], c["f"][0] - c["f"][j]))
        docs += part
    d_r = np.mean([x["r_empty"] - x["r_full"] for x in docs])
    d_f = np.mean([x["f_empty"] - x["f_full"] for x in docs])
    y = np.asarray(y_rows, dtype=np.float32) / np.array([d_r, d_f], dtype=np.float32)
    return docs, keys, np.asarray(x_rows, dtype=np.float32), y


def pointer(
    train: str, validation: str, epochs: int, seed: int, protect: int = 0, with_nll: bool = False
) -> None:
    import torch

    _, _, x_train, y_train = pointer_rows(train, protect, with_nll)
    docs, keys, x_val, y_val = pointer_rows(validation, protect, with_nll)
    mean, scale = x_train.mean(0), x_train.std(0) + 1e-6
    y_scale = y_train.std(0)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(x_train.shape[1], 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 2),
    )
    opt = torch.optim.Adam(net.parameters(), 1e-3, weight_decay=1e-4)
    xt, yt = torch.tensor((x_train - mean) / scale), torch.tensor(y_train / y_scale)
    for _ in range(epochs):
        order = torch.randperm(len(xt))
        for start in range(0, len(xt), 1024):
            batch = order[start : start + 1024]
            loss = ((net(xt[batch]) - yt[batch]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        pred = net(torch.tensor((x_val - mean) / scale)).numpy() * y_scale
    print(
        f"fitted on {train} ({len(x_train)} candidates), scored on {validation} ({len(x_val)} candidates)\n"
    )
    print(
        f"- correlation with the judged gains: d rec {np.corrcoef(pred[:, 0], y_val[:, 0])[0, 1]:.2f}, "
        f"d ret {np.corrcoef(pred[:, 1], y_val[:, 1])[0, 1]:.2f}\n"
    )
    print("| choice | " + " | ".join(f"{r} (d rec / d ret)" for r in RATES) + " |")
    print("| --- |" + " --- |" * len(RATES))
    variants: list[tuple[str, Any]] = [("refine (judge search on R)", None)]
    if protect:
        variants = [("lowest judged R among these moves (a perfect R predictor)", "judged")]
        variants += [(f"refine_lookahead (protect {protect}, tolerance 0.02)", "rule")]
    if with_nll:
        variants += [("est = base NLL of the run - no-prefix NLL of the dropped tokens", "est")]
    variants += [(f"pointer: predicted d rec + {mu} x predicted d ret", mu) for mu in (0.0, 0.5, 1.0)]
    variants += [(f"judged d rec + {mu} x predicted d ret", -mu) for mu in (0.5, 1.0)]
    intervals: list[str] = []
    est_column = (
        x_val.shape[1] - NLL_FEATURES + EST_COLUMN
    )  # nll_features' (b run - e gone) / 50, the last block
    for name, mu in variants:
        cells = []
        for rate in RATES:
            if mu is None:
                choice = [int(np.argmin(x["rates"][rate]["r"])) for x in docs]
            elif mu == "rule":
                choice = setting_choice(docs, rate, f"o:{protect}:0.02")
            else:
                best: dict[int, tuple[float, int]] = {}
                for (i, r, j), p, y, row in zip(keys, pred, y_val, x_val):
                    if r != rate:
                        continue
                    if mu == "judged":
                        score = y[0]
                    elif mu == "est":
                        score = row[est_column]
                    else:
                        score = (p[0] + mu * p[1]) if mu >= 0 else (y[0] - mu * p[1])
                    if score > best.get(i, (0.0, 0))[0]:
                        best[i] = (float(score), j)
                choice = [best.get(i, (0.0, 0))[1] for i in range(len(docs))]
            r_gain, f_gain = metric(docs, rate, choice)
            cells.append(f"{r_gain:+.3f} / {f_gain:+.3f}")
            if mu == 0.0:
                intervals.append(f"{rate}: {interval_cell(docs, rate, choice)}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nThe pointer (predicted d rec), 90 % paired bootstrap intervals: " + "; ".join(intervals))


# ---------------------------------------------------------------------------------------- proposals
def proposal_choice(
    docs: list[dict[str, Any]], nlls: list[dict[str, np.ndarray]], rate: str, k: int
) -> list[int]:
    """``refine_lookahead:pK``'s choice per document: its moves ranked by
    :func:`tokenmask.evaluate.refine.move_estimates` (from :func:`base_nlls`), the best ``k`` judged, and the
    lowest ``R`` among them and the base within the lookahead tolerance (the shipped defaults)."""
    from tokenmask.evaluate.refine import (
        GUARD_MOVES,
        LOOKAHEAD_PROTECT,
        LOOKAHEAD_TOKENS,
        LOOKAHEAD_TOLERANCE,
        move_estimates,
    )

    out = []
    for x, n in zip(docs, nlls):
        c = x["rates"][rate]
        moves = np.flatnonzero(searched(c, GUARD_MOVES, LOOKAHEAD_PROTECT))[1:]
        est = move_estimates(c["masks"][0], [c["masks"][j] for j in moves], n[f"b_{rate}"], n["e"])
        judged = [0, *moves[np.argsort(-est, kind="stable")[:k]].tolist()]
        ok = [j for j in judged if c["s"][j] <= c["s"][0] + LOOKAHEAD_TOKENS * LOOKAHEAD_TOLERANCE]
        out.append(min(ok, key=lambda j: c["r"][j]))
    return out


def proposals(paths: str, ks: str, draw: int, seed: int) -> None:
    """For each ``K`` of ``ks`` (``all``: every move): the pruned search's deltas over the base and P(all)."""
    docs: list[dict[str, Any]] = []
    nlls: list[dict[str, np.ndarray]] = []
    for path in paths.split(","):
        part = load(path)
        arrays = base_nlls(path, part)
        docs += part
        nlls += [{key: v[i] for key, v in arrays.items()} for i in range(len(part))]
    draws = document_draws(docs, draw, 4000, np.random.default_rng(seed))
    print(f"{len(docs)} documents of {paths}\n")
    print("| moves judged | P(all) | " + " | ".join(f"{r}: d rec / d ret" for r in RATES) + " |")
    print("| --- | --- |" + " --- |" * len(RATES))
    for k in ks.split(","):
        choices = {r: proposal_choice(docs, nlls, r, 10**9 if k == "all" else int(k)) for r in RATES}
        cells = ["{:+.3f} / {:+.3f}".format(*metric(docs, r, choices[r])) for r in RATES]
        print(f"| {k} | {joint_pass_probability(docs, choices, draws):.3f} | " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "report",
        choices=["oracle", "guard", "lookahead", "score", "draws", "chooser", "pointer", "proposals"],
    )
    parser.add_argument(
        "--files", default="runs/cand2_train.json,runs/cand2_validation.json", help="oracle/guard: pooled"
    )
    parser.add_argument("--train", default="runs/candidates_train.json")
    parser.add_argument("--validation", default="runs/candidates_validation.json")
    parser.add_argument("--draw", type=int, default=30, help="guard: documents per bootstrap draw")
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument(
        "--settings",
        default="o:32:0.02,os:32:0.02",
        help="score: fixed refine_lookahead settings DROPS:PROTECT:TOLERANCE, comma-separated (no choice is made here)",
    )
    parser.add_argument(
        "--drops",
        default="o",
        help="lookahead: drop-rule sets to compare, comma-separated, each by letters (o oldest, s span, t thin), e.g. o,os,ost",
    )
    parser.add_argument(
        "--below", type=float, default=-0.026, help="draws: the retention change whose rarity is counted"
    )
    parser.add_argument(
        "--protect",
        type=int,
        default=0,
        help="pointer: only refine_lookahead's moves with this protected tail",
    )
    parser.add_argument(
        "--base_nll",
        action="store_true",
        help="pointer: add per-token judge NLLs under the base prefix (two judge passes per context and rate)",
    )
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--first",
        type=int,
        default=0,
        help="score/draws: the files' first N documents only (0: all), e.g. evaluate's 30",
    )
    parser.add_argument(
        "--proposals", default="1,2,4,8,16,32,all", help="proposals: moves judged per context (K of pK)"
    )
    args = parser.parse_args(argv)
    if args.report == "proposals":
        proposals(args.files, args.proposals, args.draw, args.seed)
        return 0
    if args.report == "pointer":
        pointer(args.train, args.validation, args.epochs, args.seed, args.protect, args.base_nll)
        return 0
    if args.report == "chooser":
        chooser(args.train, args.validation, args.epochs, args.seed)
        return 0
    docs = [x for path in args.files.split(",") for x in load(path)]
    docs = docs[: args.first] if args.first > 0 else docs
    if args.report == "oracle":
        oracle(docs)
    elif args.report == "score":
        score(docs, args.settings)
    elif args.report == "draws":
        draw_report(docs, args.settings, args.draw, args.seed, args.below)
    elif args.report == "lookahead":
        lookahead(docs, args.draw, args.seed, args.top, tuple(args.drops.split(",")))
    else:
        guard(docs, args.draw, args.seed, args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
