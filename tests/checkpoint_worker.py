"""The child side of ``tests/test_checkpoints.py``: a tiny training run in a process the test signals or kills.

The test's fork server imports this module once, before it forks the children, so the imports and
the SmolLM2 tokenizer (parsed from the embedded GGUF: the slow part of a tiny run's start) are paid
once, not at every restart.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tokenmask.config import build_config  # noqa: E402
from tokenmask.reconstructors import DEFAULT_MODEL, load_tokenizer  # noqa: E402
from tokenmask.train import run_folder  # noqa: E402
from tokenmask.train.config import TrainConfig  # noqa: E402
from tokenmask.train.loading import load_run_config  # noqa: E402
from tokenmask.train.trainer import Trainer, exit_code  # noqa: E402

load_tokenizer(DEFAULT_MODEL)  # no torch work here: a forked child must not inherit torch's thread pools


def train(values: dict[str, Any], resume: bool, pause_in_save: float = 0.0) -> None:
    """Train (or resume) the run of ``values``, then exit with :func:`~tokenmask.train.trainer.exit_code`.

    :param values: the config's keys (``run_dir`` included); on a resume, the keys given override
        the saved config, as ``tokenmask train --resume RUN_DIR --key value`` does.
    :param pause_in_save: seconds to sleep inside every checkpoint write, just before its manifest,
        so that a kill at a random moment often lands in the middle of a checkpoint.
    """
    if pause_in_save:
        write_manifest = run_folder.write_manifest

        def slow_manifest(folder: Any, step: int) -> Any:
            time.sleep(pause_in_save)
            return write_manifest(folder, step)

        run_folder.write_manifest = slow_manifest  # type: ignore[assignment]
    if resume:
        config, _ = load_run_config(values["run_dir"], {k: v for k, v in values.items() if k != "run_dir"})
    else:
        config = build_config(TrainConfig, values)
    status = Trainer(config, resume=resume).train()
    sys.stdout.flush()
    sys.exit(exit_code(status))
