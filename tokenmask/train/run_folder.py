"""The run folder of ``tokenmask train``: everything needed to resume a run or use its agent.

Layout::

    RUN_DIR/.tokenmask                    marker: a folder ``tokenmask train`` writes (see :mod:`tokenmask.io`)
    RUN_DIR/config.json                   the resolved TrainConfig of the latest start (each checkpoint keeps its own)
    RUN_DIR/checkpoints/step-000012288/   one checkpoint (the step zero-padded, so names sort by step):
        agent.zip                         the SB3 model: policy weights, optimizer state, hyper-parameters, timesteps
        state.json                        status and step counters (timesteps, fine-tuning rounds, pretraining)
        config.json                       the resolved config it was trained with
        rng.json                          RNG states: python, numpy, torch (and CUDA), the fine-tuning sampler,
                                          and each sub-env's episode draws (``env``): a resumed run replays
                                          the episodes in flight from their start, then the same episodes
                                          (documents, target rates) as the uninterrupted run
        reconstructor/                    the fine-tuned reconstructor (joint training only)
        checkpoint.json                   the manifest, written last: the step, every file's size and sha256
    RUN_DIR/evaluation.json               the last evaluation of the agent and the baselines (when run)
    RUN_DIR/tb/                           TensorBoard logs: agent_1/, baseline_<name>/, pretrain/

A checkpoint is written whole into a temporary sibling (``checkpoints/.step-*.tmp-*``) and renamed
into place, so a killed run leaves at most that sibling (removed by the next start) and never a
half-written checkpoint; a ``step-*`` folder is complete iff it holds its manifest. The newest
complete checkpoint (by step) is the run's current state, and only the last ``keep`` are kept. A
second checkpoint of the same step (the final save right after a periodic one) gets the name
``step-N.1`` and replaces the first.

The flat layout of earlier versions (``agent.zip``, ``state.json`` and ``reconstructor/`` at the
root; also that of an exported agent: ``config.json`` and ``agent.zip``) is read when the folder
holds no checkpoint; a resumed flat run writes checkpoints from then on.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import re
import secrets
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tokenmask.errors import CorruptFileError
from tokenmask.io import (
    MARKER_FILE,
    atomic_write_json,
    atomic_write_model,
    claimed_output_dir,
    clean_leftovers,
    output_lock,
    read_folder_meta,
    temporary_dir_beside,
    write_marker,
)

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

    from tokenmask.reconstructors import Reconstructor
    from tokenmask.train.config import TrainConfig

CONFIG_FILE = "config.json"
AGENT_FILE = "agent.zip"
RECONSTRUCTOR_DIR = "reconstructor"
STATE_FILE = "state.json"
RNG_FILE = "rng.json"
MANIFEST_FILE = "checkpoint.json"
EVALUATION_FILE = "evaluation.json"
TENSORBOARD_DIR = "tb"
CHECKPOINTS_DIR = "checkpoints"
RUN_KIND = "train"
"""The kind recorded in a run folder's marker (``tokenmask evaluate`` and others refuse to replace it)."""

_CHECKPOINT_NAME = re.compile(r"^step-(?P<step>\d+)(?:\.(?P<serial>\d+))?$")
_CHECKPOINT_TEMP = re.compile(r"^\.(?P<name>step-\d+(?:\.\d+)?)\.(?:tmp|old)-")
_RETIRED = ".retired-"
_FLAT_FILES = (AGENT_FILE, STATE_FILE, CONFIG_FILE, EVALUATION_FILE, RECONSTRUCTOR_DIR)
_AGENT_MEMBERS = ("data", "policy.pth")


class RunFolderError(CorruptFileError):
    """A folder that is not a complete, readable run folder: no config, no agent, a damaged checkpoint."""


def checkpoint_name(step: int, serial: int = 0) -> str:
    """``step-000012288`` (``step-000012288.1`` for a second checkpoint of the same step)."""
    return f"step-{step:09d}" + (f".{serial}" if serial else "")


