"""The agent's policy against a synthetic Dict space with the TokenMask-v0 observation contract."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import A2C, PPO

from tokenmask.policies import (
    PADDING_LOGIT,
    POLICY_ALIAS,
    HashedTokenEmbedding,
    TokenMaskExtractor,
    TokenMaskPolicy,
    count_trainable_parameters,
)

VOCAB = 49153  # SmolLM2's vocabulary + the mask token; also the padding id


def contract_space(window: int = 16, context: int = 8, features: int = 5, globals_: int = 6) -> spaces.Dict:
    return spaces.Dict(
        {
            "token_ids": spaces.Box(0, VOCAB, (window,), np.int64),
            "context_ids": spaces.Box(0, VOCAB, (2 * context,), np.int64),
            "token_features": spaces.Box(-np.inf, np.inf, (window, features), np.float32),
            "valid": spaces.MultiBinary(window),
            "global_features": spaces.Box(-np.inf, np.inf, (globals_,), np.float32),
        }
    )


class FeatureSignEnv(gym.Env):
    """Synthetic env with the TokenMask observation contract: masking a token pays +1 when its first
    feature is positive and -1 otherwise; padded positions (valid = 0) pay -1 if masked."""

    def __init__(self, window: int = 8, context: int = 4) -> None:
        self.observation_space = contract_space(window, context, features=2, globals_=3)
        self.action_space = spaces.MultiBinary(window)
        self.window = window
        self._obs: dict[str, np.ndarray] = {}
        self._t = 0

    def _observe(self) -> dict[str, np.ndarray]:
        rng = self.np_random
        valid = np.ones(self.window, dtype=np.int8)
        valid[rng.integers(self.window // 2, self.window + 1) :] = 0
        ids = np.where(valid == 1, rng.integers(0, VOCAB - 1, self.window), VOCAB)
        return {
            "token_ids": ids.astype(np.int64),
            "context_ids": rng.integers(0, VOCAB + 1, self.observation_space["context_ids"].shape).astype(
                np.int64
            ),
            "token_features": rng.normal(size=(self.window, 2)).astype(np.float32),
            "valid": valid,
            "global_features": rng.random(3).astype(np.float32),
        }

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._t = 0
        self._obs = self._observe()
        return self._obs, {}

    def step(self, action):
        gain = np.where(self._obs["token_features"][:, 0] > 0, 1.0, -1.0)
        gain = np.where(self._obs["valid"] == 1, gain, -1.0)
        reward = float((np.asarray(action) * gain).sum()) / self.window
        self._t += 1
        self._obs = self._observe()
        return self._obs, reward, self._t >= 4, False, {}


def batch_of(space: spaces.Dict, size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    space.seed(seed)
    samples = [space.sample() for _ in range(size)]
    return {k: torch.as_tensor(np.stack([s[k] for s in samples])) for k in space.spaces}


def test_parameter_count_is_between_half_a_million_and_two_million():
    policy = TokenMaskPolicy(contract_space(), spaces.MultiBinary(16), lambda _: 3e-4)
    count = count_trainable_parameters(policy)
    assert 500_000 <= count <= 2_000_000, count


def test_padded_positions_are_never_masked_and_probabilities_are_per_token():
    space = contract_space()
    policy = TokenMaskPolicy(space, spaces.MultiBinary(16), lambda _: 3e-4)
    obs = batch_of(space, 4)
    obs["valid"][:, 10:] = 0
    obs["valid"][:, :10] = 1
    probs = policy.mask_probabilities(obs)
    assert probs.shape == (4, 16)
    assert torch.all(probs[:, 10:] < 1e-10)
    assert torch.all((probs[:, :10] > 0.3) & (probs[:, :10] < 0.7))  # small output gain: ~0.5 at init
    assert torch.sigmoid(torch.tensor(PADDING_LOGIT)) < 1e-10


def test_span_policy_gives_one_probability_per_run_of_tokens():
    """With MultiBinary(window // span) the entry's logit is the mean over its valid tokens; all-padding runs are kept."""
    space = contract_space()
    policy = TokenMaskPolicy(space, spaces.MultiBinary(4), lambda _: 3e-4)  # window 16, span 4
    obs = batch_of(space, 3)
    obs["valid"][:] = 1
    obs["valid"][:, 10:] = 0  # entry 2 half valid, entry 3 all padding
    entries = policy.action_probabilities(obs)
    tokens = policy.mask_probabilities(obs)
    assert entries.shape == (3, 4) and tokens.shape == (3, 16)
    assert torch.equal(tokens, entries.repeat_interleave(4, dim=1))
    assert torch.all(entries[:, 3] < 1e-10) and torch.all(entries[:, 2] > 1e-3)
    actions, _, _ = policy(obs)
    assert actions.shape == (3, 4)
    with pytest.raises(ValueError, match="does not divide the window"):
        TokenMaskPolicy(space, spaces.MultiBinary(5), lambda _: 3e-4)


def test_token_logits_follow_their_own_token():
    """Changing one token's features changes mostly that token's logit (per-token head, shared weights)."""
    space = contract_space()
    policy = TokenMaskPolicy(space, spaces.MultiBinary(16), lambda _: 3e-4, ortho_init=False)
    obs = batch_of(space, 1)
    obs["valid"][:] = 1
    base = policy.mask_probabilities(obs)
    changed = {k: v.clone() for k, v in obs.items()}
    changed["token_features"][0, 3] += 50.0
    delta = (policy.mask_probabilities(changed) - base).abs()[0]
    assert delta[3] > 0 and delta[3] == delta.max()


def test_hashed_embedding_maps_padding_to_its_own_row():
    table = HashedTokenEmbedding(num_buckets=64, embed_dim=4, padding_id=VOCAB)
    ids = torch.tensor([0, 1, 49151, VOCAB])
    for which in (0, 1):
        buckets = table.buckets(ids, which)
        assert buckets[-1] == 64 and bool((buckets[:-1] < 64).all())
    assert table(ids).shape == (4, 4)


def test_extractor_rejects_a_space_without_the_contract_keys():
    with pytest.raises(ValueError, match="lacks key"):
        TokenMaskExtractor(spaces.Dict({"token_ids": spaces.Box(0, 10, (4,), np.int64)}))


@pytest.mark.parametrize("algorithm", [PPO, A2C])
def test_policy_works_with_ppo_and_a2c_by_class_alias_and_policy_kwargs(algorithm):
    env = FeatureSignEnv()
    kwargs = {
        "n_steps": 8,
        "seed": 0,
        "device": "cpu",
        **({"batch_size": 8, "n_epochs": 1} if algorithm is PPO else {}),
    }
    small = {
        "features_extractor_kwargs": {"d_model": 32, "num_layers": 1, "num_buckets": 256, "embed_dim": 16}
    }
    by_class = algorithm(TokenMaskPolicy, env, policy_kwargs=small, **kwargs)
    by_alias = algorithm(
        POLICY_ALIAS, env, policy_kwargs={**small, "net_arch": {"pi": [16], "vf": [16]}}, **kwargs
    )
    extractor_only = algorithm(
        "MultiInputPolicy",
        env,
        policy_kwargs={"features_extractor_class": TokenMaskExtractor, **small},
        **kwargs,
    )
    for model in (by_class, by_alias, extractor_only):
        model.learn(8)
        action, _ = model.predict(env.reset(seed=1)[0], deterministic=True)
        assert action.shape == (8,) and set(np.unique(action)) <= {0, 1}
    assert isinstance(by_alias.policy, TokenMaskPolicy)
    assert by_alias.policy.mlp_extractor.actor[0].out_features == 16


def test_ppo_learns_a_per_token_rule():
    """Mask tokens with a positive first feature: the trained policy does, and keeps padding."""
    from stable_baselines3.common.env_util import make_vec_env

    env = make_vec_env(FeatureSignEnv, n_envs=16, seed=0)
    small = {
        "features_extractor_kwargs": {"d_model": 32, "num_layers": 1, "num_buckets": 256, "embed_dim": 16}
    }
    model = PPO(
        TokenMaskPolicy,
        env,
        n_steps=16,
        batch_size=128,
        n_epochs=4,
        learning_rate=3e-3,
        policy_kwargs=small,
        seed=0,
        device="cpu",
    )
    model.learn(1024)
    obs = batch_of(env.observation_space, 64, seed=3)
    obs["valid"][:, :4] = 1
    probs = model.policy.mask_probabilities(obs).detach()
    positive = obs["token_features"][..., 0] > 0
    valid = obs["valid"] == 1
    assert probs[positive & valid].mean() > probs[~positive & valid].mean() + 0.2
    assert probs[~valid].max() < 1e-6
