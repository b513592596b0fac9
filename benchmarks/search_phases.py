"""Where a judge search's compression time goes: ``refine_lookahead:p`` and ``move_agent`` phase by phase.

Times one method's ``keep_masks`` on the first ``--documents`` long-enough documents of a split (all at once, as
``tokenmask evaluate`` calls it), warm (one untimed call first), per asked rate, and splits the wall time into the
search's phases: the judge's greedy lookahead path (``paths``), the two passes of the move estimates
(``estimates``), the candidates' ``R`` (``recovery``), their lookahead ``S`` (``lookahead``, the full-vocabulary
pass) and the rest (proposals, features, the policy's choice). The device is synchronised around each phase; the
first column is the same call timed before any phase is (what ``tokenmask evaluate`` sees). Prints one table, ms per
1,000 context tokens, with the machine named.

    python benchmarks/search_phases.py --method move_agent:default:bf16:truncation --device cuda
    python benchmarks/search_phases.py --method refine_lookahead:p:truncation --documents 4 --rates 0.5   # CPU
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch

from tokenmask.timing import timed_call

PHASES = ("paths", "estimates", "recovery", "lookahead")


def timed(
    table: dict[str, float], name: str, fn: Callable[..., Any], device: torch.device
) -> Callable[..., Any]:
    """``fn`` that adds its synchronised wall time (seconds) to ``table[name]``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        out, seconds = timed_call(device, fn, *args, **kwargs)
        table[name] = table.get(name, 0.0) + seconds
        return out

    return wrapper


def main(argv: list[str] | None = None) -> int:
    import tokenmask.reconstructors.judge as judge_module
    from tokenmask.data import iter_texts
    from tokenmask.evaluate.compressor import MethodContext, build_method
    from tokenmask.evaluate.metrics import select_documents
    from tokenmask.evaluate.refine import RecoverabilitySearch
    from tokenmask.evaluate.reports import device_description
    from tokenmask.reconstructors import Reconstructor

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="move_agent:default:bf16:truncation")
    parser.add_argument("--corpus", default="data_out/pydocs")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--documents", type=int, default=30)
    parser.add_argument("--rates", default="0.3,0.5,0.7")
    parser.add_argument("--batch_size", type=int, default=None, help="judge sequences per forward pass")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    judge = Reconstructor.load(
        "default", device=args.device, add_mask_token=False, batch_size=args.batch_size
    )
    docs = select_documents(list(iter_texts(args.corpus, split=args.split)), judge, 256, 64, args.documents)
    contexts = [list(d.context) for d in docs]
    method = build_method(args.method, MethodContext(judge=judge, device=args.device))
    if not isinstance(method, RecoverabilitySearch):
        raise SystemExit(
            f"--method must be a judge search (refine_lookahead:p or move_agent), got {args.method}"
        )
    device = torch.device(judge.device)
    rates = [float(r) for r in args.rates.split(",")]
    method.keep_masks(contexts[:2], rates[0])  # warm: CUDA graphs, kernels, caches
    plain = {
        rate: _timed_call(method, contexts, rate, device) for rate in rates
    }  # before any phase is synchronised
    spent: dict[str, float] = {}
    method._paths = timed(spent, "paths", method._paths, device)  # type: ignore[method-assign]
    method._token_nlls = timed(spent, "estimates", method._token_nlls, device)  # type: ignore[method-assign]
    for name, attr in (
        ("recovery", "recovery_and_continuation_nlls"),
        ("lookahead", "soft_continuation_nlls"),
    ):
        setattr(judge_module, attr, timed(spent, name, getattr(judge_module, attr), device))
    tokens = sum(len(c) for c in contexts)
    print(
        f"{args.method} on {len(contexts)} documents of {args.corpus} ({args.split}), {device_description(judge.device)}, "
        f"judge batch {judge.batch_size}; ms per 1k context tokens\n"
    )
    print(
        "| rate | total, unsynchronised | total | "
        + " | ".join(PHASES)
        + " | rest |\n| --- |"
        + " --- |" * (len(PHASES) + 3)
    )
    for rate in rates:
        spent.clear()
        total = _timed_call(method, contexts, rate, device)
        cells = [spent.get(p, 0.0) for p in PHASES]
        row = [plain[rate], total, *cells, total - sum(cells)]
        print(f"| {rate} | " + " | ".join(f"{1e6 * v / tokens:.1f}" for v in row) + " |")
    return 0


def _timed_call(method: Any, contexts: list[list[int]], rate: float, device: torch.device) -> float:
    """Seconds of one synchronised ``keep_masks`` call on every context."""
    return timed_call(device, method.keep_masks, contexts, rate)[1]


if __name__ == "__main__":
    raise SystemExit(main())
