"""``tokenmask export``: a run as a policy-only agent folder that compresses exactly as the run does."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO

import tokenmask
from tokenmask import shipped_agent
from tokenmask.cli import main
from tokenmask.config import load_config
from tokenmask.errors import InputError
from tokenmask.testing import tiny_reconstructor
from tokenmask.train import check_agent_argument
from tokenmask.train.agent import AgentCompressor
from tokenmask.train.config import TrainConfig
from tokenmask.train.export import (
    AGENT_INFO_FILE,
    POLICY_FILE,
    export_agent,
    is_policy_folder,
    load_policy,
    read_agent_info,
)
from tokenmask.train.run_folder import RunFolder, RunFolderError, capture_rng_state

QUICK = Path(__file__).resolve().parents[1] / "configs" / "dev" / "quick_test.json"
TEXTS = [
    "The tokenizer splits text into tokens; the model predicts each token from the ones before it. " * 3,
    "Lists are mutable sequences, typically used to store collections of homogeneous items.\n\tx = [1, 2]",
    "Café naïve — 日本語 grüße",
]
PROVENANCE_KEYS = {"source_run", "step", "git_commit", "date", "machine", "figures", "policy_sha256"}


def make_run(path: Path, overrides: dict[str, object], fine_tuned: bool = False) -> Path:
    """A run folder as ``tokenmask train`` writes it: one checkpoint of a PPO agent at step 16 (tiny model).

    :param fine_tuned: the run fine-tuned its reconstructor: ``joint_period`` 1, and the checkpoint's
        ``reconstructor/`` holds other weights than the base model (a tiny Llama of another seed).
    """
    from tokenmask.envs.sb3_vec_env import TokenMaskSB3VecEnv
    from tokenmask.policies import TokenMaskPolicy

    values = {"run_dir": str(path), "joint_period": 1 if fine_tuned else 0, **overrides}
    config = load_config(TrainConfig, QUICK, values)
    recon = tiny_reconstructor(seed=config.seed + 1 if fine_tuned else config.seed)
    env = TokenMaskSB3VecEnv(num_envs=2, config=config.env, reconstructor=recon, judge=recon)
    model = PPO(TokenMaskPolicy, env, n_steps=8, batch_size=16, n_epochs=1, seed=0, device="cpu")
    # weights unlike any fresh initialisation (as after training; PPO's own steps cost seconds each here)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.policy.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    # one optimizer step, so the agent.zip carries Adam's moments as a trained run's does
    sum((p.float() ** 2).sum() for p in model.policy.parameters()).backward()  # type: ignore[union-attr]
    model.policy.optimizer.step()
    model.num_timesteps = 16
    run = RunFolder(path)
    run.save_config(config)
    run.write_checkpoint(
        model,
        {"status": "finished", "device": "cpu"},
        config,
        capture_rng_state(),
        reconstructor=recon if fine_tuned else None,
    )
    return path


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory) -> Path:
    """A run whose policy observes LM features, without joint training (the base model is its reconstructor)."""
    return make_run(tmp_path_factory.mktemp("export") / "lm", {})


@pytest.fixture(scope="module")
def position_run(tmp_path_factory) -> Path:
    """A run with env.token_features="position" that fine-tuned its reconstructor (which the policy never reads)."""
    return make_run(
        tmp_path_factory.mktemp("export") / "position", {"env.token_features": "position"}, fine_tuned=True
    )


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory) -> Path:
    """A run with LM features and a fine-tuned reconstructor: its policy needs that very model."""
    return make_run(tmp_path_factory.mktemp("export") / "joint", {}, fine_tuned=True)


def masks(folder: Path, rate: float = 0.5) -> list[np.ndarray]:
    agent = AgentCompressor.load(str(folder), device="cpu")
    contexts = [agent.reconstructor.encode(t) for t in TEXTS]
    return agent.keep_masks(contexts, rate)


def scores(folder: Path, rate: float = 0.5) -> list[np.ndarray]:
    """The policy's mask probabilities (finer than masks: two tiny random LMs give near-equal features)."""
    agent = AgentCompressor.load(str(folder), device="cpu")
    return agent.mask_scores([agent.reconstructor.encode(t) for t in TEXTS], rate)


