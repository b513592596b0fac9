"""The agent as a compressor: exact rates, the ``agent:RUN_DIR`` method, ``tokenmask compress``."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from conftest import save_tiny_run

from tokenmask import api, shipped_agent
from tokenmask.cli import main
from tokenmask.config import load_config
from tokenmask.envs.env_config import ENV_OPTION_KEYS
from tokenmask.evaluate.compressor import RATE_TOLERANCE, MethodContext, build_method, drop_highest
from tokenmask.testing import tiny_reconstructor
from tokenmask.train import agent as agent_module
from tokenmask.train.agent import AgentCompressor
from tokenmask.train.config import TrainConfig
from tokenmask.train.text_samples import STROKE, strike_through

QUICK = Path(__file__).resolve().parents[1] / "configs" / "dev" / "quick_test.json"
TEXTS = [
    "The tokenizer splits text into tokens; the model predicts each token from the ones before it. " * 3,
    "Lists are mutable sequences, typically used to store collections of homogeneous items.",
    "x = 1",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder holding an untrained agent (tiny random reconstructor): enough for the compressor's mechanics."""
    return save_tiny_run(tmp_path_factory.mktemp("agent") / "run")


@pytest.fixture(scope="module")
def agent(run_dir) -> AgentCompressor:
    return AgentCompressor.load(str(run_dir), device="cpu")


def test_drop_highest_drops_exactly_count_and_breaks_ties_early():
    keep = drop_highest(np.array([0.2, 0.9, 0.9, 0.1]), 2)
    assert keep.tolist() == [True, False, False, True]
    assert drop_highest(np.array([0.5, 0.5, 0.5]), 1).tolist() == [False, True, True]
    assert drop_highest(np.zeros(3), 5).sum() == 0


@pytest.mark.parametrize("rate", [0.3, 0.5, 0.7])
def test_agent_hits_the_requested_rate_within_one_percent(agent, rate):
    contexts = [agent.reconstructor.encode(t) for t in TEXTS[:2]]
    outputs = agent.compress(contexts, rate)
    kept = [len(agent.tokenizer(o.text, add_special_tokens=False)["input_ids"]) for o in outputs]
    achieved = 1 - sum(kept) / sum(len(c) for c in contexts)
    assert abs(achieved - rate) <= 0.01
    for output, ids in zip(outputs, contexts):
        assert output.keep is not None and output.keep.shape == (len(ids),)


def test_scores_are_probabilities_and_deterministic(agent):
    contexts = [agent.reconstructor.encode(t) for t in TEXTS]
    first = agent.mask_scores(contexts, 0.5)
    second = agent.mask_scores(contexts, 0.5)
    for a, b, ids in zip(first, second, contexts):
        assert a.shape == (len(ids),) and np.all((a >= 0) & (a <= 1))
        np.testing.assert_allclose(a, b)
    assert agent.keep_masks([[]], 0.5)[0].shape == (0,)


def test_agent_method_is_registered_for_evaluate(run_dir, tiny_recon):
    method = build_method(f"agent:{run_dir}", MethodContext(judge=tiny_recon, device="cpu"))
    assert isinstance(method, AgentCompressor) and method.name == f"agent:{run_dir}"
    assert set(method.env_options) == set(ENV_OPTION_KEYS)
    with pytest.raises(ValueError, match="not a tokenmask run folder"):
        build_method("agent:/nonexistent/run", MethodContext(judge=tiny_recon, device="cpu"))


