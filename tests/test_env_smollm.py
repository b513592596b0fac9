"""TokenMask-v0 on the embedded SmolLM2 and real text: checkers, offline defaults, rewards that mean what they say."""

from __future__ import annotations

import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import tokenmask  # noqa: F401  (registers TokenMask-v0)
from tokenmask.data import load_texts
from tokenmask.envs import TokenMaskEnv, TokenMaskVectorEnv
from tokenmask.reconstructors import Reconstructor

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def texts(pydocs_path: Path) -> list[str]:
    return [r["text"] for r in load_texts(pydocs_path)[:8]]


def test_env_checkers_pass_on_smollm2(smollm: Reconstructor, texts: list[str]) -> None:
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    # one-window documents keep the number of CPU forward passes small
    documents = [smollm.encode(t)[:16] for t in texts[:3]]
    env = TokenMaskEnv(documents=documents, reconstructor=smollm, window=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the -inf/inf feature bounds are part of the contract
        check_env(env)
        sb3_check_env(env)


def test_default_make_works_offline(smollm: Reconstructor) -> None:
    """No kwargs: the embedded model (shared with the fixture's cache) and the shipped corpus."""
    env = gym.make("TokenMask-v0", device="cpu")
    base = env.unwrapped
    assert base.reconstructor.model is smollm.model and len(base.corpus) >= 120
    obs, info = env.reset(seed=0)
    obs, reward, terminated, _, info = env.step(env.action_space.sample())
    assert np.isfinite(reward) and info["decided_tokens"] == 16


def test_recoverability_bonus_loads_the_judge_by_name_and_means_what_it_says(
    smollm: Reconstructor, texts: list[str]
) -> None:
    """gym.make with a bonus loads the judge itself; keeping everything recovers all, masking everything nothing."""
    documents = [smollm.encode(t)[:32] for t in texts[:2]]
    env = gym.make(
        "TokenMask-v0",
        documents=documents,
        reconstructor=smollm,
        window=16,
        shuffle=False,
        recoverability_weight=1.0,
        judge_name="default",
        device="cpu",
    )
    assert env.unwrapped.bonus is not None and env.unwrapped.bonus.judge.mask_token_id is None
    gains = []
    for action in (0, 1):  # keep every token, then mask every token
        env.reset(seed=0, options={"document": 0})
        terminated = False
        while not terminated:
            _, _, terminated, _, info = env.step(np.full(16, action, dtype=np.int8))
        gains.append(info["recoverability"])
    assert gains[0] == pytest.approx(1.0, abs=1e-3) and gains[1] == pytest.approx(0.0, abs=1e-6)


def test_retention_bonus_on_real_text_in_both_credit_modes(smollm: Reconstructor, texts: list[str]) -> None:
    """Keeping everything retains all of the continuation, masking everything none; dense credit pays
    the same final bonus, less keep-all's, spread over the steps."""
    documents = [smollm.encode(t)[:48] for t in texts[:1]]  # 32 tokens + a 16-token continuation
    options = {
        "documents": documents,
        "reconstructor": smollm,
        "window": 16,
        "shuffle": False,
        "continuation_tokens": 16,
    }
    bonus = {"recoverability_weight": 1.0, "retention_weight": 1.0, "judge_name": "default", "device": "cpu"}
    plain = TokenMaskEnv(**options)
    results = {}
    for credit in ("terminal", "dense"):
        env = TokenMaskEnv(judge_credit=credit, **options, **bonus)
        for action in (0, 1):  # keep every token, then mask every token
            judge_parts = 0.0
            for run in (env, plain):
                run.reset(seed=0, options={"document": 0})
                terminated, sign = False, 1.0 if run is env else -1.0
                while not terminated:
                    _, reward, terminated, _, info = run.step(np.full(16, action, dtype=np.int8))
                    judge_parts += sign * reward
                if run is env:
                    values = (info["recoverability"], info["retention"])
            results[credit, action] = (*values, judge_parts)
    for credit in ("terminal", "dense"):
        assert results[credit, 0][:2] == pytest.approx((1.0, 1.0), abs=1e-3)
        assert results[credit, 1][:2] == pytest.approx((0.0, 0.0), abs=1e-6)
    assert results["terminal", 0][2] == pytest.approx(2.0, abs=2e-3) and results["dense", 0][2] == 0.0
    assert results["terminal", 1][2] == pytest.approx(0.0, abs=1e-5)
    assert results["dense", 1][2] == pytest.approx(-2.0, abs=2e-3)  # bonus(mask all) - bonus(keep all)


def test_masking_predictable_tokens_costs_fewer_bits(smollm: Reconstructor, texts: list[str]) -> None:
    """The reward means what it says, on real text: in each window, sub-env 0 masks the token the
    reconstructor predicts best (lowest surprisal feature) and sub-env 1 the one it predicts worst;
    the first pays fewer bits and earns more reward. The bits equal ``token_bits`` of the masked documents."""
    documents = [smollm.encode(t)[:128] for t in texts[:2]]
    vec = TokenMaskVectorEnv(
        num_envs=2, documents=documents, reconstructor=smollm, window=16, target_rate=1 / 16
    )
    bits: list[np.ndarray] = []
    returns = np.zeros(2)
    for document in range(2):
        obs, _ = vec.reset(options={"document": document})
        while True:
            surprisal = np.where(obs["valid"] == 1, obs["token_features"][..., 0], np.nan)
            actions = np.zeros((2, 16), dtype=np.int8)
            actions[0, np.nanargmin(surprisal[0])] = 1
            actions[1, np.nanargmax(surprisal[1])] = 1
            obs, rewards, terminated, _, infos = vec.step(actions)
            returns += rewards
            if terminated.any():
                assert terminated.all()
                bits.append(infos["final_info"]["step_bits"])
                break
            bits.append(infos["step_bits"])
    best, worst = np.array(bits)[:, 0], np.array(bits)[:, 1]
    assert (best < worst).mean() >= 0.9
    assert best.mean() < 0.5 * worst.mean()
    assert returns[0] > returns[1]
    records = vec.pop_completed_episodes()
    reference = smollm.token_bits([r.ids.tolist() for r in records], [r.mask.tolist() for r in records])
    # the env scores window by window, token_bits whole documents: float32 log-softmax noise of about
    # 3e-5 bits per token (2e-4-3e-4 bits per 8 masked tokens on an AVX2 CPU), whatever the sum is
    for record, ref in zip(records, reference):
        expected = float(ref[record.mask].sum())
        assert record.bits == pytest.approx(expected, rel=1e-4, abs=1e-4 * int(record.mask.sum()))
