"""TokenMask-v0 on the tiny random model: API, rewards, vector forms, reproducibility, bad input."""

from __future__ import annotations

import json
import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

import tokenmask  # noqa: F401  (registers TokenMask-v0)
from tokenmask.envs import (
    GLOBAL_FEATURES,
    TOKEN_FEATURES,
    DocumentCorpus,
    InformationReward,
    MaskingReward,
    TokenMaskConfig,
    TokenMaskEnv,
    TokenMaskSB3VecEnv,
    TokenMaskVectorEnv,
)
from tokenmask.reconstructors import Reconstructor
from tokenmask.testing import tiny_reconstructor


def _documents(lengths: list[int], seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(10, 49000, size=n).tolist() for n in lengths]


DOCS = _documents([23, 9, 17, 30, 12, 8])


def _env(recon: Reconstructor, **kwargs: object) -> TokenMaskEnv:
    options = {"window": 4, "context_size": 3, "documents": DOCS, "reconstructor": recon, **kwargs}
    return TokenMaskEnv(**options)  # type: ignore[arg-type]


def _play(env: TokenMaskEnv, seed: int, action_seed: int) -> tuple[list[float], list[dict], dict]:
    obs, reset_info = env.reset(seed=seed)
    rng = np.random.default_rng(action_seed)
    rewards, infos = [], []
    while True:
        obs, reward, terminated, truncated, info = env.step(rng.integers(0, 2, size=env.config.window))
        rewards.append(reward)
        infos.append(info)
        if terminated or truncated:
            return rewards, infos, reset_info


def test_recoverability_bonus_is_part_of_the_env_reward(tiny_recon: Reconstructor) -> None:
    judge = tiny_reconstructor(seed=1)
    plain, bonus = _env(tiny_recon), _env(tiny_recon, judge=judge, recoverability_weight=0.5)
    plain_rewards, plain_infos, _ = _play(plain, seed=3, action_seed=4)
    bonus_rewards, bonus_infos, _ = _play(bonus, seed=3, action_seed=4)
    assert plain_rewards[:-1] == bonus_rewards[:-1]  # the bonus is paid at the last step only
    assert all("recoverability" not in info for info in plain_infos + bonus_infos[:-1])
    gain = bonus_infos[-1]["recoverability"]
    assert -1.0 <= gain <= 2.0
    assert bonus_rewards[-1] == pytest.approx(plain_rewards[-1] + 0.5 * gain)
    record = bonus.pop_completed_episodes()[-1]
    assert record.recoverability == pytest.approx(gain)
    assert record.episode_return == pytest.approx(sum(bonus_rewards))
    # the same gain from the judge directly: (R(empty) - R(kept)) / (R(empty) - R(document))
    from tokenmask.reconstructors.judge import document_recoverability, recovery_nlls, separator_ids

    ids = [int(t) for t in record.ids]
    kept = [t for t, m in zip(ids, record.mask) if not m]
    sep = separator_ids(judge)
    nll = [recovery_nlls(judge, [p], [ids], sep)[0] for p in ([], kept, ids)]
    assert document_recoverability(*nll) == pytest.approx(gain, abs=1e-5)


# ---------------------------------------------------------------------------- registration and checkers
def test_registered_on_import_and_by_module_prefix(tiny_recon: Reconstructor) -> None:
    assert gym.spec("TokenMask-v0").vector_entry_point is not None
    env = gym.make("tokenmask:TokenMask-v0", documents=DOCS, reconstructor=tiny_recon, window=4)
    assert isinstance(env.unwrapped, TokenMaskEnv)
    vec = gym.make_vec("TokenMask-v0", num_envs=3, documents=DOCS, reconstructor=tiny_recon, window=4)
    assert isinstance(vec, TokenMaskVectorEnv) and vec.num_envs == 3


def test_env_checkers_pass_on_tiny_model(tiny_recon: Reconstructor) -> None:
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    for mode in ("delete", "placeholder"):
        env = _env(tiny_recon, mask_mode=mode)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the -inf/inf feature bounds are part of the contract
            check_env(env)
            sb3_check_env(env)


