"""The replay env of the agent compressor, cloning and replays reads whole contexts, whatever the run's continuation."""

from __future__ import annotations

import numpy as np

from tokenmask.train.replay import documents_env


def test_documents_env_never_takes_a_context_tail_as_continuation(tiny_recon):
    """A run trained with continuation_tokens > 0 still has every id of a compressed context decided."""
    rng = np.random.default_rng(0)
    documents = [rng.integers(5, 100, size=48).tolist() for _ in range(2)]
    options = {
        "window": 16,
        "continuation_tokens": 16,
        "retention_weight": 0.5,
        "recoverability_weight": 1.0,
        "judge_credit": "dense",
    }
    env = documents_env(documents, tiny_recon, options, 0.5)
    try:
        assert env.config.continuation_tokens == 0
        assert env.config.retention_weight == 0.0 and env.config.judge_credit == "terminal"
        assert [len(d) for d in env.documents] == [48, 48]
    finally:
        env.close()
