"""``tokenmask export``: a trained run as a policy-only agent folder, small enough to ship in the package.

Layout of the folder (``tokenmask export RUN_DIR --output_dir DIR``)::

    DIR/policy.pt        the policy alone, in SB3's BasePolicy.save format (weights + constructor kwargs,
                         no optimizer state; float16 weights with --float16, float32 again once loaded)
    DIR/config.json      the run's TrainConfig, joint_period 0 (the folder is used, never trained on)
    DIR/agent.json       provenance: source run, step, git commit, dates, machine, sha256 of policy.pt,
                         and a free-form "figures" object (e.g. the test-split table of the release)
    DIR/reconstructor/   the run's fine-tuned reconstructor, only with --with_reconstructor

:meth:`AgentCompressor.load <tokenmask.train.agent.AgentCompressor.load>` (hence ``agent:DIR``,
``tokenmask compress --agent DIR`` and ``tokenmask.compress(agent=DIR)``) reads it as it reads a run
folder; ``tokenmask/agents/default/`` is such a folder when an agent ships with the package.

Which reconstructor the agent needs: the policy observes ``token_features`` computed by the run's
reconstructor. With ``token_features="lm"`` and a reconstructor fine-tuned during training (joint
training), the agent is only right with that fine-tuned model, so the export is refused unless
``--with_reconstructor`` copies it (hundreds of MB). Otherwise (no fine-tuning, or
``token_features="position"``, which runs no LM pass at all and reads only the tokenizer and its
vocabulary) the base model the config names is enough.

``policy.pt`` is a pickle (SB3 loads policies with ``torch.load(weights_only=False)``): load only
folders you trust. ``agent.json`` records its sha256, so a damaged file is named before it is read.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch

from tokenmask.errors import InputError
from tokenmask.io import atomic_output_dir, read_folder_meta, reraise_as
from tokenmask.policies import TokenMaskPolicy
from tokenmask.train.config import TrainConfig
from tokenmask.train.run_folder import CONFIG_FILE, RECONSTRUCTOR_DIR, RunFolder, RunFolderError

POLICY_FILE = "policy.pt"
AGENT_INFO_FILE = "agent.json"
EXPORT_KIND = "export"
"""The kind recorded in an exported folder's marker (see :mod:`tokenmask.io`)."""
FORMAT = "tokenmask-policy-folder/1"
"""``agent.json``'s ``format``: the layout above, version 1."""


