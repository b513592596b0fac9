"""Shared fixtures: a tiny random reconstructor for unit tests, the embedded SmolLM2 loaded once per session.

Every test that uses the embedded model's fixture (directly or through another fixture) is marked
``integration``, so ``pytest -m "not integration"`` (``make test-fast``) runs the tests that need no
embedded model.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenmask.reconstructors import Reconstructor
from tokenmask.testing import tiny_reconstructor

REPO_ROOT = Path(__file__).resolve().parents[1]
PYDOCS = REPO_ROOT / "data" / "pydocs.jsonl"
EMBEDDED_MODEL_FIXTURES = frozenset({"smollm"})


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
