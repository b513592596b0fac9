"""Property test of TokenMask-v0: random corpora, windows, modes and actions on the tiny model."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenmask.envs import TokenMaskEnv
from tokenmask.reconstructors import Reconstructor


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    window=st.integers(1, 7),
    context_size=st.integers(0, 4),
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=4),
    mask_mode=st.sampled_from(["delete", "placeholder"]),
    reward_type=st.sampled_from(["information", "simple"]),
    target_rate=st.floats(0.0, 0.99),
    continuation=st.integers(0, 3),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_random_episodes_respect_the_contract(
    tiny_recon: Reconstructor,
    window: int,
    context_size: int,
    lengths: list[int],
    mask_mode: str,
    reward_type: str,
    target_rate: float,
    continuation: int,
    seed: int,
    data: st.DataObject,
) -> None:
    rng = np.random.default_rng(seed)
    # each item: the document, then its continuation (never observed, never counted)
    documents = [rng.integers(0, 49152, size=n + continuation).tolist() for n in lengths]
    env = TokenMaskEnv(
        documents=documents,
        reconstructor=tiny_recon,
        window=window,
        context_size=context_size,
        mask_mode=mask_mode,
        reward_type=reward_type,
        target_rate=target_rate,
        min_tokens=1,
        continuation_tokens=continuation,
    )
    for episode in range(2):
        obs, info = env.reset(seed=seed if episode == 0 else None)
        assert env.observation_space.contains(obs)
        n = info["doc_tokens"]
        assert n == len(documents[info["document"]]) - continuation
        assert env.corpus.continuations[info["document"]].tolist() == documents[info["document"]][n:]
        masked_total, steps = 0, 0
        while True:
            p = data.draw(st.floats(0.0, 1.0), label="mask probability")
            action = (rng.random(window) < p).astype(np.int8)
            valid = obs["valid"].astype(bool)
            masked_total += int(action[valid].sum())
            obs, reward, terminated, truncated, info = env.step(action)
            steps += 1
            assert env.observation_space.contains(obs)
            assert math.isfinite(reward) and not truncated
            decided = min(steps * window, n)
            assert info["decided_tokens"] == decided
            assert info["masked_tokens"] == masked_total
            assert info["rate"] == masked_total / decided
            assert math.isfinite(info["bits"]) and info["bits"] >= 0
            if terminated:
                break
            assert steps < math.ceil(n / window)  # never ends early ...
        assert steps == math.ceil(n / window)  # ... nor late: exactly at the document's end
        assert not obs["valid"].any()
