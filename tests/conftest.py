"""Shared fixtures: a tiny random reconstructor for unit tests, the embedded SmolLM2 loaded once per session.

Every test that uses the embedded model's fixture (directly or through another fixture) is marked
``integration``, so ``pytest -m "not integration"`` (``make test-fast``) runs the tests that need no
embedded model.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tokenmask.reconstructors import Reconstructor
from tokenmask.testing import tiny_reconstructor

REPO_ROOT = Path(__file__).resolve().parents[1]
PYDOCS = REPO_ROOT / "data" / "pydocs.jsonl"
EMBEDDED_MODEL_FIXTURES = frozenset({"smollm"})


def free_port() -> int:
    """A free local TCP port (for a data-parallel test's ``accelerate launch --main_process_port``)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/NAME.py`` imported as the module ``NAME`` (registered in ``sys.modules``: dataclasses
    resolve their module by name, and the scripts import each other by name)."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that loads the embedded SmolLM2 through a fixture as ``integration``."""
    for item in items:
        if EMBEDDED_MODEL_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def tiny_recon() -> Reconstructor:
    """A tiny random Llama with the real SmolLM2 tokenizer; shared, so tests must not train it."""
    return tiny_reconstructor(seed=0)


@pytest.fixture(scope="session")
def tiny_judge_dir(tiny_recon: Reconstructor, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`tiny_recon` saved as a folder, so ``--judge PATH`` (and a subprocess) loads it in a second; read-only."""
    path: Path = tiny_recon.save_pretrained(tmp_path_factory.mktemp("judge") / "tiny")
    return path


@pytest.fixture(scope="session")
def smollm() -> Reconstructor:
    """The embedded SmolLM2-135M-Instruct (loaded once; ~20 s on 2 cores), on the CPU, float32."""
    return Reconstructor.load("default", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def pydocs_path() -> Path:
    """The repository's pydocs corpus (``data/pydocs.jsonl``), or the package's sample where it is absent."""
    if PYDOCS.is_file():
        return PYDOCS
    from tokenmask.data import sample_corpus_path

    return sample_corpus_path()


@pytest.fixture(scope="session")
def labels_dir(tiny_recon, tmp_path_factory) -> Path:
    """`tokenmask label` output for 4 documents at 2 rates, searched with the tiny random judge (C = 32, 8-token spans)."""
    from tokenmask.train.labels import LabelConfig, make_labels, write_labels

    config = LabelConfig(
        context_tokens=32,
        continuation_tokens=8,
        span=8,
        rates=[0.3, 0.5],
        candidates=4,
        swap_rounds=0,
        max_documents=4,
        documents_per_batch=4,
        device="cpu",
        output_dir=str(tmp_path_factory.mktemp("labels") / "out"),
    )
    return Path(write_labels(make_labels(config, judge=tiny_recon, progress=False), config))


QUICK_CONFIG = REPO_ROOT / "configs" / "dev" / "quick_test.json"


def save_tiny_run(path: Path, overrides: dict[str, object] | None = None) -> Path:
    """Write a run folder holding an untrained PPO agent on the tiny random reconstructor, as ``tokenmask train`` does.

    The config is ``configs/dev/quick_test.json`` with ``joint_period`` 0 and ``overrides`` (e.g.
    ``{"env.span": 4}``): enough for the compressor's mechanics, in about a second.
    """
    from stable_baselines3 import PPO

    from tokenmask.config import load_config
    from tokenmask.envs.sb3_vec_env import TokenMaskSB3VecEnv
    from tokenmask.policies import TokenMaskPolicy
    from tokenmask.train.config import TrainConfig
    from tokenmask.train.run_folder import RunFolder

    config = load_config(
        TrainConfig, QUICK_CONFIG, {"run_dir": str(path), "joint_period": 0, **(overrides or {})}
    )
    recon = tiny_reconstructor(seed=config.seed)
    env = TokenMaskSB3VecEnv(num_envs=2, config=config.env, reconstructor=recon, judge=recon)
    model = PPO(TokenMaskPolicy, env, n_steps=8, batch_size=16, seed=0, device="cpu")
    run = RunFolder(path)
    run.save_config(config)
    run.save_agent(model)
    return Path(path)