def assert_same_masks(first: list[np.ndarray], second: list[np.ndarray]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fixture", ["lm_run", "position_run"])
def test_the_exported_agent_compresses_as_its_run(fixture, request, tmp_path) -> None:  # type: ignore[no-untyped-def]
    run_dir = request.getfixturevalue(fixture)
    folder = export_agent(run_dir, tmp_path / "agent")
    assert is_policy_folder(folder) and not is_policy_folder(run_dir)
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        AGENT_INFO_FILE,
        "config.json",
        POLICY_FILE,
    ]
    assert_same_masks(masks(run_dir), masks(folder))
    for a, b in zip(scores(run_dir), scores(folder)):
        np.testing.assert_array_equal(a, b)
    config = json.loads((folder / "config.json").read_text())
    assert config["joint_period"] == 0
    # the evaluation's agent: plug-in checks the folder before a model loads
    check_agent_argument(str(folder))


def test_the_folder_is_small_and_holds_no_optimizer(lm_run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    folder = export_agent(lm_run, tmp_path / "agent")
    agent_zip = RunFolder(lm_run).agent_file
    policy_bytes = (folder / POLICY_FILE).stat().st_size
    saved = torch.load(folder / POLICY_FILE, map_location="cpu", weights_only=False)
    assert set(saved) == {"state_dict", "data"}  # BasePolicy.save: weights + constructor kwargs
    assert not any("optimizer" in key for key in saved["state_dict"])
    with zipfile.ZipFile(agent_zip) as archive:
        assert "policy.optimizer.pth" in archive.namelist()
    assert policy_bytes < 0.5 * agent_zip.stat().st_size
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) < 5_000_000

    half = export_agent(lm_run, tmp_path / "half", float16=True)
    assert (half / POLICY_FILE).stat().st_size < 0.6 * policy_bytes  # the shared extractor stored once
    policy = load_policy(half, device="cpu")
    assert all(p.dtype == torch.float32 for p in policy.parameters())
    full = load_policy(folder, device="cpu")
    for (name, p16), p32 in zip(policy.state_dict().items(), full.state_dict().values()):
        if p32.is_floating_point():
            torch.testing.assert_close(p16, p32, atol=2e-3, rtol=2e-3, msg=name)
    assert read_agent_info(half)["policy_dtype"] == "float16"
    # float16 rounding may reorder near-equal scores; what the rate fixes is the count
    for a, b in zip(masks(folder), masks(half)):
        assert abs(int(a.sum()) - int(b.sum())) <= 1


