"""TokenMaskMoves-v0, MovePolicy and move_agent: the table's gains are tokenmask.evaluate's metrics, the rule is the
search's, the env and the policy behave as Gymnasium and SB3 expect, and training learns (tiny random judge)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from stable_baselines3 import PPO

import tokenmask  # noqa: F401  (registers the envs)
from tokenmask.envs.moves import (
    MOVE_FEATURES,
    MoveTable,
    TokenMaskMovesEnv,
    build_move_table,
    observation_rows,
)
from tokenmask.evaluate.compressor import MethodContext, build_method
from tokenmask.evaluate.metrics import EvalDocument, ReferenceNLLs, score_compressed_ids
from tokenmask.evaluate.move_agent import load_move_policy, split_move_agent_argument
from tokenmask.evaluate.runner import check_methods
from tokenmask.policies import MovePolicy
from tokenmask.testing import random_documents
from tokenmask.train.moves import clone, greedy, rewards

RATE = 0.5


@pytest.fixture(scope="module")
def documents() -> list[EvalDocument]:
    return random_documents(3, seed=0)


@pytest.fixture(scope="module")
def search(tiny_recon):  # type: ignore[no-untyped-def]
    return build_method("refine_lookahead:p4:truncation", MethodContext(judge=tiny_recon))


@pytest.fixture(scope="module")
def table(tiny_recon, search, documents) -> MoveTable:  # type: ignore[no-untyped-def]
    return build_move_table(search, tiny_recon, documents, [RATE, 0.3], chunk=2)


def test_table_gains_are_the_evaluation_metrics(tiny_recon, search, documents, table) -> None:  # type: ignore[no-untyped-def]
    """Choosing a candidate per row changes recoverability and retention exactly as tokenmask.evaluate scores the
    chosen masks against the base masks (the env's reward terms, up to the mean denominators)."""
    reference = ReferenceNLLs.compute(tiny_recon, documents)
    rows = np.flatnonzero(table.rate == RATE)
    judged = search.judged_moves([d.context for d in documents], RATE)
    choice = np.array([len(m.masks) - 1 for m in judged])  # the last judged candidate (the base where none)
    scores = []
    for pick in (np.zeros(len(judged), dtype=int), choice):
        kept = [np.asarray(d.context)[m.masks[k]].tolist() for d, m, k in zip(documents, judged, pick)]
        scores.append(score_compressed_ids(tiny_recon, documents, kept, RATE, reference))
    full_choice = np.zeros(len(table), dtype=int)
    full_choice[rows] = choice
    rec, ret = table.changes(full_choice, rows)
    assert rec == pytest.approx(scores[1].recoverability - scores[0].recoverability, abs=1e-4)
    assert ret == pytest.approx(scores[1].retention - scores[0].retention, abs=1e-4)
    env = TokenMaskMovesEnv(table, retention_weight=2.0)
    row = int(rows[0])
    env.reset(options={"row": row})
    _, reward, terminated, _, info = env.step(int(choice[0]))
    assert terminated
    assert info["retention_gain"] * table.d_f.mean() == pytest.approx(table.gain_f[row, choice[0]])
    assert reward == pytest.approx(info["recoverability_gain"] + 2.0 * info["retention_gain"])


def test_rule_is_the_search_choice(search, documents, table) -> None:  # type: ignore[no-untyped-def]
    """The table's rule picks refine_lookahead:p's own mask on every document."""
    contexts = [d.context for d in documents]
    judged = search.judged_moves(contexts, RATE)
    rule = table.rule_choices()[np.flatnonzero(table.rate == RATE)]
    for mask, moves, k in zip(search.keep_masks(contexts, RATE), judged, rule):
        np.testing.assert_array_equal(mask, moves.masks[k])
    assert table.observations.shape[1:] == (search.proposals + 1, len(MOVE_FEATURES) + 1)
    assert table.valid[:, 0].all()
    assert (table.gain_r[:, 0] == 0).all() and (table.gain_f[:, 0] == 0).all()


def test_judged_moves_needs_the_lookahead_and_proposals(tiny_recon, documents) -> None:  # type: ignore[no-untyped-def]
    plain = build_method("refine_lookahead:truncation", MethodContext(judge=tiny_recon))
    with pytest.raises(ValueError, match="proposals"):
        plain.judged_moves([documents[0].context], RATE)


def test_table_round_trip_and_bad_file(table, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    table.save(tmp_path / "t.npz")
    back = MoveTable.load(tmp_path / "t.npz")
    np.testing.assert_array_equal(back.observations, table.observations)
    assert back.settings == table.settings
    both = MoveTable.concatenate([table, back])
    assert len(both) == 2 * len(table)
    assert set(both.document[len(table) :]).isdisjoint(both.document[: len(table)])
    with pytest.raises(ValueError, match="no such table. Fix: build it with tokenmask moves table"):
        MoveTable.load(tmp_path / "none.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a table")
    with pytest.raises(ValueError, match="not a move table \\(not an .npz archive\\)"):
        MoveTable.load(tmp_path / "bad.npz")


def test_env_api_seeding_and_invalid_actions(table) -> None:  # type: ignore[no-untyped-def]
    env = gym.make("TokenMaskMoves-v0", table=table)
    check_env(env.unwrapped)
    rows = [env.reset(seed=7)[1]["row"] for _ in range(1)] + [env.reset()[1]["row"] for _ in range(5)]
    again = [env.reset(seed=7)[1]["row"] for _ in range(1)] + [env.reset()[1]["row"] for _ in range(5)]
    assert rows == again
    padded = np.flatnonzero(~table.valid[0])
    if len(padded):
        env.reset(options={"row": 0})
        assert env.step(int(padded[0]))[4]["choice"] == 0
    only = TokenMaskMovesEnv(table, rates=[0.3])
    assert set(only.table.rate.tolist()) == {0.3}
    with pytest.raises(ValueError, match="no rows"):
        TokenMaskMovesEnv(table, rates=[0.9])
    with pytest.raises(ValueError, match="weights"):
        TokenMaskMovesEnv(table, retention_weight=-1)


def _synthetic_table(rows: int = 64, seed: int = 0) -> MoveTable:
    """Rows where the best candidate is the one of lowest ``r`` feature, at a random place among the rows."""
    rng = np.random.default_rng(seed)
    k = 5
    features = [rng.normal(size=(k, len(MOVE_FEATURES))).astype(np.float32) for _ in range(rows)]
    observations, valid = observation_rows(features, k + 1)
    gain = np.zeros((rows, k + 1))
    gain[np.arange(rows), [int(np.argmin(f[:, 0])) for f in features]] = 1.0
    zeros = np.zeros((rows, k + 1))
    return MoveTable(
        observations,
        valid,
        gain,
        zeros,
        np.ones(rows),
        np.ones(rows),
        np.full(rows, 0.5),
        np.arange(rows),
        zeros,
        zeros,
        settings={"lookahead": 64, "tolerance": 0.02},
    )


def test_policy_is_order_free_and_ignores_padding() -> None:
    table = _synthetic_table(4)
    model = PPO(MovePolicy, TokenMaskMovesEnv(table), n_steps=8, batch_size=8, seed=0)
    obs = torch.as_tensor(table.observations)
    probs = model.policy.choice_probabilities(obs)
    assert torch.all(probs[:, -1] < 1e-6)  # the padding row
    swapped = obs[:, [1, 0, 2, 3, 4, 5]]
    torch.testing.assert_close(model.policy.choice_probabilities(swapped), probs[:, [1, 0, 2, 3, 4, 5]])
    with pytest.raises(ValueError, match="TokenMaskMoves-v0"):
        PPO(MovePolicy, "CartPole-v1")


def test_ppo_and_cloning_learn_the_best_candidate(tmp_path: Path) -> None:
    """PPO alone, and cloning on the best candidates, each raise the greedy choice's reward on the table."""
    table = _synthetic_table(64)
    env = TokenMaskMovesEnv(table)
    best = np.argmax(rewards(table, 1.0, 1.0), axis=1)

    def hit_rate(model: PPO) -> float:
        return float(np.mean(greedy(model.policy, table) == best))

    model = PPO(MovePolicy, env, n_steps=256, batch_size=64, learning_rate=3e-3, gamma=0.0, seed=0)
    before = hit_rate(model)
    model.learn(6000)
    assert hit_rate(model) > max(0.6, before + 0.2)
    cloned = PPO(MovePolicy, env, n_steps=256, batch_size=64, seed=0)
    losses = clone(cloned, table, best, epochs=80, batch=16, seed=0)
    assert losses[-1] < losses[0] * 0.7
    assert hit_rate(cloned) > max(0.6, before + 0.2)
    cloned.save(tmp_path / "agent.zip")
    assert isinstance(load_move_policy(tmp_path / "agent.zip"), MovePolicy)


def test_move_agent_method(tiny_recon, documents, tmp_path: Path, table) -> None:  # type: ignore[no-untyped-def]
    """move_agent:POLICY:BASE keeps the base's token count and makes the policy's greedy choice."""
    model = PPO(MovePolicy, TokenMaskMovesEnv(table), n_steps=8, batch_size=8, seed=0)
    model.save(tmp_path / "agent.zip")
    method = build_method(f"move_agent:{tmp_path / 'agent.zip'}:truncation", MethodContext(judge=tiny_recon))
    contexts = [d.context for d in documents]
    masks = method.keep_masks(contexts, RATE)
    base = build_method("truncation", MethodContext(judge=tiny_recon)).keep_masks(contexts, RATE)
    assert [m.sum() for m in masks] == [b.sum() for b in base]
    rows = np.flatnonzero(table.rate == RATE)
    choice = model.policy.predict(table.observations[rows], deterministic=True)[0]
    judged = method.judged_moves(contexts, RATE)
    for mask, moves, k in zip(masks, judged, choice):
        np.testing.assert_array_equal(mask, moves.masks[k])
    assert split_move_agent_argument("a.zip:bf16:truncation") == ("a.zip", "bfloat16", "truncation")
    assert split_move_agent_argument("a.zip:truncation") == ("a.zip", None, "truncation")
    with pytest.raises(ValueError, match="policy file and a base"):
        split_move_agent_argument("a.zip")
    with pytest.raises(ValueError, match="no policy file"):
        build_method(f"move_agent:{tmp_path / 'none.zip'}:truncation", MethodContext(judge=tiny_recon))
    (tmp_path / "bad.zip").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a zip archive"):
        build_method(f"move_agent:{tmp_path / 'bad.zip'}:truncation", MethodContext(judge=tiny_recon))
    with pytest.raises(ValueError, match="not a zip archive"):  # refused before any model loads, too
        check_methods([f"move_agent:{tmp_path / 'bad.zip'}:truncation"])


def test_shipped_move_policy(tiny_recon, documents) -> None:  # type: ignore[no-untyped-def]
    """move_agent:default loads the packaged policy (16 judged moves) and keeps the base's token count."""
    policy = load_move_policy("default")
    assert policy.observation_space.shape == (17, len(MOVE_FEATURES) + 1)
    method = build_method("move_agent:default:truncation", MethodContext(judge=tiny_recon))
    contexts = [d.context for d in documents[:2]]
    masks = method.keep_masks(contexts, 0.3)
    base = build_method("truncation", MethodContext(judge=tiny_recon)).keep_masks(contexts, 0.3)
    assert [m.sum() for m in masks] == [b.sum() for b in base]


def _table_argv(corpus: Path, judge: Path, out: Path, *extra: str) -> list[str]:
    return [
        "moves",
        "table",
        "--corpus",
        str(corpus),
        "--judge",
        str(judge),
        "--method",
        "refine_lookahead:p4:truncation",
        "--rates",
        "0.5",
        "--max_documents",
        "3",
        "--shard_documents",
        "2",
        "--device",
        "cpu",
        "--no_progress",
        "--out",
        str(out),
        *extra,
    ]


def test_moves_table_resumes_after_an_interruption(
    tiny_judge_dir: Path,
    pydocs_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`tokenmask moves table` saves each shard as it finishes; a rerun judges only what is missing and writes the
    table an uninterrupted run writes; other settings, or an existing table, are refused with a fix."""
    import tokenmask.envs.moves as env_moves
    from tokenmask.cli import main

    build = env_moves.build_move_table
    calls: list[int] = []

    def interrupted(*args: object, **kwargs: object) -> MoveTable:
        calls.append(len(args[2]))  # type: ignore[arg-type]
        if len(calls) == 2:
            raise KeyboardInterrupt
        return build(*args, **kwargs)  # type: ignore[arg-type]

    out = tmp_path / "t.npz"
    monkeypatch.setattr(env_moves, "build_move_table", interrupted)
    assert main(_table_argv(pydocs_path, tiny_judge_dir, out)) == 130
    assert not out.exists() and len(list((tmp_path / "t.npz.parts").glob("*.npz"))) == 1
    assert (
        main(_table_argv(pydocs_path, tiny_judge_dir, out, "--rates", "0.3")) == 2
    )  # other settings: refused
    damaged = tmp_path / "t.npz.parts" / "0000002.npz"
    damaged.write_bytes(b"not a table")  # a shard that cannot be read is named, with the fix
    assert main(_table_argv(pydocs_path, tiny_judge_dir, out)) == 2
    assert "0000002.npz, a saved shard of the table, is damaged" in capsys.readouterr().err
    damaged.unlink()
    calls.clear()
    monkeypatch.setattr(
        env_moves, "build_move_table", lambda *a, **k: calls.append(len(a[2])) or build(*a, **k)
    )
    assert main(_table_argv(pydocs_path, tiny_judge_dir, out)) == 0
    assert (
        calls == [1] and not (tmp_path / "t.npz.parts").exists()
    )  # only the third document was judged again
    assert main(_table_argv(pydocs_path, tiny_judge_dir, tmp_path / "u.npz")) == 0
    resumed, whole = MoveTable.load(out), MoveTable.load(tmp_path / "u.npz")
    assert len(resumed) == 3 and resumed.document.tolist() == [0, 1, 2]
    for key in ("observations", "valid", "gain_r", "gain_f", "r", "s"):
        np.testing.assert_allclose(getattr(resumed, key), getattr(whole, key), rtol=1e-5, atol=1e-6)
    assert (
        resumed.settings["method"] == "refine_lookahead:p4:truncation" and resumed.settings["documents"] == 3
    )
    assert main(_table_argv(pydocs_path, tiny_judge_dir, out)) == 2  # the table exists: refused


def test_moves_train_resumes_from_its_checkpoint_and_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tokenmask moves train` clones then runs PPO (curve, checkpoints); a rerun with a checkpoint continues from
    its step; `report` prints every choice's change and writes it as JSON."""
    from tokenmask.cli import main
    from tokenmask.train.moves import MoveTrainConfig, train_agent

    table = tmp_path / "t.npz"
    _synthetic_table(48).save(table)
    common = ["--table", str(table), "--n_envs", "2", "--n_steps", "32", "--batch", "32", "--epochs", "2"]
    agent = tmp_path / "a.zip"
    argv = ["moves", "train", *common, "--clone_epochs", "3", "--steps", "128", "--checkpoint_every", "64"]
    argv += ["--eval_table", str(table), "--eval_every", "64", "--no_progress", "--out", str(agent)]
    assert main(argv) == 0
    assert agent.is_file() and not (tmp_path / "a.checkpoint.zip").exists()
    curve = json.loads((tmp_path / "a.curve.json").read_text())
    assert [p["step"] for p in curve["curve"]][0] == 0 and curve["curve"][-1]["step"] >= 128
    assert len(curve["clone_loss"]) == 3 and (tmp_path / "a.curve.png").is_file()
    assert main(argv) == 2  # the policy exists: refused
    # an interrupted run: its checkpoint at 128 steps; the rerun trains the steps that remain
    shutil.copy(agent, tmp_path / "b.checkpoint.zip")
    config = MoveTrainConfig(
        table=[str(table)], steps=256, n_envs=2, n_steps=32, batch=32, epochs=2, out=str(tmp_path / "b.zip")
    )
    log = train_agent(config, progress=False)
    assert log["resumed_at"] == 128 and "clone_loss" not in log
    assert PPO.load(tmp_path / "b.zip").num_timesteps == 256
    (tmp_path / "c.checkpoint.zip").write_bytes(b"not a zip")
    with pytest.raises(Exception, match="c.checkpoint.zip"):
        train_agent(MoveTrainConfig(**{**config.__dict__, "out": str(tmp_path / "c.zip")}), progress=False)
    capsys.readouterr()
    report, plot = tmp_path / "r.json", tmp_path / "r.png"
    argv = ["moves", "report", "--tables", str(table), "--agents", f"a={agent}", "--draws", "20"]
    assert main([*argv, "--json", str(report), "--plot", str(plot)]) == 0
    printed = capsys.readouterr().out
    assert "| a |" in printed and "perfect choice" in printed
    rows = json.loads(report.read_text())["rows"]
    assert set(rows) >= {"a", "`refine_lookahead:p` rule"} and len(rows["a"]["choice"]) == 48
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_moves_train_with_a2c(tmp_path: Path) -> None:
    """`algo a2c` trains A2C on the same env (after cloning); the move_agent loader reads its policy."""
    from tokenmask.train.moves import MoveTrainConfig, train_agent

    table = tmp_path / "t.npz"
    _synthetic_table(48).save(table)
    config = MoveTrainConfig(
        table=[str(table)],
        algo="a2c",
        clone_epochs=2,
        steps=64,
        n_envs=2,
        n_steps=8,
        out=str(tmp_path / "a.zip"),
    )
    log = train_agent(config, progress=False)
    assert len(log["clone_loss"]) == 2
    from stable_baselines3 import A2C

    assert A2C.load(tmp_path / "a.zip").num_timesteps == 64
    assert isinstance(load_move_policy(tmp_path / "a.zip"), MovePolicy)


def test_moves_configs_refuse_bad_values() -> None:
    from tokenmask.errors import ConfigError
    from tokenmask.train.moves import MoveReportConfig, MoveTableConfig, MoveTrainConfig

    with pytest.raises(ConfigError, match="rates"):
        MoveTableConfig(rates=[1.2])
    with pytest.raises(ConfigError, match="clone_epochs"):
        MoveTrainConfig(steps=0, clone_epochs=0)
    with pytest.raises(ConfigError, match="ppo or a2c"):
        MoveTrainConfig(algo="sac")
    with pytest.raises(ConfigError, match="NAME=POLICY"):
        MoveReportConfig(agents=["a.zip"])


def test_moves_steps_refuse_a_folder_as_out_before_any_work(tmp_path: Path) -> None:
    """``--out`` naming a folder is refused before the judge loads (table) or the table is read (train), even with
    ``--overwrite true``: the save at the end would refuse it after minutes of work."""
    from tokenmask.errors import OutputExistsError
    from tokenmask.train.moves import MoveTableConfig, MoveTrainConfig, build_table, train_agent

    folder = tmp_path / "a_folder"
    (folder / "notes").mkdir(parents=True)
    with pytest.raises(OutputExistsError, match="is a folder"):
        build_table(MoveTableConfig(judge="/no/such/judge", out=str(folder), overwrite=True), progress=False)
    with pytest.raises(OutputExistsError, match="is a folder"):
        train_agent(
            MoveTrainConfig(table="/no/such/table.npz", out=str(folder), overwrite=True), progress=False
        )
    assert (folder / "notes").is_dir()


def test_the_packaged_tables_serve_the_env_and_reproduce_the_shipped_policy(tmp_path: Path) -> None:
    """``gym.make("TokenMaskMoves-v0")`` works offline on the packaged train table, and cloning on it as
    configs/dev/moves_train.json says makes the shipped policy's choice on every packaged validation row."""
    from tokenmask.config import load_config
    from tokenmask.train.moves import MoveTrainConfig, train_agent

    env = gym.make("TokenMaskMoves-v0")
    obs, info = env.reset(seed=0)
    assert obs.shape == (17, len(MOVE_FEATURES) + 1) and len(env.unwrapped.table) == 3024
    repo = Path(__file__).resolve().parents[1]
    config = load_config(
        MoveTrainConfig, repo / "configs" / "dev" / "moves_train.json", {"out": str(tmp_path / "a.zip")}
    )
    train_agent(config, progress=False)
    validation = MoveTable.load("default:validation")
    assert len(validation) == 204 and validation.settings["split"] == "validation"
    ours = greedy(load_move_policy(tmp_path / "a.zip"), validation)
    assert (ours == greedy(load_move_policy("default"), validation)).all()
    assert (tmp_path / "a.curve.json").is_file()


def test_moves_table_is_the_same_on_1_and_2_processes(
    tiny_judge_dir: Path, pydocs_path: Path, tmp_path: Path
) -> None:
    """`accelerate launch --num_processes 2 -m tokenmask.cli moves table` deals the shards to two CPU processes and
    writes the table one process writes."""
    import os
    import subprocess
    import sys

    from conftest import REPO_ROOT, free_port

    from tokenmask.cli import main

    one, two = tmp_path / "one.npz", tmp_path / "two.npz"
    argv = _table_argv(pydocs_path, tiny_judge_dir, one, "--shard_documents", "1")
    assert main(argv) == 0
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        "-m", "tokenmask.cli", *_table_argv(pydocs_path, tiny_judge_dir, two, "--shard_documents", "1"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(launch, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = MoveTable.load(one), MoveTable.load(two)
    assert b.settings["processes"] == 2 and a.settings["processes"] == 1
    for key in ("observations", "valid", "gain_r", "gain_f", "r", "s", "document", "rate"):
        np.testing.assert_allclose(getattr(a, key), getattr(b, key), rtol=1e-5, atol=1e-6)