def test_observation_contract(tiny_recon: Reconstructor) -> None:
    env = _env(tiny_recon, window=8, context_size=3, max_tokens=None)
    space = env.observation_space
    assert set(space.spaces) == {"token_ids", "context_ids", "token_features", "valid", "global_features"}
    assert space["token_ids"].shape == (8,) and space["token_ids"].dtype == np.int64
    assert space["context_ids"].shape == (6,) and space["context_ids"].dtype == np.int64
    assert (
        space["token_features"].shape == (8, len(TOKEN_FEATURES))
        and space["token_features"].dtype == np.float32
    )
    assert space["global_features"].shape == (len(GLOBAL_FEATURES),)
    assert int(space["token_ids"].high.max()) == env.vocab_size == env.pad_id == len(tiny_recon.tokenizer)

    obs, info = env.reset(options={"document": 0, "target_rate": 0.25})
    doc = np.asarray(DOCS[0])
    np.testing.assert_array_equal(obs["token_ids"], doc[:8])
    np.testing.assert_array_equal(obs["context_ids"][:3], [env.pad_id] * 3)  # nothing before the first window
    np.testing.assert_array_equal(obs["context_ids"][3:], doc[8:11])
    features = tiny_recon.token_bits([DOCS[0]])[0]
    np.testing.assert_allclose(obs["token_features"][:, 0], features[:8], atol=1e-4)
    assert obs["global_features"][GLOBAL_FEATURES.index("target_rate")] == pytest.approx(0.25)

    action = np.zeros(8, dtype=np.int8)
    action[[5, 7]] = 1
    obs, _, _, _, info = env.step(action)
    np.testing.assert_array_equal(obs["token_ids"], doc[8:16])
    expected_before = doc[5:8].copy()
    expected_before[[0, 2]] = env.mask_token_id  # tokens 5 and 7 were masked
    np.testing.assert_array_equal(obs["context_ids"][:3], expected_before)
    glob = dict(zip(GLOBAL_FEATURES, obs["global_features"]))
    assert glob["progress"] == pytest.approx(8 / 23) and glob["rate_so_far"] == pytest.approx(2 / 8)
    assert glob["required_rate"] == pytest.approx((0.25 * 23 - 2) / 15)
    assert info["rate"] == pytest.approx(2 / 8) and info["masked_tokens"] == 2

    env.step(np.zeros(8, dtype=np.int8))
    obs, _, terminated, _, info = env.step(np.ones(8, dtype=np.int8))  # last window: 7 real tokens, 1 pad
    assert terminated
    assert info["masked_tokens"] == 2 + 7 and info["decided_tokens"] == 23  # padding never counts


# ---------------------------------------------------------------------------- rewards
@pytest.mark.parametrize("mode", ["delete", "placeholder"])
def test_information_bits_equal_token_bits_of_the_masked_document(
    tiny_recon: Reconstructor, mode: str
) -> None:
    env = _env(tiny_recon, mask_mode=mode, window=5)
    for seed in range(3):
        _, infos, reset_info = _play(env, seed=seed, action_seed=seed)
        record = env.pop_completed_episodes()[-1]
        reference = tiny_recon.token_bits([record.ids.tolist()], [record.mask.tolist()], mode=mode)[0]
        assert record.document == reset_info["document"]
        assert record.bits == pytest.approx(float(reference[record.mask].sum()), rel=1e-5)
        for t, info in enumerate(infos):
            window = slice(5 * t, 5 * (t + 1))
            assert info["step_bits"] == pytest.approx(
                float(reference[window][record.mask[window]].sum()), rel=1e-5, abs=1e-6
            )


