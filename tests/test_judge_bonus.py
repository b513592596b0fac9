"""The judge bonus of TokenMask-v0 on tiny random models: retention as the evaluation defines it, dense credit."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

from tokenmask.envs import DocumentCorpus, JudgeBonus, TokenMaskEnv, TokenMaskVectorEnv
from tokenmask.envs.recoverability import RecoverabilityBonus
from tokenmask.evaluate.metrics import EvalDocument, ReferenceNLLs, score_compressed_ids
from tokenmask.reconstructors import DEFAULT_MODEL, Reconstructor, load_tokenizer
from tokenmask.testing import tiny_llama_config

T = 8
# lengths <= max_tokens + T: each list item is one document followed by its continuation (its last T ids)
DOCS = [np.random.default_rng(0).integers(10, 49000, size=n).tolist() for n in (40, 29, 35, 37)]
BONUS = {"recoverability_weight": 0.5, "retention_weight": 1.0, "continuation_tokens": T}


@pytest.fixture(scope="module")
def judge() -> Reconstructor:
    """A frozen tiny judge, loaded as the env loads one: without a mask token."""
    return Reconstructor.from_config(
        tiny_llama_config(), load_tokenizer(DEFAULT_MODEL), seed=3, add_mask_token=False
    )


def _env(recon: Reconstructor, judge: Reconstructor | None, **kwargs: Any) -> TokenMaskEnv:
    options = {
        "window": 4,
        "context_size": 2,
        "max_tokens": 32,
        "documents": DOCS,
        "reconstructor": recon,
        **kwargs,
    }
    return TokenMaskEnv(judge=judge, **options)


def _episode(env: TokenMaskEnv, document: int, actions: list[np.ndarray]) -> tuple[list[float], dict]:
    env.reset(seed=0, options={"document": document})
    rewards = []
    for action in actions:
        _, reward, terminated, _, info = env.step(action)
        rewards.append(reward)
        if terminated:
            return rewards, info
    raise AssertionError("the episode did not end")


def _actions(seed: int, steps: int = 8) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.random(4) < rng.random()).astype(np.int8) for _ in range(steps)]


def test_documents_carry_their_continuation(tiny_recon: Reconstructor) -> None:
    corpus = DocumentCorpus.build(DOCS, tiny_recon, max_tokens=32, min_tokens=4, continuation_tokens=T)
    assert [d.tolist() for d in corpus.documents] == [d[:-T] for d in DOCS]
    assert [c.tolist() for c in corpus.continuations] == [d[-T:] for d in DOCS]
    # longer texts are cut into chunks of max_tokens + T; a chunk too short for min_tokens + T is dropped
    long = np.random.default_rng(1).integers(10, 49000, size=95).tolist()
    cut = DocumentCorpus.build([long], tiny_recon, max_tokens=32, min_tokens=10, continuation_tokens=T)
    assert [d.tolist() for d in cut.documents] == [long[:32], long[40:72]]
    assert [c.tolist() for c in cut.continuations] == [long[32:40], long[72:80]]
    # the continuation is never observed: no observation holds one of its ids where the document has none
    env = _env(tiny_recon, None, continuation_tokens=T)
    obs, info = env.reset(seed=0, options={"document": 0})
    unseen = set(env.corpus.continuations[0].tolist()) - set(env.corpus.documents[0].tolist())
    terminated = False
    while not terminated:
        assert not unseen & set(obs["token_ids"].tolist()) and not unseen & set(obs["context_ids"].tolist())
        obs, _, terminated, _, _ = env.step(np.zeros(4, dtype=np.int8))
    # texts: the document ends at a character boundary, the continuation is the T tokens after it
    text = "Émile a vu 日本語 et 🙂 deux fois. " * 12
    corpus = DocumentCorpus.build([text], tiny_recon, max_tokens=24, min_tokens=4, continuation_tokens=T)
    assert len(corpus) >= 3 and {len(c) for c in corpus.continuations} == {T}
    assert not any("\ufffd" in tiny_recon.decode(d.tolist()) for d in corpus.documents)


def test_retention_bonus_equals_the_evaluation_retention(
    tiny_recon: Reconstructor, judge: Reconstructor
) -> None:
    """The issue's required test: the env's retention is tokenmask.evaluate's per-document retention of the kept ids."""
    plain, bonus = _env(tiny_recon, None, continuation_tokens=T), _env(tiny_recon, judge, **BONUS)
    inside = 0
    for document in range(len(DOCS)):
        actions = _actions(document)
        plain_rewards, _ = _episode(plain, document, actions)
        rewards, info = _episode(bonus, document, actions)
        record = bonus.pop_completed_episodes()[-1]
        assert record.retention == info["retention"] and record.recoverability == info["recoverability"]
        # the evaluation's own functions on the same judge, context (the document) and continuation
        doc = EvalDocument(
            context=record.ids.tolist(), continuation=bonus.corpus.continuations[document].tolist(), text=""
        )
        reference = ReferenceNLLs.compute(judge, [doc])
        scores = score_compressed_ids(judge, [doc], [record.ids[~record.mask].tolist()], 0.5, reference)
        # float32 NLL sums of differently padded batches agree to ~1e-6 nat; the random judge's
        # denominators are ~0.1 nat, so the ratios agree to ~1e-5
        for key, value, helps in (
            ("retention", scores.retention, reference.continue_empty[0] > reference.continue_full[0]),
            ("recoverability", scores.recoverability, reference.recover_empty[0] > reference.recover_full[0]),
        ):
            if helps:
                assert info[key] == pytest.approx(np.clip(value, -1, 2), abs=1e-4), key
                inside += int(key == "retention" and -1 < value < 2)
            else:  # the random judge reads the continuation no better after the document: no signal, a bound
                assert info[key] in (-1.0, 2.0)
        # terminal credit: only the last reward changes, by the weighted sum of both parts
        assert rewards[:-1] == plain_rewards[:-1]
        assert rewards[-1] == pytest.approx(
            plain_rewards[-1] + 0.5 * info["recoverability"] + 1.0 * info["retention"]
        )
    assert inside >= 1  # not every value sits on a clip bound