def test_compress_command_reads_stdin(run_dir, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO(TEXTS[0]))
    assert main(["compress", "--agent", str(run_dir), "--rate", "0.5", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert 0 < len(captured.out.strip()) < len(TEXTS[0])
    assert "rate 0.5" in captured.err
    monkeypatch.setattr("sys.stdin", io.StringIO("   "))
    assert main(["compress", "--agent", str(run_dir)]) == 2


def test_strike_through_marks_removed_tokens_only(tiny_recon):
    ids = tiny_recon.encode("keep this drop that")
    keep = np.array([True, True, False, False][: len(ids)] + [True] * max(0, len(ids) - 4))
    text = strike_through(tiny_recon, ids, keep)
    assert text.replace(STROKE, "") == tiny_recon.decode(ids)
    assert STROKE in text and text.startswith(tiny_recon.decode(ids[:2]))


def test_span_agent_scores_whole_runs_and_hits_the_rate(tmp_path):
    """An agent trained with span=4 decides runs of 4 tokens: its scores are constant on each run of a window."""
    save_tiny_run(tmp_path / "run", {"env.span": 4})
    agent = AgentCompressor.load(str(tmp_path / "run"), device="cpu")
    assert agent.policy.action_space.n == agent.env_options["window"] // 4
    contexts = [agent.reconstructor.encode(TEXTS[0])]
    scores = agent.mask_scores(contexts, 0.5)[0]
    full = len(scores) - len(scores) % 4
    assert np.allclose(scores[:full].reshape(-1, 4), scores[:full].reshape(-1, 4)[:, :1])
    outputs = agent.compress(contexts, 0.5)
    kept = len(agent.tokenizer(outputs[0].text, add_special_tokens=False)["input_ids"])
    assert abs(1 - kept / len(contexts[0]) - 0.5) <= 0.01


def test_keep_masks_fit_the_emitted_rate_and_words_never_fuse(agent):
    """The base class's fit_rate: the emitted text, re-tokenized, hits the rate; a dropped space leaves one."""
    text = "a\npolicy is a popular\nalgorithm for names,\nnumbers and\tcode: x = f(y)  # Café 日本語 " * 4
    ids = agent.reconstructor.encode(text)
    keep = agent.keep_masks([ids], 0.5)[0]
    emitted = agent.emitted_text(ids, keep)
    kept = len(agent.tokenizer(emitted, add_special_tokens=False)["input_ids"])
    assert abs(1 - kept / len(ids) - 0.5) <= RATE_TOLERANCE + 1 / len(ids)
    assert "apolicy" not in emitted and "popularalgorithm" not in emitted and "names,numbers" not in emitted
    output = agent.compress([ids], 0.5)[0]
    assert output.text == agent.emitted_text(ids, output.keep)


def test_one_env_for_every_document_and_no_lm_pass_per_window(agent, monkeypatch):
    """The fast pass: all documents of a call are rows of one env, and no masked-prefix pricing runs per window."""
    from tokenmask.envs.scoring import IncrementalScorer

    built = []
    real = agent_module.documents_env

    def counting(documents, *args, **kwargs):  # type: ignore[no-untyped-def]
        built.append(len(documents))
        return real(documents, *args, **kwargs)

    def forbidden(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the fast pass priced masked tokens window by window")

    monkeypatch.setattr(agent_module, "documents_env", counting)
    monkeypatch.setattr(IncrementalScorer, "score", forbidden)
    contexts = [agent.reconstructor.encode(t) for t in TEXTS] * 3
    scores = agent.mask_scores(contexts, 0.5)
    assert built == [len(contexts)]
    assert [len(s) for s in scores] == [len(c) for c in contexts]


def test_exact_bits_prices_the_masked_prefix_as_in_training(agent, monkeypatch):
    from tokenmask.envs.scoring import IncrementalScorer

    calls = []
    real_score = IncrementalScorer.score

    def counting(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real_score(self, *args, **kwargs)

    monkeypatch.setattr(IncrementalScorer, "score", counting)
    exact = AgentCompressor(
        agent.policy, agent.reconstructor, agent.env_options, exact_bits=True, batch_documents=2
    )
    contexts = [agent.reconstructor.encode(t) for t in TEXTS]
    scores = exact.mask_scores(contexts, 0.5)
    assert calls and all(np.all((s >= 0) & (s <= 1)) for s in scores)
    fast = agent.mask_scores(contexts, 0.5)
    assert [s.shape for s in scores] == [s.shape for s in fast]


def test_agent_default_is_the_shipped_agent(run_dir, tiny_recon, monkeypatch, tmp_path):
    from tokenmask.errors import InputError
    from tokenmask.evaluate.runner import check_methods

    monkeypatch.setattr(shipped_agent, "DEFAULT_AGENT_DIR", tmp_path / "agents" / "default")
    with pytest.raises(api.AgentNotFoundError, match="no agent ships") as info:
        check_methods(["agent:default"])
    assert "Fix:" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(InputError, match="needs a run folder.*agent:default"):
        check_methods(["agent"])
    monkeypatch.setattr(shipped_agent, "DEFAULT_AGENT_DIR", run_dir)
    check_methods(["agent:default"])
    method = build_method("agent:default", MethodContext(judge=tiny_recon, device="cpu"))
    assert isinstance(method, AgentCompressor) and method.name == "agent:default"


def test_evaluate_checks_agent_folders_before_loading_a_model(tmp_path):
    from tokenmask.errors import InputError
    from tokenmask.evaluate.runner import check_methods
    from tokenmask.train.run_folder import RunFolderError

    with pytest.raises(InputError, match="no such run folder"):
        check_methods([f"agent:{tmp_path / 'missing'}"])
    with pytest.raises(RunFolderError):
        check_methods([f"agent:{tmp_path}"])


def test_position_agent_compresses_without_any_lm_pass(tmp_path, monkeypatch):
    """token_features="position": the env observes no LM output, so the compressor runs no LM forward at all."""
    from tokenmask.envs.episodes import GLOBAL_FEATURES
    from tokenmask.envs.sb3_vec_env import TokenMaskSB3VecEnv
    from tokenmask.reconstructors import Reconstructor

    config = load_config(
        TrainConfig,
        QUICK,
        {"run_dir": str(tmp_path / "run"), "joint_period": 0, "env.token_features": "position"},
    )
    recon = tiny_reconstructor(seed=config.seed)
    env = TokenMaskSB3VecEnv(num_envs=2, config=config.env, reconstructor=recon, judge=recon)
    obs = env.reset()
    feats, valid = obs["token_features"], obs["valid"].astype(bool)
    assert np.all(feats[..., :4] == 0) and np.all(feats[..., 4][valid] >= 0)
    assert np.all(obs["global_features"][:, GLOBAL_FEATURES.index("mean_masked_bits")] == 0)
    save_tiny_run(tmp_path / "run", {"env.token_features": "position"})
    agent = AgentCompressor.load(str(tmp_path / "run"), device="cpu")

    def forbidden(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a position agent ran an LM forward")

    monkeypatch.setattr(Reconstructor, "last_hidden_state", forbidden)
    monkeypatch.setattr(Reconstructor, "forward", forbidden, raising=False)
    contexts = [agent.reconstructor.encode(t) for t in TEXTS]
    outputs = agent.compress(contexts, 0.5)
    kept = len(agent.tokenizer(outputs[0].text, add_special_tokens=False)["input_ids"])
    assert abs(1 - kept / len(contexts[0]) - 0.5) <= 0.01
    with pytest.raises(ValueError, match="token_features"):
        load_config(TrainConfig, QUICK, {"env.token_features": "bogus"})