def test_reward_formula(tiny_recon: Reconstructor) -> None:
    for reward_type in ("information", "simple"):
        env = _env(tiny_recon, reward_type=reward_type, bits_weight=0.2, rate_penalty=3.0, target_rate=0.4)
        rewards, infos, _ = _play(env, seed=5, action_seed=1)
        record = env.pop_completed_episodes()[-1]
        n = len(record.ids)
        if reward_type == "simple":
            surprisal = tiny_recon.token_bits([record.ids.tolist()])[0]
            assert record.bits == pytest.approx(float(surprisal[record.mask].sum()), rel=1e-4)
        masked_per_step = np.diff([0] + [i["masked_tokens"] for i in infos])
        expected = (masked_per_step - 0.2 * np.array([i["step_bits"] for i in infos])) / n
        expected[-1] -= 3.0 * abs(record.mask.sum() / n - 0.4)
        np.testing.assert_allclose(rewards, expected, rtol=1e-9, atol=1e-12)
        assert record.episode_return == pytest.approx(sum(rewards))


def test_custom_reward_instance(tiny_recon: Reconstructor) -> None:
    class CountReward(MaskingReward):
        """Every masked token costs one bit."""

        def token_cost(self, masked_bits: np.ndarray | None, surprisal_bits: np.ndarray) -> np.ndarray:
            return np.ones_like(surprisal_bits, dtype=np.float64)

    env = _env(tiny_recon, reward=CountReward(bits_weight=0.5, rate_penalty=0.0))
    assert env._batch.scorer is None  # no LM pass per step for a features-only reward
    rewards, infos, _ = _play(env, seed=0, action_seed=0)
    assert infos[-1]["bits"] == infos[-1]["masked_tokens"]
    assert sum(rewards) == pytest.approx(0.5 * infos[-1]["masked_tokens"] / infos[-1]["doc_tokens"])


@pytest.mark.parametrize("rebuild_chunk", [128, 5])
def test_reconstructor_updates_reach_running_episodes(
    monkeypatch: pytest.MonkeyPatch, rebuild_chunk: int
) -> None:
    """After fine-tuning mid-episode, later steps are priced by the new weights on the masked prefix."""
    import tokenmask.envs.scoring

    monkeypatch.setattr(tokenmask.envs.scoring, "REBUILD_CHUNK", rebuild_chunk)
    recon = tiny_reconstructor(seed=3)
    env = _env(recon, window=4, documents=[DOCS[3]])
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    first = [env.step(rng.integers(0, 2, size=4))[4] for _ in range(3)]
    with torch.no_grad():
        for p in recon.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    recon.mark_weights_changed()  # in-place edits outside ReconstructorFinetuner are announced
    later = []
    while True:
        _, _, terminated, _, info = env.step(rng.integers(0, 2, size=4))
        later.append(info)
        if terminated:
            break
    record = env.pop_completed_episodes()[-1]
    reference = recon.token_bits([record.ids.tolist()], [record.mask.tolist()])[0]
    for t, info in enumerate(later, start=len(first)):
        window = slice(4 * t, 4 * (t + 1))
        assert info["step_bits"] == pytest.approx(
            float(reference[window][record.mask[window]].sum()), rel=1e-5, abs=1e-6
        )


# ---------------------------------------------------------------------------- vector forms
def test_single_env_equals_vector_env(tiny_recon: Reconstructor) -> None:
    num_envs, seed, steps = 3, 11, 25
    vec = TokenMaskVectorEnv(
        num_envs=num_envs, documents=DOCS, reconstructor=tiny_recon, window=4, target_rate_range=(0.2, 0.8)
    )
    singles = [_env(tiny_recon, window=4, target_rate_range=(0.2, 0.8)) for _ in range(num_envs)]
    vec.reset(seed=seed)
    for i, env in enumerate(singles):
        env.reset(seed=seed + i)
    rng = np.random.default_rng(0)
    episodes_ended = 0
    for _ in range(steps):
        actions = rng.integers(0, 2, size=(num_envs, 4))
        _, rewards, terminated, _, infos = vec.step(actions)
        for i, env in enumerate(singles):
            _, reward, done, _, info = env.step(actions[i])
            assert reward == pytest.approx(rewards[i], rel=1e-5, abs=1e-7)
            assert done == terminated[i]
            if done:
                episodes_ended += 1
                assert infos["final_info"]["document"][i] == info["document"]
                _, reset_info = env.reset()
                assert infos["document"][i] == reset_info["document"]
                assert infos["target_rate"][i] == pytest.approx(reset_info["target_rate"])
    assert episodes_ended >= num_envs


