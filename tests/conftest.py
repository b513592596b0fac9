"""Shared fixtures: a tiny random reconstructor for unit tests, the embedded SmolLM2 loaded once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenmask.reconstructors import Reconstructor
from tokenmask.testing import tiny_reconstructor

REPO_ROOT = Path(__file__).resolve().parents[1]
PYDOCS = REPO_ROOT.parent / "shared" / "data" / "pydocs.jsonl"


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
    """The shared pydocs corpus, or the sample shipped in the package when shared/ is absent."""
    if PYDOCS.is_file():
        return PYDOCS
    from tokenmask.data import sample_corpus_path

    return sample_corpus_path()