def test_agent_json_holds_the_provenance(lm_run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    figures = {"test split, rate 0.5": {"agent": "0.50 / 0.489 / 0.91"}}
    folder = export_agent(lm_run, tmp_path / "agent", figures=figures, machine="1 x NVIDIA H200")
    info = json.loads((folder / AGENT_INFO_FILE).read_text())
    assert PROVENANCE_KEYS <= set(info)
    assert info["source_run"] == str(Path(lm_run).resolve())
    assert info["step"] == 16 and info["checkpoint"] == "step-000000016"
    assert info["figures"] == figures and info["machine"] == "1 x NVIDIA H200"
    assert info["token_features"] == "lm" and info["reconstructor"] == "tiny-random"
    assert info["date"].startswith("20") and info["policy_parameters"] > 100_000
    # the same keys from the command line; a second export replaces the folder it wrote
    assert main(["export", str(lm_run), "--output_dir", str(folder), "--figures", '{"x": 1}']) == 0
    assert read_agent_info(folder)["figures"] == {"x": 1}
    assert main(["export", str(lm_run), "--output_dir", str(tmp_path / "bad"), "--figures", "[1"]) == 2


def test_a_fine_tuned_reconstructor_with_lm_features_is_refused_unless_copied(
    joint_run, position_run, tmp_path, capsys
) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match="--with_reconstructor") as info:
        export_agent(joint_run, tmp_path / "refused")
    assert "\n" not in str(info.value) and "Fix:" in str(info.value)
    assert not (tmp_path / "refused").exists()
    assert main(["export", str(joint_run), "--output_dir", str(tmp_path / "refused")]) == 2
    assert "fine-tuned its reconstructor" in capsys.readouterr().err
    folder = export_agent(joint_run, tmp_path / "agent", with_reconstructor=True)
    assert (folder / "reconstructor" / "tokenmask_reconstructor.json").is_file()
    assert read_agent_info(folder)["reconstructor"] == "reconstructor/"
    assert_same_masks(masks(joint_run), masks(folder))
    expected = scores(joint_run)
    for a, b in zip(expected, scores(folder)):
        np.testing.assert_array_equal(a, b)
    # what the refusal prevents: the same policy with the base model observes other features
    shutil.rmtree(folder / "reconstructor")
    assert any(not np.array_equal(a, b) for a, b in zip(expected, scores(folder)))
    # a run without a fine-tuned model has nothing to copy: said, not ignored
    with pytest.raises(InputError, match="holds no fine-tuned reconstructor"):
        export_agent(make_run(tmp_path / "plain", {}), tmp_path / "nothing", with_reconstructor=True)
    # a position policy never reads the model: the base one is enough (checked in the parametrized test)
    assert export_agent(position_run, tmp_path / "position").is_dir()


def test_a_damaged_policy_file_is_a_clear_error(lm_run, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    folder = export_agent(lm_run, tmp_path / "agent")
    policy = folder / POLICY_FILE
    policy.write_bytes(policy.read_bytes()[:5000])
    for call in (
        lambda: AgentCompressor.load(str(folder), device="cpu"),
        lambda: check_agent_argument(str(folder)),
        lambda: tokenmask.compress(TEXTS[0], agent=folder, device="cpu"),
    ):
        with pytest.raises(RunFolderError, match="policy.pt is damaged") as info:
            call()
        assert "\n" not in str(info.value) and "Fix: export the run again" in str(info.value)
    # without a recorded checksum the load itself fails, as clearly
    info_file = folder / AGENT_INFO_FILE
    info_file.write_text(
        json.dumps({k: v for k, v in read_agent_info(folder).items() if k != "policy_sha256"})
    )
    with pytest.raises(
        RunFolderError, match="cannot be loaded as a TokenMaskPolicy.*Fix: export the run again"
    ):
        load_policy(folder, device="cpu")
    policy.unlink()
    with pytest.raises(RunFolderError, match="policy.pt is missing"):
        check_agent_argument(str(folder))
    monkeypatch.setattr(shipped_agent, "DEFAULT_AGENT_DIR", folder)
    assert main(["compress", "--rate", "0.5"]) == 2


def test_the_export_folder_is_the_shipped_default(position_run, tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """agent="default", agent:default and `tokenmask compress` with no folder all use DEFAULT_AGENT_DIR."""
    from tokenmask.evaluate.compressor import MethodContext, build_method
    from tokenmask.evaluate.runner import check_methods

    folder = export_agent(position_run, tmp_path / "agents" / "default", float16=True)
    monkeypatch.setattr(shipped_agent, "DEFAULT_AGENT_DIR", folder)
    result = tokenmask.compress(TEXTS[0], rate=0.5, device="cpu")
    assert result == tokenmask.compress(TEXTS[0], rate=0.5, agent=folder, device="cpu")
    assert abs(result.rate - 0.5) <= 0.02
    check_methods(["agent:default", "truncation"])
    method = build_method("agent:default", MethodContext(judge=tiny_reconstructor(seed=0), device="cpu"))
    assert isinstance(method, AgentCompressor) and method.name == "agent:default"
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(TEXTS[0]))
    assert main(["compress", "--rate", "0.5", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip() == result.text.strip()
