"""Behaviour cloning on ``tokenmask label`` masks: span mapping, teacher-forced replay, a lower NLL."""

from __future__ import annotations

import numpy as np
import pytest
from stable_baselines3 import PPO

from tokenmask.envs.env_config import TokenMaskConfig
from tokenmask.envs.episodes import GLOBAL_FEATURES
from tokenmask.envs.sb3_vec_env import TokenMaskSB3VecEnv
from tokenmask.policies import TokenMaskPolicy
from tokenmask.train.cloning import clone_policy, collect_demonstrations, demonstration_nll, label_actions
from tokenmask.train.labels import load_labels, span_keep_from_keep

ENV = TokenMaskConfig(window=16, span=8, context_size=4, max_tokens=64)
RATE_SO_FAR = GLOBAL_FEATURES.index("rate_so_far")


@pytest.fixture
def model(tiny_recon, labels_dir):
    """An untrained PPO agent on the env options of the replay (its env plays the label contexts)."""
    contexts = [list(c) for c in load_labels(labels_dir)["context_ids"]]
    env = TokenMaskSB3VecEnv(num_envs=2, config=ENV, reconstructor=tiny_recon, documents=contexts)
    return PPO(TokenMaskPolicy, env, n_steps=8, batch_size=16, seed=0, device="cpu")


def test_label_actions_map_spans_to_env_entries():
    keep = np.array([1] * 8 + [0] * 8 + [0] * 3 + [1] * 5 + [0] * 8, dtype=bool)
    same = label_actions(keep, 8, 8, 16)
    assert same.tolist() == [[False, True], [False, True]]
    assert (~same.reshape(-1)).tolist() == span_keep_from_keep(keep, 8).tolist()
    finer = label_actions(keep, 8, 4, 16)  # the span cut to hit the rate is decided run by run
    assert finer.astype(int).tolist() == [[0, 0, 1, 1], [1, 0, 1, 1]]
    tokens = label_actions(keep[:30], 8, 1, 16)  # past the context's end: keep
    assert tokens.shape == (2, 16) and tokens[1, 16 - 2 :].sum() == 0 and tokens.sum() == (~keep[:30]).sum()
    with pytest.raises(ValueError, match="Fix:"):
        label_actions(keep, 8, 3, 12)


def test_replay_is_teacher_forced(tiny_recon, labels_dir):
    dataset = load_labels(labels_dir)
    demos = collect_demonstrations(dataset, tiny_recon, ENV)
    steps = 32 // ENV.window
    assert len(demos) == len(dataset) * steps
    # samples come per rate group, step-major within a group (all of its labels' first windows, then the second ...)
    position, offset = {}, 0
    for rate in sorted(set(dataset["rate"])):
        group = [i for i in range(len(dataset)) if dataset["rate"][i] == rate]
        for j, i in enumerate(group):
            position[i] = [offset + t * len(group) + j for t in range(steps)]
        offset += steps * len(group)
    for i, samples in position.items():
        plan = label_actions(np.asarray(dataset["keep"][i], dtype=bool), 8, ENV.span, ENV.window)
        assert np.array_equal(demos.actions[samples], plan.astype(np.float32))
        rate_so_far = demos.observations["global_features"][samples, RATE_SO_FAR]
        assert rate_so_far[0] == 0.0
        assert rate_so_far[1] == pytest.approx(plan[0].sum() * ENV.span / ENV.window)


def test_cloning_lowers_the_policys_nll_on_its_labels(model, labels_dir, tiny_recon):
    demos = collect_demonstrations(labels_dir, tiny_recon, ENV, model.policy)
    before = demonstration_nll(model, demos)
    history = clone_policy(model, labels_dir, epochs=6, batch_size=8, learning_rate=3e-3)
    after = demonstration_nll(model, demos)
    assert len(history) == 6
    assert after < before - 0.05, (before, after, history)
    assert history[-1] < history[0]


def test_cloning_refuses_env_options_the_policy_was_not_built_for(model, labels_dir, tiny_recon):
    with pytest.raises(ValueError, match="Fix:"):
        clone_policy(
            model,
            labels_dir,
            epochs=1,
            env_options=TokenMaskConfig(window=32, span=8),
            reconstructor=tiny_recon,
        )
