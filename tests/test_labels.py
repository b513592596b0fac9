"""``tokenmask label``: exact-rate span candidates, seeded search, the metrics' J, and 1 vs 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port

from tokenmask.config import ConfigError, load_config
from tokenmask.evaluate.baselines import Truncation
from tokenmask.evaluate.compressor import tokens_to_drop
from tokenmask.evaluate.metrics import EvalDocument, ReferenceNLLs, score_compressed_ids
from tokenmask.reconstructors import Reconstructor
from tokenmask.train.labels import (
    LABEL_COLUMNS,
    LABEL_CONFIG_FILE,
    DocumentLabel,
    LabelConfig,
    candidate_rng,
    load_labels,
    main,
    make_labels,
    random_span_masks,
    span_keep_from_keep,
    span_priority_mask,
    summary,
    swap_variants,
    write_labels,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL = {
    "context_tokens": 32,
    "continuation_tokens": 8,
    "span": 8,
    "rates": [0.3, 0.5],
    "candidates": 6,
    "max_documents": 4,
    "documents_per_batch": 2,
    "device": "cpu",
}
"""A search small enough for a random tiny judge on 2 CPU cores (a few seconds)."""


@pytest.fixture(scope="module")
def judge(tiny_judge_dir) -> Reconstructor:
    return Reconstructor.load(str(tiny_judge_dir), device="cpu", add_mask_token=False)


@pytest.fixture(scope="module")
def config(tiny_judge_dir, tmp_path_factory) -> LabelConfig:
    return LabelConfig(
        judge_name=str(tiny_judge_dir), output_dir=str(tmp_path_factory.mktemp("labels") / "out"), **SMALL
    )


@pytest.fixture(scope="module")
def labels(config, judge) -> list[DocumentLabel]:
    return make_labels(config, judge=judge, progress=False)


def _document(label: DocumentLabel) -> EvalDocument:
    return EvalDocument(context=label.context_ids, continuation=label.continuation_ids, text="")


def _evaluate_objective(judge: Reconstructor, label: DocumentLabel, keep: np.ndarray, weight: float) -> float:
    """J of a keep mask through tokenmask.evaluate's metrics (one document: the corpus ratio is the document's)."""
    doc = _document(label)
    reference = ReferenceNLLs.compute(judge, [doc])
    kept = [int(t) for t, k in zip(doc.context, keep) if k]
    scores = score_compressed_ids(judge, [doc], [kept], label.rate, reference)
    return scores.recoverability + weight * scores.retention


# ---------------------------------------------------------------------------------------- candidates
@pytest.mark.parametrize("length", [32, 30, 256])
@pytest.mark.parametrize("rate", [0.0, 0.3, 0.5, 0.7])
def test_span_masks_drop_exactly_round_rate_c_in_whole_spans_plus_one_cut(length, rate):
    span = 8
    spans = -(-length // span)
    rng = np.random.default_rng(0)
    for _ in range(5):
        priority = rng.permutation(spans).astype(float)
        keep = span_priority_mask(priority, length, span, rate)
        assert (~keep).sum() == tokens_to_drop(length, rate)
        partial = [
            k
            for k in range(spans)
            if 0 < (~keep[k * span : (k + 1) * span]).sum() < len(keep[k * span : (k + 1) * span])
        ]
        assert len(partial) <= 1  # every span is dropped whole, except the last one needed ...
        for k in partial:  # ... which loses its first tokens, as span_self_information cuts it
            chunk = keep[k * span : (k + 1) * span]
            assert not chunk[0] and chunk[-1]


def test_random_span_masks_are_distinct_and_seeded():
    masks = random_span_masks(candidate_rng(0, 3, 0.5), 64, 8, 0.5, 20)
    assert len(masks) == 20
    assert len({m.tobytes() for m in masks}) == 20
    again = random_span_masks(candidate_rng(0, 3, 0.5), 64, 8, 0.5, 20)
    assert all(np.array_equal(a, b) for a, b in zip(masks, again))
    other = random_span_masks(candidate_rng(1, 3, 0.5), 64, 8, 0.5, 20)
    assert any(not np.array_equal(a, b) for a, b in zip(masks, other))
    # 4 spans, drop 2: only 6 distinct masks exist
    assert len(random_span_masks(candidate_rng(0, 0, 0.5), 32, 8, 0.5, 20)) == 6


def test_swap_variants_move_one_span_and_keep_the_count():
    keep = np.array([0] * 8 + [1] * 8 + [1] * 8 + [0] * 3 + [1] * 5, dtype=bool)
    variants = swap_variants(keep, 8)
    assert len(variants) == 2  # spans (0, 1) and (2, 3) differ; (1, 2) are both kept
    for v in variants:
        assert v.sum() == keep.sum()
    assert span_keep_from_keep(keep, 8).tolist() == [False, True, True, True]
    assert span_keep_from_keep(np.array([0] * 5 + [1] * 3, dtype=bool), 8).tolist() == [False]


# ---------------------------------------------------------------------------------------- the search
def test_labels_cover_every_document_and_rate_at_the_exact_rate(labels, config):
    assert [(label.doc_index, label.rate) for label in labels] == [
        (d, r) for d in range(config.max_documents) for r in config.rates
    ]
    for label in labels:
        assert (
            len(label.keep) == config.context_tokens
            and len(label.continuation_ids) == config.continuation_tokens
        )
        assert (~label.keep).sum() == tokens_to_drop(config.context_tokens, label.rate)
        assert label.objective >= label.objective_before_swaps
        assert label.objective == pytest.approx(
            label.recoverability + config.retention_weight * label.retention
        )


def test_labels_are_reproducible_from_their_seed(labels, config, judge):
    again = make_labels(replace(config, max_documents=2), judge=judge, progress=False)  # the same first group
    assert len(again) == 2 * len(config.rates)
    for a, b in zip(labels, again):
        assert np.array_equal(a.keep, b.keep) and a.objective == b.objective and a.origin == b.origin


def test_label_objective_is_the_evaluate_metrics_j_and_beats_the_structured_candidates(labels, config, judge):
    for label in labels:
        assert _evaluate_objective(judge, label, label.keep, config.retention_weight) == pytest.approx(
            label.objective, rel=1e-4, abs=1e-4
        )
    for label in labels[:2]:  # the structured candidates' J, measured independently of the search
        for keep_side in ("last", "first"):
            mask = Truncation(judge.tokenizer, keep=keep_side).keep_masks([label.context_ids], label.rate)[0]
            assert label.objective >= _evaluate_objective(judge, label, mask, config.retention_weight) - 1e-4


def test_write_and_load_labels(labels, config):
    out = write_labels(labels, config)
    dataset = load_labels(out)
    assert dataset.column_names == list(LABEL_COLUMNS) and len(dataset) == len(labels)
    row = dataset[0]
    assert row["keep"] == labels[0].keep.tolist()
    assert row["span_keep"] == span_keep_from_keep(labels[0].keep, config.span).tolist()
    settings = json.loads((out / LABEL_CONFIG_FILE).read_text())
    assert settings["label_config"]["seed"] == config.seed and settings["labels"] == len(labels)
    assert {row["rate"] for row in settings["summary"]} == set(config.rates)
    assert json.loads(dataset.info.description)["label_config"]["span"] == config.span
    with pytest.raises(FileNotFoundError, match="Fix:"):
        load_labels(out.parent)


def test_summary_compares_labels_with_truncation(labels, config):
    rows = summary(labels, config.rates)
    assert [row["rate"] for row in rows] == config.rates
    for row in rows:
        assert {
            "labels_recoverability",
            "labels_retention",
            "truncation_recoverability",
            "truncation_retention",
        } <= set(row)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"rates": []}, "No rate"),
        ({"rates": [1.2]}, "outside"),
        ({"span": 0}, "span"),
        ({"candidates": -1}, "candidates"),
        ({"device": "cuda:1"}, "device"),
        ({"retention_weight": -1.0}, "retention_weight"),
    ],
)
def test_bad_settings_name_the_fix(values, message):
    with pytest.raises(ValueError, match=message):
        LabelConfig(**values)
    with pytest.raises(ConfigError, match="Unknown config key"):
        load_config(LabelConfig, None, {"candidate": 3})


# ---------------------------------------------------------------------------------------- processes
def test_data_parallel_command_gives_the_same_labels_on_1_and_2_processes(config, tmp_path):
    args = [
        "--judge_name", config.judge_name,
        "--context_tokens", "32", "--continuation_tokens", "8", "--span", "8", "--rates", "0.3,0.5",
        "--candidates", "6", "--max_documents", "5", "--documents_per_batch", "2", "--device", "cpu", "--no_progress",
    ]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*args, "--output_dir", str(one)]) == 0
    # accelerate's --cpu launcher starts ONE process (more need mpirun); its torchrun launcher starts 2 CPU processes (gloo)
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        "-m", "tokenmask.train.labels", *args, "--output_dir", str(two),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(launch, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((two / LABEL_CONFIG_FILE).read_text())["processes"] == 2
    first, second = load_labels(one), load_labels(two)
    assert len(first) == len(second) == 10
    assert first["doc_index"] == second["doc_index"] and first["rate"] == second["rate"]
    assert first["keep"] == second["keep"]
    assert np.allclose(first["objective"], second["objective"], rtol=1e-5, atol=1e-6)


def test_a_documents_label_does_not_depend_on_the_other_documents(labels, config, judge):
    alone = make_labels(replace(config, max_documents=1), judge=judge, progress=False)
    for a, b in zip(alone, labels):
        assert np.array_equal(a.keep, b.keep)
        assert a.objective == pytest.approx(b.objective, rel=1e-5, abs=1e-6)


def test_user_folder_and_missing_corpus_are_refused_before_any_model_loads(tmp_path, monkeypatch):
    """`tokenmask label` checks its output folder and corpus first: a user's files survive, no judge is loaded."""
    from tokenmask.train import labels as labels_module

    def no_judge(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the judge loaded before the inputs were checked")

    monkeypatch.setattr(labels_module, "load_judge", no_judge)
    user = tmp_path / "mine"
    user.mkdir()
    (user / "important.txt").write_text("x")
    assert main(["--output_dir", str(user), "--device", "cpu", "--no_progress"]) == 2
    assert (user / "important.txt").read_text() == "x"
    assert (
        main(
            [
                "--data_path",
                str(tmp_path / "missing.jsonl"),
                "--output_dir",
                str(tmp_path / "out"),
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    assert not (tmp_path / "out").exists()
