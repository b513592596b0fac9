"""The move agent's steps under their stop-31 name: ``python benchmarks/move_agent.py STEP ...`` is
``tokenmask moves STEP ...`` (:mod:`tokenmask.train.moves`: ``table``, ``train``, ``report``; the same options),
kept so the commands of docs/results.md run as written.

    python benchmarks/move_agent.py table --split validation --out runs/moves/validation.npz --device cuda
"""

from __future__ import annotations

import sys

from tokenmask.cli import main

if __name__ == "__main__":
    sys.exit(main(["moves", *sys.argv[1:]]))
