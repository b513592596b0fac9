"""``tokenmask evaluate`` and ``tokenmask baselines``: methods x rates on a corpus, with reports.

``tokenmask evaluate --corpus data/pydocs.jsonl --methods truncation,random,agent:runs/x
--rates 0.3,0.5,0.7`` selects the first ``num_documents`` documents with at least C+T judge
tokens, scores every method at every rate with the metrics of docs/evaluation.md, and writes into
``output_dir``: ``results.json``, ``results.md``, ``rate_vs_recoverability.png``,
``rate_vs_retention.png``, ``pareto.png`` (recoverability vs retention, one panel per rate, the
region that dominates truncation shaded; a second row zooms on truncation's neighbourhood) and ``tensorboard/<method>/`` (one run per method;
step = rate in %).
``tokenmask baselines`` is the same command with the baselines as default methods.

Everything that can be checked without a model is checked first: the output folder (a non-empty
folder tokenmask did not write is refused unless ``--overwrite``; it stays locked for the run),
the method names and their arguments (an ``agent:`` run folder must hold an agent: the agent
plug-in's own check, :func:`tokenmask.train.check_agent_argument`), the corpus;
then the judge loads. Heavy modules load only then, so argument errors answer at once.

At the end the command prints the table once, each method's change over truncation with paired
bootstrap intervals and the bar's verdict (:mod:`tokenmask.evaluate.bar`, drawing whole sources by default:
``--bootstrap_unit``; also in ``results.md``), what
the columns mean (:data:`COLUMNS_EXPLAINED`), which methods are on the Pareto front
(:func:`pareto_verdict`) and which are worth shipping by docs/evaluation.md (:func:`shipping_verdict`). ``results.json`` keeps every method's per-document NLLs and the reference
NLLs, so :func:`tokenmask.evaluate.bar.bar_from_file` recomputes the intervals from it.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenmask.config import add_config_arguments, config_from_args
from tokenmask.errors import ConfigError, InputError
from tokenmask.evaluate.bar import check_unit
from tokenmask.evaluate.baselines import BASELINE_ARGUMENT_CHECKS, BASELINE_METHODS
from tokenmask.evaluate.compressor import (
    Method,
    MethodContext,
    build_method,
    check_rate,
    method_factory,
    parse_method_names,
    resolve_timing_repeats,
    resolve_warmup,
    split_method_name,
)
from tokenmask.io import atomic_output_dir

if TYPE_CHECKING:
    from tokenmask.evaluate.bar import BarRow
    from tokenmask.evaluate.reports import EvaluationReport, MethodResult

DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")

#: methods run when none is named: every baseline (LLMLingua skipped when its package is missing)
DEFAULT_METHODS: list[str] = list(BASELINE_METHODS)


@dataclass
class EvaluateConfig:
    """Options of ``tokenmask evaluate`` (any key can be set in a JSON config or on the CLI)."""

    methods: list[str] = field(
        default_factory=lambda: list(DEFAULT_METHODS),
        metadata={"help": "comma-separated method names: baselines, agent:RUN_DIR, activation:CONFIG, ..."},
    )
    rates: list[float] = field(
        default_factory=lambda: [0.3, 0.5, 0.7], metadata={"help": "requested rates in [0, 1)"}
    )
    corpus: str = field(
        default="sample", metadata={"help": "prepared folder, .jsonl/.txt file or folder, or 'sample'"}
    )
    split: str = field(default="test", metadata={"help": "split of a prepared corpus folder"})
    text_column: str = field(default="text", metadata={"help": "JSONL key holding the text"})
    frequency_corpus: str | None = field(
        default=None,
        metadata={
            "help": "texts the frequency baseline counts (default: the prepared corpus' train split, or the corpus file)"
        },
    )
    judge: str = field(
        default="default", metadata={"help": "judge model name (default: embedded SmolLM2-135M-Instruct)"}
    )
    context_tokens: int = field(default=256, metadata={"help": "C: context tokens per document"})
    continuation_tokens: int = field(default=64, metadata={"help": "T: continuation tokens per document"})
    num_documents: int = field(
        default=60, metadata={"help": "first N long-enough documents (rate, retention, recon_*)"}
    )
    recoverability_documents: int | None = field(
        default=30,
        metadata={"help": "recoverability on the first N of them (docs/evaluation.md: 30; None = all)"},
    )
    seed: int = field(default=0, metadata={"help": "seed passed to every method"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, mps"})
    dtype: str = field(
        default="float32", metadata={"help": "judge dtype (docs/evaluation.md scores in float32)"}
    )
    batch_size: int | None = field(default=None, metadata={"help": "judge sequences per forward pass"})
    recon_metrics: bool = field(default=True, metadata={"help": "compute recon_bits_per_masked / recon_top1"})
    warmup: str = field(
        default="auto",
        metadata={
            "help": "untimed call before each timed one: one (the first document), all (every document: a batched "
            "method's shapes are warm too; twice the compression time), none, or auto (all on a GPU, one elsewhere)"
        },
    )
    timing_repeats: int | str = field(
        default="auto",
        metadata={
            "help": "timed calls per method and rate, the median reported: an integer >= 1, or auto (3 on a GPU, "
            "where one call's time moved by about 40 % between identical runs; 1 elsewhere)"
        },
    )
    bootstrap_unit: str = field(
        default="source",
        metadata={
            "help": "what the bar's bootstrap draws: source (a source's documents together, as documents cut from one "
            "page are not independent) or document"
        },
    )
    skip_unavailable: bool = field(
        default=True,
        metadata={
            "help": "skip a method whose optional package is missing (e.g. llmlingua) instead of failing"
        },
    )
    tensorboard: bool = field(default=True, metadata={"help": "write one TensorBoard run per method"})
    output_dir: str = field(
        default="runs/evaluate",
        metadata={
            "help": "where results are written (replaced atomically if tokenmask wrote it; see --overwrite)"
        },
    )

    def __post_init__(self) -> None:
        self.methods = parse_method_names(self.methods)
        if not self.rates:
            raise ConfigError("No rate given. Fix: e.g. --rates 0.3,0.5,0.7.", key="rates")
        self.rates = [check_rate(r) for r in self.rates]
        if self.num_documents < 1:
            raise ConfigError(f"num_documents must be >= 1, got {self.num_documents}.", key="num_documents")
        if self.recoverability_documents is not None and self.recoverability_documents < 1:
            raise ConfigError(
                f"recoverability_documents must be >= 1 (or None), got {self.recoverability_documents}.",
                key="recoverability_documents",
            )
        if self.context_tokens < 1 or self.continuation_tokens < 1:
            raise ConfigError(
                f"context_tokens and continuation_tokens must be >= 1, got {self.context_tokens}, {self.continuation_tokens}.",
                key="context_tokens",
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1 (or None), got {self.batch_size}.", key="batch_size")
        if self.dtype not in DTYPES:
            raise ConfigError(
                f"Unknown dtype {self.dtype!r}.", fix=f"use one of {', '.join(DTYPES)}.", key="dtype"
            )
        try:
            check_unit(self.bootstrap_unit)
        except ValueError as exc:
            raise ConfigError(str(exc), key="bootstrap_unit") from exc
        # the Evaluator's own resolvers check these values (the device only picks what "auto" means)
        for key, resolve in (("warmup", resolve_warmup), ("timing_repeats", resolve_timing_repeats)):
            try:
                resolve(getattr(self, key), "cpu")
            except ValueError as exc:
                raise ConfigError(str(exc), key=key) from exc


def _check_agent_argument(argument: str) -> None:
    # the agent plug-in's own check; tokenmask.train is light to import (its policy and SB3 load with the agent)
    from tokenmask.train import check_agent_argument

    check_agent_argument(argument)


def _check_kvpress_argument(argument: str) -> None:
    # the kvpress plug-in's own check: a known press, and kvpress installed (kvpress itself is not imported)
    from tokenmask.evaluate.kvpress_peer import check_kvpress_argument

    check_kvpress_argument(argument)


def _check_refine_argument(argument: str) -> None:
    # refine:BASE: the base method is checked as it would be on its own
    from tokenmask.evaluate.refine_methods import check_refine_argument

    check_refine_argument(argument)
    check_methods([argument])


def _check_refine_guard_argument(argument: str) -> None:
    # refine_guard:[K@TOL:]BASE: the guard parses, the base is checked as refine's
    from tokenmask.evaluate.refine_methods import check_guard_argument, split_guard_argument

    check_guard_argument(argument)
    check_methods([split_guard_argument(argument)[2]])


def _check_refine_lookahead_argument(argument: str) -> None:
    # refine_lookahead:[DROPS:][rN:][pK:][lN:][bf16:]BASE: the drop rules, rounds, proposals and lookahead parse, the base is checked as refine's
    from tokenmask.evaluate.refine_methods import check_drops_argument, split_lookahead_argument

    check_drops_argument(argument)
    check_methods([split_lookahead_argument(argument).base])


def _check_move_agent_argument(argument: str) -> None:
    # move_agent:POLICY[:bf16]:BASE: the policy file is a zip archive, the base is checked as refine's
    from tokenmask.evaluate.move_agent import check_move_agent_argument, split_move_agent_argument

    check_move_agent_argument(argument)
    check_methods([split_move_agent_argument(argument)[2]])


def _check_path_argument(prefix: str, what: str) -> Callable[[str], None]:
    def check(argument: str) -> None:
        if argument and argument != "sample" and not Path(argument).exists():
            raise InputError(
                f"{prefix}:{argument}: no such file or folder.", fix=f"name {what}.", path=argument
            )

    return check


#: Checks of a method's argument that need no model, by prefix; run before the judge loads.
ARGUMENT_CHECKS: dict[str, Callable[[str], None]] = {
    **BASELINE_ARGUMENT_CHECKS,
    "agent": _check_agent_argument,
    "activation": _check_path_argument(
        "activation", "a folder saved by `tokenmask activation train` or a JSON compression config"
    ),
    "kvpress": _check_kvpress_argument,
    "refine": _check_refine_argument,
    "refine_guard": _check_refine_guard_argument,
    "refine_lookahead": _check_refine_lookahead_argument,
    "move_agent": _check_move_agent_argument,
}


def check_methods(names: Sequence[str]) -> None:
    """Fail on a misspelt method or an argument that cannot work, before any model is loaded.

    :raises ValueError: unknown method (naming the known ones) or a bad argument (naming the fix).
    """
    for name in names:
        prefix, argument = split_method_name(name)
        check = ARGUMENT_CHECKS.get(prefix)
        if check is not None:
            check(argument)
        method_factory(name)


def _corpus_texts(config: EvaluateConfig) -> tuple[list[str], list[str], list[str]]:
    """(evaluation texts, their sources, frequency-baseline texts) of the configured corpus."""
    from tokenmask.data import is_prepared_corpus, iter_records, iter_texts

    records = iter_records(config.corpus, split=config.split, text_column=config.text_column)
    texts, sources = [r["text"] for r in records], [r["source"] for r in records]
    if config.frequency_corpus is not None:
        train = list(iter_texts(config.frequency_corpus, split="train", text_column=config.text_column))
    elif is_prepared_corpus(config.corpus):
        train = list(iter_texts(config.corpus, split="train"))
    else:
        train = texts
    return texts, sources, train


def run_evaluation(config: EvaluateConfig, progress: bool = True) -> EvaluationReport:
    """Score every method at every rate; nothing is written (see :func:`evaluate_and_write`).

    :raises ValueError: unknown method or bad method argument (both before any model loads), bad
        rate, corpus without a long-enough document.
    """
    check_methods(config.methods)
    texts, sources, train_texts = _corpus_texts(config)
    # the heavy modules (torch, transformers) load only once the cheap checks passed
    from tqdm.auto import tqdm

    from tokenmask.data import is_prepared_corpus
    from tokenmask.evaluate.evaluator import Evaluator
    from tokenmask.evaluate.metrics import select_documents
    from tokenmask.evaluate.reports import EvaluationReport, MethodResult, device_description
    from tokenmask.reconstructors import Reconstructor

    say = _progress_line if progress else (lambda _: None)
    say(f"loading the judge {config.judge!r} ...")
    judge = Reconstructor.load(
        config.judge,
        device=config.device,
        dtype=config.dtype,
        add_mask_token=False,
        batch_size=config.batch_size,
    )
    docs = select_documents(
        texts, judge, config.context_tokens, config.continuation_tokens, config.num_documents, sources=sources
    )
    context = MethodContext(judge=judge, seed=config.seed, device=config.device, train_texts=train_texts)
    methods: dict[str, Method] = {}
    skipped: dict[str, str] = {}
    for name in config.methods:
        say(f"building {name} ...")
        try:
            methods[name] = build_method(name, context)
        except ImportError as exc:
            if not config.skip_unavailable:
                raise
            skipped[name] = str(exc)
    if not methods:
        raise InputError(
            f"No method could be built (skipped: {skipped}).",
            fix="install the missing package, or name other methods.",
        )
    say(f"the judge reads the {len(docs)} documents with their full and empty contexts (the references) ...")
    evaluator = Evaluator(
        judge,
        docs,
        recon_metrics=config.recon_metrics,
        warmup=config.warmup,
        recover_documents=config.recoverability_documents,
        timing_repeats=config.timing_repeats,
    )
    results: list[MethodResult] = []
    jobs = [(name, rate) for name in methods for rate in config.rates]
    bar = tqdm(jobs, desc="evaluate", unit="run", disable=not progress)
    for name, rate in bar:
        bar.set_postfix_str(f"{name} @ {rate:.2f}")
        evaluation = evaluator.compress_and_score(methods[name], rate, seed=config.seed)
        sample = evaluation.outputs[0].text if evaluation.outputs else ""
        results.append(MethodResult(method=name, scores=evaluation.scores, sample=sample))
    setting = {
        "judge": config.judge,
        "corpus": config.corpus,
        "split": config.split if is_prepared_corpus(config.corpus) else None,
        "documents": len(docs),
        "recoverability_documents": evaluator.reference.recover_documents,
        "context_tokens": config.context_tokens,
        "continuation_tokens": config.continuation_tokens,
        "seed": config.seed,
        "device": device_description(judge.device),
        "sources": [d.source for d in docs],
        "config": asdict(config),
    }
    from tokenmask.evaluate.bar import REFERENCE_KEYS

    reference = {key: [float(x) for x in getattr(evaluator.reference, key)] for key in REFERENCE_KEYS}
    return EvaluationReport(results=results, setting=setting, skipped=skipped, reference=reference)


def _progress_line(message: str) -> None:
    print(f"tokenmask evaluate: {message}", file=sys.stderr, flush=True)


def evaluate_and_write(
    config: EvaluateConfig, progress: bool = True, overwrite: bool = False
) -> EvaluationReport:
    """:func:`run_evaluation`, then write every report into ``config.output_dir`` (replaced atomically).

    The output folder is checked and locked before the evaluation starts (see
    :func:`tokenmask.io.atomic_output_dir`): a folder tokenmask did not write is refused unless
    ``overwrite``, and a second process writing the same folder fails at once.

    :raises OutputExistsError: when ``output_dir`` may not be replaced or is being written.
    """
    with atomic_output_dir(config.output_dir, overwrite, kind="evaluate") as folder:
        report = run_evaluation(config, progress=progress)
        from tokenmask.evaluate.reports import write_report

        write_report(report, folder, tensorboard=config.tensorboard)
    return report


# ---------------------------------------------------------------------------------------- verdict
COLUMNS_EXPLAINED = (
    "Columns: *asked rate* is the fraction of context tokens each method was told to remove and *achieved rate* "
    "the fraction it removed, counted on its output re-tokenized by the judge; *recoverability* is how much of "
    "the context's information the judge still finds in the compressed text (1 = as good as the full context, "
    "0 = as useless as nothing; keeping the last half scores about 0.5) and *retention* how much of the full "
    "context's help in predicting the next tokens the compressed text keeps (truncation, which keeps the most "
    "recent tokens, scores high here); *recon bits/masked* and *recon top-1* are the reconstructor's cost in bits "
    "of a removed token and how often its first guess is right (masking methods only); *ms per 1k tokens* is the "
    "compressor's own wall time per 1,000 context tokens on the device named above (the median of the run's timed "
    "calls: `timing_repeats`)."
)
"""The paragraph ``tokenmask evaluate`` prints under its table (the metrics are defined in docs/evaluation.md)."""

RATE_SLACK = 0.01
"""A method whose achieved rate is within this of another's counts as compressing as much (docs/evaluation.md's rate tolerance)."""


def _values(row: MethodResult | Mapping[str, Any], keys: Sequence[str]) -> tuple[str, list[float]]:
    # (method, the named score fields as floats, nan where missing) of a result or a results.json row
    if isinstance(row, Mapping):
        method, values = str(row.get("method")), [row.get(k) for k in keys]
    else:
        method, values = row.method, [getattr(row.scores, k) for k in keys]
    return method, [math.nan if v is None else float(v) for v in values]


def _point(row: MethodResult | Mapping[str, Any]) -> tuple[str, float, float, float, float]:
    # (method, requested rate, achieved rate, recoverability, retention) of a result or a results.json row
    method, (asked, rate, rec, ret) = _values(row, ("requested_rate", "rate", "recoverability", "retention"))
    return method, asked, rate, rec, ret


def pareto_front(results: Sequence[MethodResult | Mapping[str, Any]]) -> dict[float, list[str]]:
    """Per asked rate, the methods no other method dominates, in the order of ``results``.

    Method A dominates B when it removes at least as much (achieved rate no more than
    :data:`RATE_SLACK` below B's), and has recoverability and retention at least B's, one of the
    three strictly better. Rows without recoverability or retention (``nan`` / ``null``) take no part.

    :param results: :class:`~tokenmask.evaluate.reports.MethodResult` objects, or the ``"results"``
        rows of a ``results.json``.
    """
    by_rate: dict[float, list[tuple[str, float, float, float]]] = {}
    for row in results:
        method, asked, rate, rec, ret = _point(row)
        if all(math.isfinite(v) for v in (asked, rate, rec, ret)):
            by_rate.setdefault(round(asked, 6), []).append((method, rate, rec, ret))
    front: dict[float, list[str]] = {}
    for asked, points in by_rate.items():

        def dominated(
            p: tuple[str, float, float, float], points: list[tuple[str, float, float, float]] = points
        ) -> bool:
            return any(
                q[1] >= p[1] - RATE_SLACK
                and q[2] >= p[2]
                and q[3] >= p[3]
                and (q[1] > p[1] + RATE_SLACK or q[2] > p[2] or q[3] > p[3])
                for q in points
                if q is not p
            )

        front[asked] = [p[0] for p in points if not dominated(p)]
    return front


def pareto_verdict(results: Sequence[MethodResult | Mapping[str, Any]]) -> str:
    """One sentence naming, per asked rate, the methods on the Pareto front (see :func:`pareto_front`).

    :param results: :class:`~tokenmask.evaluate.reports.MethodResult` objects, or the ``"results"``
        rows of a ``results.json``.
    """
    front = pareto_front(results)
    if not front:
        return "No method has both recoverability and retention, so no Pareto front can be drawn."
    all_methods = {_point(row)[0] for row in results}
    parts = []
    for asked, methods in sorted(front.items()):
        dominated = sorted(all_methods - set(methods))
        clause = f"at rate {asked:.2f}: {', '.join(methods)}"
        parts.append(clause + (f" (off the front, dominated: {', '.join(dominated)})" if dominated else ""))
    return (
        "On the Pareto front of achieved rate, recoverability and retention (no other method removes as much "
        f"with both scores at least as high) {'; '.join(parts)}."
    )


PEER = "llmlingua"
"""The method a compressor must be faster than, on the same machine, to be worth shipping (docs/evaluation.md)."""


def shipping_verdict(results: Sequence[MethodResult | Mapping[str, Any]], bars: Sequence[BarRow]) -> str:
    """One sentence: which methods are *worth shipping* by docs/evaluation.md, at which asked rates.

    A method is, at an asked rate, when it meets the bar against truncation (the bar row's ``meets``:
    recoverability and retention margins, rate error), is on the Pareto front (:func:`pareto_front`),
    and compresses faster than LLMLingua in the same run (``compress_ms_per_1k_tokens``). Without an
    LLMLingua row at that rate the speed clause is not judged and the sentence says so. Methods without
    a bar row (truncation itself, rows without per-document NLLs) take no part.

    :param results: :class:`~tokenmask.evaluate.reports.MethodResult` objects, or the ``"results"`` rows of a
        ``results.json``.
    :param bars: :func:`~tokenmask.evaluate.bar.bar_rows` of the same results.
    """
    if not bars:
        return "No method has per-document scores beside truncation, so none can be judged worth shipping."
    front = pareto_front(results)
    speed: dict[tuple[str, float], float] = {}
    for row in results:
        method, (asked, ms) = _values(row, ("requested_rate", "compress_ms_per_1k_tokens"))
        if math.isfinite(asked) and math.isfinite(ms):
            speed[(method, round(asked, 6))] = ms
    peers = {asked: ms for (method, asked), ms in speed.items() if split_method_name(method)[0] == PEER}
    worth: dict[str, list[str]] = {}
    short: dict[str, list[str]] = {}
    unjudged = False
    for bar in bars:
        if split_method_name(bar.method)[0] == PEER:
            continue
        asked = round(bar.requested_rate, 6)
        reasons = [] if bar.meets else ["below the bar"]
        if bar.method not in front.get(asked, []):
            reasons.append("dominated")
        mine, peer = speed.get((bar.method, asked)), peers.get(asked)
        if peer is None:
            unjudged = True
        elif mine is None or mine >= peer:
            reasons.append(f"not faster than LLMLingua ({_ms(mine)} vs {_ms(peer)} ms per 1k tokens)")
        if reasons:
            short.setdefault(bar.method, []).append(f"{bar.requested_rate:.2f}: {', '.join(reasons)}")
        else:
            aside = " (speed not judged)" if peer is None else ""
            worth.setdefault(bar.method, []).append(f"{bar.requested_rate:.2f}{aside}")
    clauses = "meets the bar, on the Pareto front, faster than LLMLingua in this run"
    if unjudged:
        clauses += (
            "; speed is not judged at rates the run has no LLMLingua row for: add llmlingua to the methods"
        )
    named = "; ".join(f"{m} at {', '.join(r)}" for m, r in worth.items()) or "none"
    text = f"Worth shipping by docs/evaluation.md ({clauses}): {named}."
    if short:
        text += " Short of it: " + "; ".join(f"{m} ({'; '.join(r)})" for m, r in short.items()) + "."
    return text


def closing_lines(report: EvaluationReport) -> str:
    """The report's verdicts, one per line: :func:`pareto_verdict`, then :func:`shipping_verdict` (printed by
    ``tokenmask evaluate`` and written at the end of ``results.md``)."""
    from tokenmask.evaluate.bar import report_bar_rows

    return f"{pareto_verdict(report.results)}\n\n{shipping_verdict(report.results, report_bar_rows(report))}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


# ---------------------------------------------------------------------------------------- CLI
def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``tokenmask evaluate`` and ``tokenmask baselines``."""
    for command, help_text in (
        (
            "evaluate",
            "score compressors (baselines, agent:RUN, activation:CFG) with the metrics of docs/evaluation.md",
        ),
        ("baselines", "tokenmask evaluate with the baselines as the default methods"),
    ):
        parser = subparsers.add_parser(
            command, help=help_text, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        add_config_arguments(parser, EvaluateConfig)
        parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
        parser.add_argument(
            "--overwrite",
            action="store_true",
            help="replace output_dir even if tokenmask did not write it (its files are deleted)",
        )
        parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    config = config_from_args(EvaluateConfig, args)
    if args.command == "baselines":
        others = [n for n in config.methods if split_method_name(n)[0] not in BASELINE_METHODS]
        if others:
            raise ConfigError(
                f"tokenmask baselines runs baselines only, not {others}. Fix: use tokenmask evaluate.",
                key="methods",
            )
    report = evaluate_and_write(config, progress=not args.no_progress, overwrite=args.overwrite)
    from tokenmask.evaluate.reports import markdown_table  # loads torch, so not before the checks

    print(markdown_table(report))
    print(COLUMNS_EXPLAINED)
    print()
    print(closing_lines(report))
    print(f"results written to {config.output_dir}")
    return 0