# ---------------------------------------------------------------------------------------- the agent file
def check_agent_file(path: str | os.PathLike[str], fix: str) -> Path:
    """Check that an SB3 ``agent.zip`` can be read back: a zip whose members pass their checksums,
    whose ``data`` is JSON and whose ``*.pth`` weights load.

    Costs one extra read of the weights (a few MB), so a damaged file is named before anything
    else loads instead of failing deep inside SB3 or torch.

    :param fix: what the user should do instead (ends the message, after ``Fix:``).
    :return: the path.
    :raises RunFolderError: naming the file (and the damaged member inside it).
    """
    path = Path(path)
    if not path.is_file():
        raise RunFolderError(f"{path} is missing. Fix: {fix}", path=path)

    def damaged(what: str, exc: BaseException | None = None) -> RunFolderError:
        detail = (
            f" ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})" if exc else ""
        )
        return RunFolderError(f"{path} is damaged: {what}{detail}. Fix: {fix}", path=path)

    import torch  # here, not at the top: reading a run's config needs no torch

    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise damaged("not a readable zip archive", exc) from None
    with archive:
        names = archive.namelist()
        missing = [m for m in _AGENT_MEMBERS if m not in names]
        if missing:
            raise damaged(f"it lacks {', '.join(missing)}")
        for name in names:
            try:
                content = archive.read(name)  # checks the member's CRC
            except Exception as exc:  # zipfile.BadZipFile, zlib.error, EOFError
                raise damaged(f"{name} inside it cannot be read", exc) from None
            try:
                if name == "data":
                    json.loads(content.decode("utf-8"))
                elif name.endswith(".pth"):
                    torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)
            except Exception as exc:
                raise damaged(f"{name} inside it cannot be read", exc) from None
    return path


