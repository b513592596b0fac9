"""Redraw the Pareto plot of a saved ``tokenmask evaluate`` result (the README's docs/pareto.png).

Reads the ``results.json`` (or the folder holding it) and writes the same figure as the
``pareto.png`` of ``tokenmask evaluate``: one panel per asked rate, recoverability (x) against
retention (y), one labelled point per method, truncation's point a star and the region that
dominates it by issue 12's bar (recoverability +0.02, retention -0.01) shaded, and, for files with
per-document NLLs, each method's 90 % paired bootstrap interval of its change over truncation as error
bars. Written atomically.

    python benchmarks/pareto_plot.py runs/eval_test/results.json docs/pareto.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tokenmask.evaluate.reports import RESULTS_FILE, load_results, plot_pareto
from tokenmask.io import atomic_write_bytes


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, draw, write; returns the exit status."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results_json", help="results.json of tokenmask evaluate, or its output folder")
    parser.add_argument("out_png", help="the PNG to write (replaced atomically)")
    args = parser.parse_args(argv)
    rows = load_results(args.results_json)  # checks the file: a clear error when missing or damaged
    source = Path(args.results_json)
    data = json.loads((source / RESULTS_FILE if source.is_dir() else source).read_text(encoding="utf-8"))
    setting = data.get("setting") if isinstance(data.get("setting"), dict) else None
    # per-document reference NLLs (newer files): the plot adds each method's interval bars
    reference = data.get("reference") if isinstance(data.get("reference"), dict) else None
    path = atomic_write_bytes(args.out_png, plot_pareto(rows, setting, reference))
    print(f"wrote {path} ({len(rows)} rows)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