def test_dense_credit_telescopes_to_the_terminal_bonus(
    tiny_recon: Reconstructor, judge: Reconstructor
) -> None:
    plain = _env(tiny_recon, None, continuation_tokens=T)
    terminal = _env(tiny_recon, judge, **BONUS)
    dense = _env(tiny_recon, judge, judge_credit="dense", **BONUS)
    for document in range(len(DOCS)):
        actions = _actions(10 + document)
        actions[1] = np.zeros(
            4, dtype=np.int8
        )  # a step that masks nothing leaves Phi, and the reward, as it was
        plain_rewards, _ = _episode(plain, document, actions)
        terminal_rewards, terminal_info = _episode(terminal, document, actions)
        dense_rewards, dense_info = _episode(dense, document, actions)
        judge_parts = np.array(dense_rewards) - np.array(plain_rewards)
        assert judge_parts[1] == 0.0
        assert dense.bonus is not None
        keep_all = dense.bonus.bonus(*dense.bonus.keep_all([document]))[0]
        final = dense.bonus.bonus(
            np.array([dense_info["recoverability"]]), np.array([dense_info["retention"]])
        )[0]
        assert judge_parts.sum() == pytest.approx(final - keep_all, abs=1e-5)
        # the final mask's values and bonus are the terminal credit's (another batch: ~1e-5, see above)
        assert terminal_rewards[-1] - plain_rewards[-1] == pytest.approx(final, abs=1e-4)
        assert dense_info["recoverability"] == pytest.approx(terminal_info["recoverability"], abs=1e-4)
        assert dense_info["retention"] == pytest.approx(terminal_info["retention"], abs=1e-4)
        record = dense.pop_completed_episodes()[-1]
        assert record.episode_return == pytest.approx(sum(dense_rewards))