# ---------------------------------------------------------------------------------------- RNG states
def capture_rng_state() -> dict[str, Any]:
    """The process's RNG states as JSON-able values: python ``random``, numpy's global RNG, torch (and CUDA)."""
    import torch

    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    assert isinstance(numpy_state, dict)
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {
            **numpy_state,
            "state": {"key": numpy_state["state"]["key"].tolist(), "pos": int(numpy_state["state"]["pos"])},
        },
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` captured (the parts present)."""
    import torch

    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        numpy_state = dict(state["numpy"])
        numpy_state["state"] = {
            "key": np.asarray(numpy_state["state"]["key"], dtype=np.uint32),
            "pos": int(numpy_state["state"]["pos"]),
        }
        np.random.set_state(numpy_state)
    if "torch" in state:
        torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        cuda = [torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# ---------------------------------------------------------------------------------------- manifests
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _content_files(folder: Path) -> list[Path]:
    """The files of a checkpoint folder that its manifest covers (not the manifest, no dot-files)."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.name != MANIFEST_FILE
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def write_manifest(folder: str | os.PathLike[str], step: int) -> Path:
    """Write ``checkpoint.json`` into a finished checkpoint folder: the step and each file's size and sha256.

    Written last: a checkpoint folder holding it is complete.
    """
    from tokenmask import __version__

    folder = Path(folder)
    files = {
        p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in _content_files(folder)
    }
    manifest = {"step": int(step), "written_by": f"tokenmask {__version__}", "files": files}
    path = folder / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return path


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint folder of a run (``RUN_DIR/checkpoints/step-N``).

    :param path: the folder.
    :param step: env steps trained when it was written (the model's ``num_timesteps``).
    :param serial: 0, or ``k`` for the ``k``-th later checkpoint of the same step (``step-N.k``).
    """

    path: Path
    step: int
    serial: int = 0

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def agent_file(self) -> Path:
        return self.path / AGENT_FILE

    @property
    def state_file(self) -> Path:
        return self.path / STATE_FILE

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def rng_file(self) -> Path:
        return self.path / RNG_FILE

    @property
    def reconstructor_dir(self) -> Path:
        return self.path / RECONSTRUCTOR_DIR

    @property
    def manifest_file(self) -> Path:
        return self.path / MANIFEST_FILE

    def describe(self) -> str:
        """``checkpoints/step-000000064 (step 64)``."""
        return f"{CHECKPOINTS_DIR}/{self.name} (step {self.step:,})"

    def read_manifest(self) -> dict[str, Any]:
        """The manifest (:func:`write_manifest`).

        :raises RunFolderError: if it is missing or not readable JSON.
        """
        return read_folder_meta(
            self.path,
            MANIFEST_FILE,
            RunFolderError,
            "a complete checkpoint",
            "delete this checkpoint folder.",
        )

    def read_state(self) -> dict[str, Any]:
        """``state.json`` of this checkpoint."""
        return read_folder_meta(
            self.path, STATE_FILE, RunFolderError, "a complete checkpoint", "delete this checkpoint folder."
        )

    def read_rng(self) -> dict[str, Any]:
        """``rng.json`` of this checkpoint (empty when absent)."""
        if not self.rng_file.is_file():
            return {}
        return read_folder_meta(
            self.path, RNG_FILE, RunFolderError, "a complete checkpoint", "delete this checkpoint folder."
        )

    def verify(self, fix: str, files: tuple[str, ...] | None = None) -> None:
        """Check the files against the manifest: present, of the written size and sha256.

        :param fix: what the user should do when it fails (ends the message).
        :param files: check only these manifest entries (and those under these folders); default all.
        :raises RunFolderError: naming the first missing or damaged file.
        """
        manifest = self.read_manifest()
        entries = manifest.get("files")
        if not isinstance(entries, dict):
            raise RunFolderError(
                f"{self.manifest_file} is damaged: it lists no files. Fix: {fix}", path=self.manifest_file
            )
        if (
            any(name.startswith(f"{RECONSTRUCTOR_DIR}/") for name in entries)
            and not self.reconstructor_dir.is_dir()
        ):
            raise RunFolderError(
                f"{self.path} has no {RECONSTRUCTOR_DIR}/ though the run fine-tuned its reconstructor (joint_period > 0): "
                f"the agent would be paired with the base model. Fix: {fix}",
                path=self.reconstructor_dir,
            )
        for name, expected in entries.items():
            if files is not None and not any(name == f or name.startswith(f"{f}/") for f in files):
                continue
            path = self.path / name
            if not path.is_file():
                raise RunFolderError(f"{path} is missing from the checkpoint. Fix: {fix}", path=path)
            if path.stat().st_size != expected.get("bytes") or _sha256(path) != expected.get("sha256"):
                if name == AGENT_FILE:
                    check_agent_file(path, fix)  # names the damaged member when it can
                raise RunFolderError(
                    f"{path} is damaged: its content is not what the checkpoint wrote (size or sha256 differs). Fix: {fix}",
                    path=path,
                )


# ---------------------------------------------------------------------------------------- the run folder
class RunFolder:
    """Paths, checkpoints and atomic reads/writes of one run folder.

    Readers get the run's current state: the newest complete checkpoint, or the flat layout of an
    older run or an exported agent when the folder holds no checkpoint.

    :param path: the run folder (created on the first write).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    # ------------------------------------------------------------------ fixed paths
    @property
    def config_file(self) -> Path:
        """The root ``config.json`` (the config of the latest start)."""
        return self.path / CONFIG_FILE

    @property
    def evaluation_file(self) -> Path:
        return self.path / EVALUATION_FILE

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / TENSORBOARD_DIR

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_folders(self) -> list[Checkpoint]:
        """Every ``step-*`` folder, complete or not, oldest first."""
        if not self.checkpoints_dir.is_dir():
            return []
        found = []
        for entry in self.checkpoints_dir.iterdir():
            match = _CHECKPOINT_NAME.match(entry.name)
            if match and entry.is_dir():
                found.append(Checkpoint(entry, int(match["step"]), int(match["serial"] or 0)))
        return sorted(found, key=lambda c: (c.step, c.serial))

    def checkpoints(self) -> list[Checkpoint]:
        """The complete checkpoints (those holding their manifest), oldest first."""
        return [c for c in self._checkpoint_folders() if c.manifest_file.is_file()]

    def incomplete_checkpoints(self) -> list[Checkpoint]:
        """``step-*`` folders without a manifest (never written by tokenmask: copied or edited by hand); ignored."""
        return [c for c in self._checkpoint_folders() if not c.manifest_file.is_file()]

    def latest_checkpoint(self) -> Checkpoint | None:
        """The newest complete checkpoint, or ``None``."""
        complete = self.checkpoints()
        return complete[-1] if complete else None

    def damage_fix(self, checkpoint: Checkpoint | None = None) -> str:
        """What to do when ``checkpoint`` (default: the newest) is damaged: fall back to the one before it, if any."""
        checkpoint = checkpoint or self.latest_checkpoint()
        if checkpoint is None:
            return "re-train the run (or restore the file from a copy)."
        older = [c for c in self.checkpoints() if (c.step, c.serial) < (checkpoint.step, checkpoint.serial)]
        if older:
            return f"delete {checkpoint.path} to resume from the checkpoint before it ({older[-1].name})."
        return f"delete {checkpoint.path} and start the run again (it has no earlier checkpoint)."

    # ------------------------------------------------------------------ the current state
    @property
    def agent_file(self) -> Path:
        """The current agent: the newest checkpoint's ``agent.zip``, else the flat layout's."""
        latest = self.latest_checkpoint()
        return latest.agent_file if latest is not None else self.path / AGENT_FILE

    @property
    def reconstructor_dir(self) -> Path:
        """The current fine-tuned reconstructor folder (it exists only for joint training)."""
        latest = self.latest_checkpoint()
        return latest.reconstructor_dir if latest is not None else self.path / RECONSTRUCTOR_DIR

    @property
    def state_file(self) -> Path:
        """The current ``state.json``."""
        latest = self.latest_checkpoint()
        return latest.state_file if latest is not None else self.path / STATE_FILE

    def has_agent(self) -> bool:
        """True when the folder holds a saved agent (a complete checkpoint, or the flat ``agent.zip``)."""
        return self.agent_file.is_file()

    def has_reconstructor(self) -> bool:
        """True when the current state holds a fine-tuned reconstructor."""
        return (self.reconstructor_dir / "tokenmask_reconstructor.json").is_file()

    def is_run(self) -> bool:
        """True when the folder holds a run of ``tokenmask train`` (a config and an agent or checkpoints)."""
        return self.config_file.is_file() and (self.has_agent() or self.checkpoints_dir.is_dir())

    def read_config(self) -> dict[str, Any]:
        """The current config as a dict: the newest checkpoint's, else the root ``config.json``.

        :raises RunFolderError: if the folder has no readable config.
        """
        latest = self.latest_checkpoint()
        return read_folder_meta(
            latest.path if latest is not None and latest.config_file.is_file() else self.path,
            CONFIG_FILE,
            RunFolderError,
            "a tokenmask run folder",
            "pass a folder written by `tokenmask train` (its run_dir), or re-run training.",
        )

    def read_state(self) -> dict[str, Any]:
        """The current ``state.json`` as a dict (empty when the run saved none yet).

        :raises RunFolderError: if it is not readable JSON.
        """
        if not self.state_file.is_file():
            return {}
        return read_folder_meta(
            self.state_file.parent, STATE_FILE, RunFolderError, "a tokenmask run folder", self.damage_fix()
        )

    def require_agent(self) -> Path:
        """The current agent file, checked readable (:func:`check_agent_file`).

        :raises RunFolderError: if the run has no saved agent yet, or it is damaged.
        """
        if not self.has_agent():
            raise RunFolderError(
                f"{self.path} holds no {AGENT_FILE}: the run saved no agent yet. "
                "Fix: train first (`tokenmask train --config ...`), or pass another run folder.",
                path=self.path,
            )
        return check_agent_file(self.agent_file, self.damage_fix())

    # ------------------------------------------------------------------ writing
    @contextlib.contextmanager
    def claim(self, overwrite: bool = False) -> Iterator[Path]:
        """Hold the run folder for one training process: checked, created and locked while the block runs.

        A run folder (this layout or the flat one, marked or not) is locked as it is; any other
        path goes through :func:`~tokenmask.io.claimed_output_dir`: a missing or empty folder is
        created and marked, a non-empty folder tokenmask did not write (or that another command
        wrote) is refused unless ``overwrite`` (nothing in it is deleted), a file is refused.

        :raises OutputExistsError: see above, and when another process is writing the folder.
        """
        if self.is_run():
            with output_lock(self.path) as path:
                if not (path / MARKER_FILE).is_file():
                    write_marker(path, RUN_KIND)
                yield path
        else:
            with claimed_output_dir(self.path, overwrite=overwrite, kind=RUN_KIND) as path:
                yield path

    def clean_leftovers(self) -> list[Path]:
        """Remove what killed runs left: temporary checkpoint folders (their process gone), retired
        checkpoints half deleted, and the flat layout's temporary files. Call it holding :meth:`claim`.

        :return: the paths removed.
        """
        removed: list[Path] = []
        if self.checkpoints_dir.is_dir():
            names = set()
            for entry in self.checkpoints_dir.iterdir():
                match = _CHECKPOINT_TEMP.match(entry.name)
                if match:
                    names.add(match["name"])
                elif entry.name.startswith(".") and _RETIRED in entry.name:
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
            for name in sorted(names):
                removed.extend(clean_leftovers(self.checkpoints_dir / name))
        for name in _FLAT_FILES:
            removed.extend(clean_leftovers(self.path / name))
        return removed

    def save_config(self, config: TrainConfig) -> Path:
        """Write the root ``config.json`` (the config of this start; every checkpoint also keeps its own)."""
        return atomic_write_json(self.config_file, config.to_dict())

    def save_agent(self, model: BaseAlgorithm) -> Path:
        """Write ``agent.zip`` at the root: the flat layout of an exported agent (training writes checkpoints)."""
        return atomic_write_model(self.path / AGENT_FILE, model)

    def save_evaluation(self, evaluation: dict[str, Any]) -> Path:
        """Write ``evaluation.json``."""
        return atomic_write_json(self.evaluation_file, evaluation)

    def write_checkpoint(
        self,
        model: BaseAlgorithm,
        state: dict[str, Any],
        config: TrainConfig,
        rng: dict[str, Any],
        reconstructor: Reconstructor | None = None,
        keep: int = 2,
    ) -> Checkpoint:
        """Write one checkpoint whole (temporary sibling, manifest last, rename), then keep the last ``keep``.

        :param model: the SB3 model (its ``num_timesteps`` names the checkpoint).
        :param state: the run's state (``num_timesteps`` and ``checkpoint`` are added).
        :param config: the resolved config.
        :param rng: RNG states (:func:`capture_rng_state` and more), JSON-able.
        :param reconstructor: the fine-tuned reconstructor (joint training), saved as ``reconstructor/``.
        :param keep: complete checkpoints kept (>= 1); older ones are removed after this one is in place.
        :return: the new checkpoint.
        """
        if keep < 1:
            raise ValueError(f"keep must be >= 1 checkpoint, got {keep}.")
        step = int(model.num_timesteps)
        serial = max((c.serial + 1 for c in self._checkpoint_folders() if c.step == step), default=0)
        target = self.checkpoints_dir / checkpoint_name(step, serial)
        tmp = temporary_dir_beside(target, kind="checkpoint")
        try:
            model.save(tmp / AGENT_FILE)
            for name, content in (
                (STATE_FILE, {**state, "num_timesteps": step, "checkpoint": target.name}),
                (CONFIG_FILE, config.to_dict()),
                (RNG_FILE, rng),
            ):
                (tmp / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
            if reconstructor is not None:
                reconstructor.save_pretrained(tmp / RECONSTRUCTOR_DIR)
            write_manifest(tmp, step)
            os.rename(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        self._prune(keep)
        return Checkpoint(target, step, serial)

    def _prune(self, keep: int) -> None:
        """Remove checkpoints superseded by a later one of the same step, then all but the newest ``keep``."""
        complete = self.checkpoints()
        distinct = [
            c for i, c in enumerate(complete) if i + 1 == len(complete) or complete[i + 1].step != c.step
        ]
        retire = [c for c in complete if c not in distinct] + distinct[:-keep]
        for checkpoint in retire:
            # renamed first, so a kill while deleting never leaves a step-* folder half removed
            retired = checkpoint.path.with_name(
                f".{checkpoint.name}{_RETIRED}{os.getpid()}-{secrets.token_hex(4)}"
            )
            os.rename(checkpoint.path, retired)
            shutil.rmtree(retired, ignore_errors=True)


__all__ = [
    "Checkpoint",
    "RunFolder",
    "RunFolderError",
    "capture_rng_state",
    "check_agent_file",
    "checkpoint_name",
    "restore_rng_state",
    "write_manifest",
]