def test_vector_env_matches_gymnasium_sync_vector_env(tiny_recon: Reconstructor) -> None:
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    def make() -> TokenMaskEnv:
        return _env(tiny_recon, window=6)

    sync = SyncVectorEnv([make, make], autoreset_mode=AutoresetMode.SAME_STEP)
    native = TokenMaskVectorEnv(
        num_envs=2, documents=DOCS, reconstructor=tiny_recon, window=6, context_size=3
    )
    assert native.observation_space == sync.observation_space and native.action_space == sync.action_space
    obs_a, _ = sync.reset(seed=4)
    obs_b, _ = native.reset(seed=4)
    rng = np.random.default_rng(1)
    for _ in range(12):
        for key in obs_a:
            np.testing.assert_allclose(obs_a[key], obs_b[key], rtol=1e-5)
        actions = rng.integers(0, 2, size=(2, 6))
        obs_a, rew_a, term_a, trunc_a, info_a = sync.step(actions)
        obs_b, rew_b, term_b, trunc_b, info_b = native.step(actions)
        np.testing.assert_allclose(rew_a, rew_b, rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(term_a, term_b)
        np.testing.assert_array_equal(trunc_a, trunc_b)
        assert set(info_a) == set(info_b)
        for key in info_a:
            if key.startswith("_"):
                np.testing.assert_array_equal(info_a[key], info_b[key], err_msg=key)
        if "final_info" in info_a:
            np.testing.assert_allclose(info_a["final_info"]["bits"], info_b["final_info"]["bits"], rtol=1e-5)
            for i in np.nonzero(term_a)[0]:
                np.testing.assert_array_equal(
                    info_a["final_obs"][i]["valid"], info_b["final_obs"][i]["valid"]
                )


def test_sb3_adapter_trains_ppo(tiny_recon: Reconstructor) -> None:
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecMonitor

    venv = TokenMaskSB3VecEnv(
        num_envs=2, documents=DOCS, reconstructor=tiny_recon, window=4, reward_type="simple"
    )
    venv.seed(3)
    obs = venv.reset()
    assert obs["token_ids"].shape == (2, 4)
    terminal_seen = False
    for _ in range(12):
        obs, rewards, dones, infos = venv.step(np.ones((2, 4), dtype=np.int64))
        assert rewards.dtype == np.float32 and len(infos) == 2
        for done, info in zip(dones, infos):
            if done:
                terminal_seen = True
                assert venv.observation_space.contains(info["terminal_observation"])
                assert info["rate"] == pytest.approx(1.0)
    assert terminal_seen
    assert venv.get_attr("vocab_size") == [len(tiny_recon.tokenizer)] * 2
    assert len(venv.env_method("pop_completed_episodes")[0]) >= 1
    model = PPO(
        "MultiInputPolicy", VecMonitor(venv), n_steps=8, batch_size=8, n_epochs=1, seed=0, device="cpu"
    )
    model.learn(total_timesteps=32)


def test_span_actions_mask_runs_of_tokens(tiny_recon: Reconstructor) -> None:
    """With span=2 an action entry masks two tokens; rewards equal the per-token env's on the expanded action."""
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    spanned = _env(tiny_recon, span=2)
    assert spanned.action_space == spaces.MultiBinary(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(spanned)
        sb3_check_env(spanned)
    plain = _env(tiny_recon)
    spanned.reset(seed=5)
    plain.reset(seed=5)
    rng = np.random.default_rng(0)
    terminated = False
    while not terminated:
        entries = rng.integers(0, 2, size=2)
        _, reward, terminated, _, info = spanned.step(entries)
        _, expected, plain_done, _, plain_info = plain.step(np.repeat(entries, 2))
        assert reward == pytest.approx(expected) and terminated == plain_done
        assert info["rate"] == pytest.approx(plain_info["rate"])
    record = spanned.pop_completed_episodes()[0]
    mask = record.mask.astype(int)
    assert np.all(
        mask[0 : len(mask) - len(mask) % 2 : 2] == mask[1 : len(mask) - len(mask) % 2 : 2]
    )  # runs of 2
    vec = TokenMaskVectorEnv(num_envs=3, documents=DOCS, reconstructor=tiny_recon, window=4, span=4)
    vec.reset(seed=0)
    vec.step(np.ones((3, 1), dtype=bool))
    with pytest.raises(ValueError, match=r"expected \(3, 1\)"):
        vec.step(np.ones((3, 4), dtype=bool))


# ---------------------------------------------------------------------------- reproducibility and options
def test_same_seed_and_actions_give_identical_rewards(tiny_recon: Reconstructor) -> None:
    a, b = _env(tiny_recon, target_rate_range=(0.1, 0.9)), _env(tiny_recon, target_rate_range=(0.1, 0.9))
    for seed in (0, 1):
        run_a, run_b = _play(a, seed, 7), _play(b, seed, 7)
        assert run_a[0] == run_b[0] and run_a[2] == run_b[2]
    orders = {
        tuple(a.reset(seed=s)[1]["document"] for _ in range(1))
        + tuple(a.reset()[1]["document"] for _ in range(5))
        for s in range(4)
    }
    assert len(orders) > 1  # different seeds, different document orders
    docs = [a.reset(seed=9)[1]["document"]] + [a.reset()[1]["document"] for _ in range(len(DOCS) - 1)]
    assert sorted(docs) == list(range(len(DOCS)))  # one pass visits every document once


def test_target_rate_range_and_reset_options(tiny_recon: Reconstructor) -> None:
    env = _env(tiny_recon, target_rate_range=[0.3, 0.7])
    rates = [env.reset(seed=0)[1]["target_rate"]] + [env.reset()[1]["target_rate"] for _ in range(20)]
    assert all(0.3 <= r <= 0.7 for r in rates) and len(set(rates)) > 10
    _, info = env.reset(options={"target_rate": 0.05, "document": 2})
    assert info["target_rate"] == 0.05 and info["document"] == 2 and info["doc_tokens"] == len(DOCS[2])


def test_from_texts_for_compression(tiny_recon: Reconstructor) -> None:
    texts = ["Short.", "A somewhat longer text that spans more than one window of tokens, surely."]
    env = TokenMaskEnv.from_texts(texts, target_rate=0.3, reconstructor=tiny_recon, window=8)
    assert [len(d) for d in env.documents] == [len(tiny_recon.encode(t)) for t in texts]
    seen = [env.reset(seed=0)[1]] + [env.reset()[1] for _ in range(3)]
    assert [s["document"] for s in seen] == [0, 1, 0, 1] and {s["target_rate"] for s in seen} == {0.3}


def test_corpus_sources(tiny_recon: Reconstructor, tmp_path: object) -> None:
    import datasets

    from tokenmask.data import sample_corpus_path

    path = tmp_path / "texts.jsonl"  # type: ignore[operator]
    path.write_text(
        "\n".join(json.dumps({"body": "Hello there, general reader. " * k}) for k in (3, 5)), encoding="utf-8"
    )
    corpus = DocumentCorpus.build(str(path), tiny_recon, text_column="body", min_tokens=4)
    assert len(corpus) == 2
    ids_dataset = datasets.Dataset.from_dict({"input_ids": DOCS})
    assert [d.tolist() for d in DocumentCorpus.build(ids_dataset, tiny_recon).documents] == DOCS
    text_dataset = datasets.Dataset.from_dict({"text": ["one two three four five six"]})
    assert len(DocumentCorpus.build(text_dataset, tiny_recon, min_tokens=2)) == 1
    sample = DocumentCorpus.build("sample", tiny_recon, max_tokens=128, min_tokens=16)
    assert len(sample) >= 120 and sample.max_length == 128
    assert (
        DocumentCorpus.build(str(sample_corpus_path()), tiny_recon, max_tokens=128, min_tokens=16).num_tokens
        == sample.num_tokens
    )


def test_texts_are_cut_at_character_boundaries(tiny_recon: Reconstructor) -> None:
    """A character of several tokens (CJK, emoji) is never split between two documents (no U+FFFD)."""
    from tokenmask.data import chunk_ids

    text = "日本語のテキスト🙂とemoji😀。Ünïcödé. " * 30
    ids = tiny_recon.encode(text)
    assert any(
        "\ufffd" in tiny_recon.decode(p) for p in chunk_ids(ids, 16, 1)
    )  # a blind cut would break some
    for source in ([text], [ids]):  # a text, and token ids that are the tokenizer's own encoding of one
        for continuation in (0, 4):
            corpus = DocumentCorpus.build(
                source, tiny_recon, max_tokens=16, min_tokens=1, continuation_tokens=continuation
            )
            assert len(corpus) > 10 and corpus.max_length <= 16
            assert not any("\ufffd" in tiny_recon.decode(d.tolist()) for d in corpus.documents)


def test_render_ansi_shows_masks(tiny_recon: Reconstructor) -> None:
    env = TokenMaskEnv.from_texts(
        ["The cat sat on the mat and looked around."], reconstructor=tiny_recon, window=4, render_mode="ansi"
    )
    env.reset()
    env.step(np.array([0, 1, 0, 0]))
    assert "<mask>" in env.render()


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": 0}, "window must be >= 1"),
        ({"target_rate": 1.0}, "target_rate must be in \\[0, 1\\)"),
        ({"target_rate": -0.1}, "target_rate must be in \\[0, 1\\)"),
        ({"target_rate_range": (0.7, 0.3)}, "lo > hi"),
        ({"target_rate_range": (0.2, 1.5)}, "must be in \\[0, 1\\)"),
        ({"reward_type": "nope"}, "Unknown reward_type 'nope'"),
        ({"mask_mode": "hide"}, "Unknown mask_mode 'hide'"),
        ({"windoww": 4}, "Unknown config key"),
        ({"documents": []}, "is empty"),
        ({"documents": [[1, 2], [3]], "window": 4}, "shorter than 4 tokens"),
        ({"documents": [[1, 2, 10**7]], "window": 1}, "outside the reconstructor's vocabulary"),
        ({"reward": "information"}, "MaskingReward instance"),
        ({"span": 3}, "span must be >= 1 and divide window \\(4\\)"),
        ({"span": 0}, "span must be >= 1"),
        ({"recoverability_weight": -1.0}, "recoverability_weight must be a finite number >= 0"),
        ({"recoverability_weight": 4.0}, "must stay below rate_penalty"),
        ({"recoverability_weight": 0.5, "judge": "default"}, "judge must be a tokenmask Reconstructor"),
    ],
)
def test_bad_arguments_fail_at_construction(tiny_recon: Reconstructor, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _env(tiny_recon, **kwargs)


def test_bad_actions_and_calls(tiny_recon: Reconstructor) -> None:
    env = _env(tiny_recon)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(4))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape \\(5,\\), expected \\(4,\\)"):
        env.step(np.zeros(5))
    with pytest.raises(ValueError, match="0 or 1"):
        env.step(np.full(4, 2))
    with pytest.raises(ValueError, match="Unknown reset option"):
        env.reset(options={"rate": 0.1})
    with pytest.raises(ValueError, match="outside the corpus"):
        env.reset(options={"document": 99})
    while not env.step(np.zeros(4))[2]:
        pass
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(4))
    vec = TokenMaskVectorEnv(num_envs=2, documents=DOCS, reconstructor=tiny_recon, window=4)
    vec.reset(seed=0)
    with pytest.raises(ValueError, match="expected \\(2, 4\\)"):
        vec.step(np.zeros(4))
    with pytest.raises(ValueError, match="num_envs"):
        TokenMaskVectorEnv(num_envs=0, documents=DOCS, reconstructor=tiny_recon)


def test_config_object_and_overrides(tiny_recon: Reconstructor) -> None:
    config = TokenMaskConfig(window=6, target_rate=0.2)
    env = TokenMaskEnv(config, documents=DOCS, reconstructor=tiny_recon, target_rate=0.3)
    assert env.config.window == 6 and env.config.target_rate == 0.3 and config.target_rate == 0.2
    assert isinstance(env.reward, InformationReward) and math.isclose(env.reward.bits_weight, 0.1)