def test_dense_credit_is_one_judge_pass_per_step(
    tiny_recon: Reconstructor, judge: Reconstructor, monkeypatch: pytest.MonkeyPatch
) -> None:
    vec = TokenMaskVectorEnv(
        num_envs=4,
        documents=DOCS,
        reconstructor=tiny_recon,
        judge=judge,
        window=4,
        max_tokens=32,
        judge_credit="dense",
        **BONUS,
    )
    vec.reset(seed=0)
    calls = []
    original = judge.gather_log_probs

    def counting(*args: Any, **kwargs: Any) -> list:
        calls.append(len(args[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(judge, "gather_log_probs", counting)
    # a document's references (keep all, keep none) get one pass of their own, the first time it is seen
    first_seen: list[int] = []
    fill = JudgeBonus._fill_references

    def counting_fill(self: JudgeBonus, documents: list[int]) -> None:
        first_seen.extend(documents)
        fill(self, documents)

    monkeypatch.setattr(JudgeBonus, "_fill_references", counting_fill)
    rng = np.random.default_rng(0)
    for _ in range(12):
        before, seen_before = len(calls), len(first_seen)
        actions = rng.integers(0, 2, size=(4, 4))
        vec.step(actions)
        assert len(calls) - before <= 1 + int(len(first_seen) > seen_before)
    assert sorted(first_seen) == sorted(set(first_seen))  # each document's references once
    assert calls and max(calls) > 2  # several rows' R and F parts share each pass


def test_single_env_equals_vector_env_with_the_judge_bonus(
    tiny_recon: Reconstructor, judge: Reconstructor
) -> None:
    options = {"window": 4, "max_tokens": 32, "context_size": 2, "target_rate_range": (0.2, 0.8), **BONUS}
    for credit in ("terminal", "dense"):
        vec = TokenMaskVectorEnv(
            num_envs=3, documents=DOCS, reconstructor=tiny_recon, judge=judge, judge_credit=credit, **options
        )
        singles = [
            TokenMaskEnv(
                documents=DOCS, reconstructor=tiny_recon, judge=judge, judge_credit=credit, **options
            )
            for _ in range(3)
        ]
        vec.reset(seed=5)
        for i, env in enumerate(singles):
            env.reset(seed=5 + i)
        rng = np.random.default_rng(1)
        ended = 0
        for _ in range(12):  # every sub-env ends an episode within 8 steps
            actions = rng.integers(0, 2, size=(3, 4))
            _, rewards, terminated, _, infos = vec.step(actions)
            for i, env in enumerate(singles):
                _, reward, done, _, info = env.step(actions[i])
                # the judge scores other batches here than there: ratios agree to ~1e-5 (see above)
                assert reward == pytest.approx(rewards[i], abs=1e-4)
                assert done == terminated[i]
                if done:
                    ended += 1
                    for key in ("recoverability", "retention"):
                        assert infos["final_info"][key][i] == pytest.approx(info[key], abs=1e-4)
                    env.reset()
                else:
                    assert "retention" not in info
        assert ended >= 3


def test_checkers_pass_with_the_judge_bonus(tiny_recon: Reconstructor, judge: Reconstructor) -> None:
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    for credit in ("terminal", "dense"):
        env = _env(tiny_recon, judge, judge_credit=credit, **BONUS)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the -inf/inf feature bounds are part of the contract
            check_env(env)
            sb3_check_env(env)


def test_judge_bonus_directly(tiny_recon: Reconstructor, judge: Reconstructor) -> None:
    assert RecoverabilityBonus is JudgeBonus
    ids = [np.asarray(d[:-T]) for d in DOCS]
    conts = [np.asarray(d[-T:]) for d in DOCS]
    bonus = JudgeBonus(judge, tiny_recon, recoverability_weight=0.5, retention_weight=1.0)
    keep = [np.zeros(len(d), dtype=bool) for d in ids]
    rec, ret = bonus.measure(range(4), ids, keep, conts)
    keep_rec, keep_ret = bonus.keep_all(range(4))
    np.testing.assert_allclose(rec, keep_rec, atol=1e-4)  # keeping everything is the reference itself
    np.testing.assert_allclose(ret, keep_ret, atol=1e-4)
    assert set(np.round(keep_rec, 6)) <= {1.0, -1.0}
    # per row, only the parts asked for; the recoverability-only form of before still works
    rec, ret = bonus.measure(
        [0, 1], ids[:2], keep[:2], conts[:2], recover=[True, False], retain=[False, True]
    )
    assert not np.isnan(rec[0]) and np.isnan(rec[1]) and np.isnan(ret[0]) and not np.isnan(ret[1])
    np.testing.assert_allclose(bonus.gains([2], ids[2:3], keep[2:3]), keep_rec[2:3], atol=1e-4)
    with pytest.raises(ValueError, match="continuation_tokens"):
        JudgeBonus(judge, tiny_recon).measure([9], [ids[0]], [keep[0]], retain=True)
    with pytest.raises(ValueError, match="retention_weight must be a finite number >= 0"):
        JudgeBonus(judge, tiny_recon, retention_weight=-1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"retention_weight": 0.5}, "needs the documents' continuations, but continuation_tokens is 0. Fix:"),
        (
            {"retention_weight": -0.5, "continuation_tokens": 4},
            "retention_weight must be a finite number >= 0",
        ),
        ({"recoverability_weight": -1.0}, "recoverability_weight must be a finite number >= 0"),
        (
            {"retention_weight": float("nan"), "continuation_tokens": 4},
            "retention_weight must be a finite number",
        ),
        (
            {"recoverability_weight": 2.0, "retention_weight": 2.0, "continuation_tokens": 4},
            "must stay below rate_penalty",
        ),
        (
            {"judge_credit": "sparse"},
            "Unknown judge_credit 'sparse'. Fix: use one of \\['terminal', 'dense'\\]",
        ),
        ({"continuation_tokens": -1}, "continuation_tokens must be an integer >= 0"),
        (
            {"continuation_tokens": 100},
            "shorter than 104 tokens .*continuation_tokens 100.*Fix: .*continuation_tokens",
        ),
    ],
)
def test_bad_judge_bonus_options_are_one_line_errors(
    tiny_recon: Reconstructor, kwargs: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as error:
        _env(tiny_recon, None, **kwargs)
    assert "\n" not in str(error.value) and "Fix:" in str(error.value)
