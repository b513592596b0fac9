"""Redraw the Pareto plot of a saved ``tokenmask evaluate`` result (the README's docs/pareto.png).

Reads the ``results.json`` (or the folder holding it) and writes the same figure as the
``pareto.png`` of ``tokenmask evaluate``: one panel per asked rate, recoverability (x) against
retention (y), one labelled point per method, truncation's point a star and the region that
dominates it by issue 12's bar (recoverability +0.02, retention -0.01) shaded, and, for files with
per-document NLLs, each method's 90 % paired bootstrap interval of its change over truncation as error
bars. Written atomically.

    python benchmarks/pareto_plot.py runs/eval_test/results.json docs/pareto.png
    python benchmarks/pareto_plot.py runs/django_gpu/d120_0.3 runs/django_gpu/d120_0.5 runs/django_gpu/d120_0.7 \\
        docs/pareto_djangodocs.png   # one figure from one run per rate
"""

from __future__ import annotations

import argparse
import sys

from tokenmask.evaluate.reports import load_results_file, plot_pareto
from tokenmask.io import atomic_write_bytes


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, draw, write; returns the exit status."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "results_json",
        nargs="+",
        help="results.json of tokenmask evaluate, or its output folder; several (e.g. one run per rate on the "
        "same documents) are drawn as one figure",
    )
    parser.add_argument("out_png", help="the PNG to write (replaced atomically)")
    args = parser.parse_args(argv)
    rows: list[dict] = []
    setting = reference = None
    for i, name in enumerate(args.results_json):
        data = load_results_file(name)  # checks the file: a clear error when missing or damaged
        rows += data["results"]
        # per-document reference NLLs (newer files): the plot adds each method's interval bars
        ref = data.get("reference") if isinstance(data.get("reference"), dict) else None
        if i == 0:
            setting = data.get("setting") if isinstance(data.get("setting"), dict) else None
            reference = ref
        elif ref != reference:
            raise SystemExit(
                f"{name} scored other documents than {args.results_json[0]} (their reference NLLs differ). "
                "Fix: draw runs of one corpus, split, seed and document count together."
            )
    path = atomic_write_bytes(args.out_png, plot_pareto(rows, setting, reference))
    print(f"wrote {path} ({len(rows)} rows)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