def is_policy_folder(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is an exported agent folder (it holds ``policy.pt`` or ``agent.json``), not a run folder."""
    folder = Path(path)
    return (folder / POLICY_FILE).exists() or (folder / AGENT_INFO_FILE).is_file()


def needs_fine_tuned_reconstructor(config: TrainConfig, run: RunFolder) -> bool:
    """True when the run's policy only works with its fine-tuned reconstructor.

    That is when it fine-tuned one (joint training) and the policy observes LM features
    (``env.token_features="lm"``); a ``position`` policy reads the tokenizer alone.
    """
    fine_tuned = config.joint_training or run.has_reconstructor()
    return fine_tuned and config.env.token_features == "lm"


# ---------------------------------------------------------------------------------------- writing
def export_agent(
    run_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    with_reconstructor: bool = False,
    float16: bool = False,
    figures: dict[str, Any] | None = None,
    machine: str | None = None,
    git_commit: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the policy-only agent folder of a run (layout in the module doc), atomically.

    :param run_dir: a run folder of ``tokenmask train`` (its newest complete checkpoint is exported).
    :param output_dir: the folder to write (replaced whole if an earlier export wrote it).
    :param with_reconstructor: copy the run's fine-tuned ``reconstructor/`` too (needed by a run
        that fine-tuned it and whose policy observes LM features).
    :param float16: store the weights as float16 (half the size; float32 again once loaded).
    :param figures: free-form results to record in ``agent.json`` (JSON-able).
    :param machine: the machine the run was trained on, in words (default: this machine's, see
        :func:`describe_machine`; export where you trained, or name it).
    :param git_commit: the commit the run was trained with (default: this checkout's ``HEAD``).
    :param overwrite: replace ``output_dir`` even if tokenmask did not write it.
    :return: the folder.
    :raises RunFolderError: ``run_dir`` is not a run folder with a readable agent.
    :raises InputError: the policy needs the run's fine-tuned reconstructor and
        ``with_reconstructor`` is off, or it is on and the run has none.
    :raises OutputExistsError: ``output_dir`` may not be replaced.
    """
    from tokenmask.train.loading import load_agent, load_run_config

    config, run = load_run_config(Path(run_dir))
    if Path(output_dir).expanduser().resolve() == run.path.expanduser().resolve():
        raise InputError(
            f"--output_dir {output_dir} is the run folder itself.", fix="name a new folder, e.g. agents/v1."
        )
    if needs_fine_tuned_reconstructor(config, run) and not with_reconstructor:
        raise InputError(
            f"{run_dir} fine-tuned its reconstructor (joint_period={config.joint_period}) and its policy observes "
            'that model\'s features (env.token_features="lm"), so the policy alone would be paired with the base model.',
            fix="pass --with_reconstructor to copy reconstructor/ into the folder (hundreds of MB), "
            'or export a run trained with joint_period 0 or env.token_features "position".',
            path=run_dir,
        )
    if with_reconstructor and not run.has_reconstructor():
        raise InputError(
            f"--with_reconstructor: {run_dir} holds no fine-tuned reconstructor (it did not fine-tune one).",
            fix="drop --with_reconstructor: the base model the config names is the agent's reconstructor.",
            path=run_dir,
        )
    if figures is not None:
        json.dumps(figures)  # a figure that is not JSON fails here, before anything is written
    agent_file = run.require_agent()
    exported = dataclasses.replace(config, joint_period=0)
    state = run.read_state()
    latest = run.latest_checkpoint()
    with atomic_output_dir(output_dir, overwrite, kind=EXPORT_KIND) as folder:
        model = load_agent(agent_file, config.algo, device="cpu", fix=run.damage_fix())
        policy = model.policy
        if not isinstance(policy, TokenMaskPolicy):
            raise RunFolderError(
                f"{agent_file} holds a {type(policy).__name__}, not a TokenMaskPolicy. "
                "Fix: export a run of `tokenmask train`.",
                path=agent_file,
            )
        policy_path = folder / POLICY_FILE
        policy.save(str(policy_path))
        if float16:
            _halve_weights(policy_path)
        if with_reconstructor:
            shutil.copytree(run.reconstructor_dir, folder / RECONSTRUCTOR_DIR)
        (folder / CONFIG_FILE).write_text(json.dumps(exported.to_dict(), indent=2) + "\n", encoding="utf-8")
        info = {
            "format": FORMAT,
            "source_run": str(run.path.expanduser().resolve()),
            "checkpoint": latest.name if latest is not None else None,
            "step": int(state.get("num_timesteps", model.num_timesteps)),
            "status": state.get("status"),
            "algo": config.algo,
            "token_features": config.env.token_features,
            "reconstructor": RECONSTRUCTOR_DIR + "/" if with_reconstructor else config.reconstructor,
            "policy_parameters": sum(p.numel() for p in policy.parameters()),
            "policy_dtype": "float16" if float16 else "float32",
            "policy_sha256": _sha256(policy_path),
            "git_commit": git_commit if git_commit is not None else _git_commit(),
            "tokenmask_version": _version(),
            "trained": _mtime_iso(latest.manifest_file if latest is not None else agent_file),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine if machine is not None else describe_machine(),
            "training_device": state.get("device"),
            "figures": dict(figures or {}),
        }
        (folder / AGENT_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return Path(output_dir)


def _halve_weights(path: Path) -> None:
    """Rewrite a ``BasePolicy.save`` file with its floating-point weights as float16.

    The shared features extractor appears under three names (``features_extractor``,
    ``pi_features_extractor``, ``vf_features_extractor``) over one storage; each is converted
    once, so the file still stores it once.
    """
    saved = torch.load(path, map_location="cpu", weights_only=False)
    halves: dict[tuple[int, int, tuple[int, ...], tuple[int, ...]], torch.Tensor] = {}
    state = {}
    for name, value in saved["state_dict"].items():
        if value.is_floating_point():
            key = (
                value.untyped_storage().data_ptr(),
                value.storage_offset(),
                tuple(value.shape),
                value.stride(),
            )
            value = halves.setdefault(key, value.half())
        state[name] = value
    saved["state_dict"] = state
    torch.save(saved, path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _mtime_iso(path: Path) -> str | None:
    if not path.exists():
        return None
    return dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc).isoformat(timespec="seconds")


def _version() -> str:
    from tokenmask import __version__

    return __version__


def _git_commit() -> str | None:
    """``HEAD`` of the checkout this package runs from (``+dirty`` with uncommitted changes to tracked files), else ``None``."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None


def describe_machine() -> str:
    """This machine in words: the GPU's name where torch sees one, else the CPU model and cores."""
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    from tokenmask.evaluate.reports import device_description

    return device_description(torch.device("cpu")) + f", {platform.system()}"


# ---------------------------------------------------------------------------------------- reading
def read_agent_info(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """``agent.json`` of an exported folder (empty when absent: a hand-made folder).

    :raises RunFolderError: if it exists but is not a JSON object.
    """
    if not (Path(folder) / AGENT_INFO_FILE).is_file():
        return {}
    return read_folder_meta(
        folder, AGENT_INFO_FILE, RunFolderError, "an exported agent folder", "export the run again."
    )


def check_policy_folder(folder: str | os.PathLike[str]) -> Path:
    """Check an exported folder without loading a model: a readable config, and ``policy.pt`` present
    and (when ``agent.json`` records it) of the exported sha256.

    :return: the path of ``policy.pt``.
    :raises RunFolderError: naming the missing or damaged file and the fix.
    """
    folder = Path(folder)
    RunFolder(folder).read_config()
    path = folder / POLICY_FILE
    fix = f"export the run again (tokenmask export RUN_DIR --output_dir {folder})."
    if not path.is_file():
        raise RunFolderError(f"{path} is missing: the exported agent has no policy. Fix: {fix}", path=path)
    expected = read_agent_info(folder).get("policy_sha256")
    if expected and _sha256(path) != expected:
        raise RunFolderError(
            f"{path} is damaged: its sha256 is not the one agent.json records. Fix: {fix}", path=path
        )
    return path


def load_policy(folder: str | os.PathLike[str], device: str | torch.device = "auto") -> TokenMaskPolicy:
    """The policy of an exported folder (``TokenMaskPolicy.load``; float16 weights come back as float32).

    :param folder: a folder written by :func:`export_agent`.
    :param device: where the policy runs.
    :raises RunFolderError: if ``policy.pt`` is missing, damaged, or not a TokenMaskPolicy.
    """
    path = check_policy_folder(folder)
    with reraise_as(
        RunFolderError,
        f"{path} is damaged: it cannot be loaded as a TokenMaskPolicy. "
        f"Fix: export the run again (tokenmask export RUN_DIR --output_dir {folder})",
    ):
        policy = TokenMaskPolicy.load(str(path), device=device)
    return policy


# ---------------------------------------------------------------------------------------- CLI
EXPORT_DESCRIPTION = """Write the policy-only agent folder of a trained run (a few MB, no optimizer state):

  tokenmask export runs/gpu_pareto --output_dir tokenmask/agents/default --float16 --figures table.json

DIR gets policy.pt, config.json (the run's, joint_period 0) and agent.json (source run, step, git
commit, dates, machine, figures). agent:DIR, tokenmask compress --agent DIR and
tokenmask.compress(agent=DIR) use it; tokenmask/agents/default/ is the agent of `agent:default`.
A run that fine-tuned its reconstructor and whose policy observes LM features
(env.token_features "lm") needs that model: pass --with_reconstructor to copy it.
"""


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``tokenmask export``."""
    parser = subparsers.add_parser(
        "export",
        help="write a trained run's policy-only agent folder (what ships as tokenmask/agents/default)",
        description=EXPORT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by tokenmask train")
    parser.add_argument("--output_dir", required=True, metavar="DIR", help="the agent folder to write")
    parser.add_argument(
        "--with_reconstructor",
        action="store_true",
        help="copy the run's fine-tuned reconstructor/ too (needed with joint training and token_features lm)",
    )
    parser.add_argument("--float16", action="store_true", help="store the weights as float16 (half the size)")
    parser.add_argument(
        "--figures",
        default=None,
        metavar="JSON",
        help='results to record in agent.json: a JSON file or a JSON object, e.g. \'{"test_rate_0.5": "0.50 / 0.49 / 0.91"}\'',
    )
    parser.add_argument(
        "--machine", default=None, help="the machine the run was trained on (default: this machine)"
    )
    parser.add_argument(
        "--git_commit",
        default=None,
        help="the commit the run was trained with (default: this checkout's HEAD)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace DIR even if tokenmask did not write it (its files are deleted)",
    )
    parser.set_defaults(func=run_export)


def _read_figures(value: str | None) -> dict[str, Any] | None:
    if value is None:
        return None
    path = Path(value)
    text = path.read_text(encoding="utf-8") if path.is_file() else value
    try:
        figures = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"--figures {value[:80]!r} is neither a JSON file nor a JSON object ({exc.msg}).",
            fix='pass a file holding a JSON object, or e.g. \'{"rate 0.5": "0.50 / 0.49 / 0.91"}\'.',
        ) from None
    if not isinstance(figures, dict):
        raise InputError("--figures must hold a JSON object.", fix='wrap the values, e.g. {"table": ...}.')
    return figures


def run_export(args: argparse.Namespace) -> int:
    """``tokenmask export``: exit status 0; the folder, its size and its provenance on stdout."""
    figures = _read_figures(args.figures)
    folder = export_agent(
        args.run_dir,
        args.output_dir,
        with_reconstructor=args.with_reconstructor,
        float16=args.float16,
        figures=figures,
        machine=args.machine,
        git_commit=args.git_commit,
        overwrite=args.overwrite,
    )
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    info = read_agent_info(folder)
    print(
        f"exported {args.run_dir} (step {info.get('step')}, {info.get('policy_parameters'):,} parameters, "
        f"{info.get('policy_dtype')}) to {folder}: {size / 1e6:.1f} MB"
    )
    print(json.dumps({k: v for k, v in info.items() if k != "figures"}, indent=2))
    return 0
