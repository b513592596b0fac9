"""The reconstructor API: shapes, padding invariance, mask handling, save/load, fine-tuning, loading errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tokenmask.errors import ConfigError, InputError
from tokenmask.reconstructors import (
    CorruptCheckpointError,
    ModelNotFoundError,
    Reconstructor,
    ReconstructorFinetuner,
    load_reconstructor,
    pad_batch,
    pick_device,
)
from tokenmask.testing import tiny_reconstructor

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A module can contain executable statements as well as function definitions.",
    "Hi",
]


def _ids(recon: Reconstructor) -> list[list[int]]:
    return [recon.encode(t) for t in TEXTS]


def test_token_bits_shapes_and_range(tiny_recon: Reconstructor) -> None:
    ids = _ids(tiny_recon)
    bits = tiny_recon.token_bits(ids)
    assert [len(b) for b in bits] == [len(x) for x in ids]
    for b in bits:
        assert np.all(np.isfinite(b)) and np.all(b > 0)
        # a random model is close to uniform over ~49k tokens: about log2(49152) = 15.6 bits
        assert np.all(np.abs(b - math.log2(49152)) < 3)


def test_padding_invariance(tiny_recon: Reconstructor) -> None:
    """A document's bits do not depend on the other documents of its batch (nor their padding)."""
    ids = _ids(tiny_recon)
    masks = [[i % 3 == 1 for i in range(len(x))] for x in ids]
    for mode in ("delete", "placeholder"):
        together = tiny_recon.token_bits(ids, masks, mode=mode)
        for k in range(len(ids)):
            alone = tiny_recon.token_bits([ids[k]], [masks[k]], mode=mode)[0]
            np.testing.assert_allclose(alone, together[k], atol=1e-4)


def test_masked_positions_use_the_mask_token(tiny_recon: Reconstructor) -> None:
    ids = _ids(tiny_recon)[1]
    mask = [False] * len(ids)
    mask[3] = True
    inputs, positions = tiny_recon.masked_inputs(ids, mask, mode="placeholder")
    assert inputs[0] == tiny_recon.bos_token_id
    assert inputs[1 + 3] == tiny_recon.mask_token_id
    assert [t for i, t in enumerate(inputs[1:]) if i != 3] == [t for i, t in enumerate(ids) if i != 3]
    assert positions == list(range(len(ids)))
    # Direct check through the model: scoring token 4 after a mask equals scoring it with the mask id typed in.
    manual = ids.copy()
    manual[3] = tiny_recon.mask_token_id  # type: ignore[call-overload]
    direct = tiny_recon.gather_log_probs([[tiny_recon.bos_token_id, *manual]], [[4]], [[ids[4]]])[0]
    bits = tiny_recon.token_bits([ids], [mask], mode="placeholder")[0]
    assert bits[4] == pytest.approx(-float(direct[0]) / math.log(2), abs=1e-5)
    # ...and differs from the unmasked score, so the mask really changed the input.
    assert abs(bits[4] - tiny_recon.token_bits([ids])[0][4]) > 1e-6


def test_delete_mode_removes_masked_tokens(tiny_recon: Reconstructor) -> None:
    ids = _ids(tiny_recon)[1]
    mask = [i in (2, 3, 6) for i in range(len(ids))]
    inputs, positions = tiny_recon.masked_inputs(ids, mask, mode="delete")
    assert inputs == [tiny_recon.bos_token_id] + [t for t, m in zip(ids, mask) if not m]
    # tokens 2 and 3 are both predicted right after token 1 (input position 2), token 4 too.
    assert positions[2] == positions[3] == positions[4] == 2
    bits = tiny_recon.token_bits([ids], [mask], mode="delete")[0]
    assert bits.shape == (len(ids),)


def test_mask_token_never_predicted(tiny_recon: Reconstructor) -> None:
    seq = [tiny_recon.bos_token_id, *tiny_recon.encode("hello world")]
    logp = tiny_recon.gather_log_probs([seq], [[0]], [[tiny_recon.mask_token_id]])[0]
    assert float(logp[0]) == float("-inf")


def test_bad_inputs(tiny_recon: Reconstructor) -> None:
    ids = _ids(tiny_recon)[0]
    with pytest.raises(ValueError, match="mask has"):
        tiny_recon.token_bits([ids], [[True]])
    with pytest.raises(ValueError, match="Unknown mask mode"):
        tiny_recon.token_bits([ids], None, mode="erase")  # type: ignore[arg-type]
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_reconstructor("/nonexistent/model.gguf")


def test_ids_outside_the_vocabulary_are_one_line_errors(tiny_recon: Reconstructor) -> None:
    """Every public scoring entry checks the ids before torch sees them (no raw index error)."""
    ids = _ids(tiny_recon)[0]
    size = tiny_recon.vocab_size
    assert size == len(tiny_recon.tokenizer)
    bos = tiny_recon.bos_token_id
    calls = [
        lambda: tiny_recon.token_bits([ids, [*ids, size]]),
        lambda: tiny_recon.token_bits([ids], prefixes=[[-3]]),
        lambda: tiny_recon.masked_loss([[*ids, size + 7]], [[True] * (len(ids) + 1)]),
        lambda: tiny_recon.sequence_log_probs([[bos, *ids, 10**6]]),
        lambda: tiny_recon.gather_log_probs([[bos, *ids]], [[0]], [[size]]),
        lambda: tiny_recon.gather_log_probs_top1([[bos, 10**6]], [[0]], [[ids[0]]]),
    ]
    for call in calls:
        with pytest.raises(
            InputError,
            match=f"Token id -?\\d+ is outside the vocabulary .*\\({size} ids: 0 .. {size - 1}\\)\\. Fix:",
        ) as error:
            call()
        assert isinstance(error.value, ValueError) and "\n" not in str(error.value)
    with pytest.raises(InputError, match=f"Token id {size} "):
        tiny_recon.token_bits([[*ids, size]])


def test_a_missing_gpu_is_said_before_any_folder_is_read(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tiny_reconstructor(seed=2).save_pretrained(tmp_path / "recon")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for device in ("cuda", "cuda:1", "mps"):
        with pytest.raises(
            ConfigError, match=f"Device '{device}' was asked for, but .*Fix: use device auto or cpu"
        ):
            pick_device(device)
        # not "corrupt or incomplete": the folder is fine, the device is missing
        with pytest.raises(ConfigError, match="was asked for") as error:
            Reconstructor.from_pretrained(folder, device=device)
        assert not isinstance(error.value, CorruptCheckpointError)
    with pytest.raises(ConfigError, match="Unknown device 'gpu0'. Fix: use auto, cpu, cuda, cuda:N or mps"):
        load_reconstructor(str(folder), device="gpu0")
    assert pick_device("auto") == torch.device("cpu") and pick_device("cpu") == torch.device("cpu")


def test_unknown_model_name_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="Could not load model"):
        load_reconstructor("no-such-org/no-such-model-xyz", device="cpu")


def test_save_load_round_trip_and_corrupt_checkpoint(tmp_path) -> None:
    recon = tiny_reconstructor(seed=3)
    ids = _ids(recon)
    masks = [[i % 2 == 0 for i in range(len(x))] for x in ids]
    folder = recon.save_pretrained(tmp_path / "recon")
    meta = json.loads((folder / "tokenmask_reconstructor.json").read_text())
    assert meta["mask_token_id"] == recon.mask_token_id
    back = Reconstructor.from_pretrained(folder, device="cpu")
    assert back.mask_token_id == recon.mask_token_id
    for a, b in zip(recon.token_bits(ids, masks), back.token_bits(ids, masks)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # load() of a saved folder goes through from_pretrained too
    assert load_reconstructor(str(folder), device="cpu").mask_token_id == recon.mask_token_id
    # saving again replaces the folder atomically and leaves no temporary folder behind
    recon.save_pretrained(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recon"]
    weights = next(folder.glob("*.safetensors"))
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(CorruptCheckpointError, match="corrupt"):
        Reconstructor.from_pretrained(folder, device="cpu")
    with pytest.raises(CorruptCheckpointError, match="not a saved reconstructor"):
        Reconstructor.from_pretrained(tmp_path, device="cpu")


def test_finetuning_lowers_masked_loss_with_accumulation() -> None:
    recon = tiny_reconstructor(seed=1)
    ids = [recon.encode(t) for t in TEXTS[:2]]
    masks = [[i % 2 == 1 for i in range(len(x))] for x in ids]
    before = float(recon.masked_loss(ids, masks).detach())
    tuner = ReconstructorFinetuner(recon, learning_rate=3e-3, grad_accum_steps=2)
    params_before = [p.detach().clone() for p in recon.model.parameters()]
    tuner.step(ids, masks)
    assert tuner.optimizer_steps == 0  # the first micro-batch only accumulates
    assert all(torch.equal(a, b) for a, b in zip(params_before, recon.model.parameters()))
    for _ in range(15):
        tuner.step(ids, masks)
    tuner.flush()
    assert tuner.optimizer_steps == 8
    after = float(recon.masked_loss(ids, masks).detach())
    assert after < before - 0.5
    assert not recon.model.training


def test_every_optimizer_step_bumps_the_weights_version() -> None:
    recon = tiny_reconstructor(seed=2)
    ids = [recon.encode(TEXTS[0])]
    masks = [[i % 2 == 1 for i in range(len(ids[0]))]]
    tuner = ReconstructorFinetuner(recon, learning_rate=1e-3, grad_accum_steps=2)
    start = recon.weights_version
    tuner.step(ids, masks)
    assert recon.weights_version == start  # accumulated only: the weights did not move
    tuner.step(ids, masks)
    assert recon.weights_version == start + 1
    assert recon.mark_weights_changed() == start + 2
    # the version belongs to the model: every reconstructor wrapping it sees it
    assert Reconstructor(recon.model, recon.tokenizer, recon.mask_token_id).weights_version == start + 2


def test_pad_batch_and_top1_primitives(tiny_recon: Reconstructor) -> None:
    ids, attention = pad_batch([[5, 6, 7], np.array([8]), []], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]]
    assert attention.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    docs = _ids(tiny_recon)
    inputs = [[tiny_recon.bos_token_id, *d[:-1]] for d in docs]
    positions = [list(range(len(d))) for d in docs]
    logps, top1 = tiny_recon.gather_log_probs_top1(inputs, positions, docs)
    for lp, hit, inp, pos, d in zip(logps, top1, inputs, positions, docs):
        assert torch.allclose(lp, tiny_recon.gather_log_probs([inp], [pos], [d])[0])
        padded, mask = tiny_recon.pad_batch([inp])
        with torch.no_grad():
            logits = tiny_recon.head_logits(tiny_recon.last_hidden_state(padded, mask)[0])
        assert hit.tolist() == (logits.argmax(-1).cpu() == torch.as_tensor(d)).tolist()


def test_logits_at_reads_each_sequences_own_positions(tiny_recon: Reconstructor) -> None:
    """``logits_at`` (the primitive behind scoring and the lookahead) equals the model's own logits at the
    asked positions of each sequence, however the batch is padded; bad ids and empty batches are errors."""
    docs = [[tiny_recon.bos_token_id, *d] for d in _ids(tiny_recon)]
    positions = [[0, len(docs[0]) - 1, 2], list(range(len(docs[1]))), []]
    with torch.no_grad():
        batched = tiny_recon.logits_at(docs, positions)
        assert batched.shape == (sum(len(p) for p in positions), tiny_recon.vocab_size)
        assert batched.dtype == torch.float32
        expected = []
        for doc, pos in zip(docs, positions):
            logits = tiny_recon.model(input_ids=torch.tensor([doc])).logits[0].float()
            if tiny_recon.exclude_mask_from_predictions and tiny_recon.mask_token_id is not None:
                logits[:, tiny_recon.mask_token_id] = float("-inf")  # the mask token is never predicted
            expected.append(logits[list(pos)])
    torch.testing.assert_close(batched, torch.cat(expected), atol=1e-4, rtol=1e-4)
    with pytest.raises(InputError, match="outside the vocabulary"):
        tiny_recon.logits_at([[tiny_recon.vocab_size]], [[0]])
    with pytest.raises(ValueError, match="at least one sequence"):
        tiny_recon.logits_at([], [])


def test_finetuner_rejects_bad_settings(tiny_recon: Reconstructor) -> None:
    with pytest.raises(ValueError, match="grad_accum_steps"):
        ReconstructorFinetuner(tiny_recon, grad_accum_steps=0)


@pytest.mark.integration
def test_embedded_model_bits_on_pydocs(smollm: Reconstructor, pydocs_path) -> None:
    """The real SmolLM2 prices real prose at a sane number of bits per token (1 to 8)."""
    from tokenmask.data import load_texts

    texts = [r["text"] for r in load_texts(pydocs_path)[:4]]
    ids = [smollm.encode(t)[:200] for t in texts]
    bits = smollm.token_bits(ids)
    per_token = float(np.concatenate(bits).mean())
    assert 1.0 < per_token < 8.0
    assert 2**per_token < 150  # perplexity of real text stays far below a uniform guess (49k)
    assert smollm.mask_token_id is not None and smollm.tokenizer.mask_token == "<mask>"


@pytest.mark.integration
def test_embedded_model_masked_bits_cost_more(smollm: Reconstructor) -> None:
    """Deleting context makes the real model's guesses worse: masked tokens cost more than unmasked ones."""
    ids = smollm.encode(
        "import os\nimport sys\n\nThe os module provides a portable way of using operating system dependent functionality."
    )
    mask = [5 <= i < 15 for i in range(len(ids))]
    plain = smollm.token_bits([ids])[0]
    deleted = smollm.token_bits([ids], [mask], mode="delete")[0]
    assert deleted[15:].sum() > plain[15:].sum()


@pytest.mark.integration
def test_a_gguf_is_converted_once_and_the_cached_copy_loads_the_same_weights(tmp_path, monkeypatch):
    """The first load of the embedded GGUF keeps a float32 save_pretrained copy; later loads read it, same tensors."""
    from tokenmask.reconstructors import loading

    monkeypatch.setenv(loading.CACHE_ENV, str(tmp_path / "cache"))
    gguf = loading.embedded_model_dir() / loading.DEFAULT_GGUF_FILE
    folder = loading.gguf_cache_dir(gguf)
    assert folder is not None and not folder.exists()
    first = loading.load_causal_lm("default", device="cpu", dtype="float32")
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert loading._source_kwargs("default") == (str(folder), {})
    second = loading.load_causal_lm("default", device="cpu", dtype="float32")
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    tokenizer = loading.load_tokenizer(str(folder), cache=False)
    text = "Café naïve — 日本語.\n\tx = [1, 2]  # done"
    assert tokenizer(text)["input_ids"] == loading.load_tokenizer("default")(text)["input_ids"]
    monkeypatch.setenv(loading.CACHE_ENV, "off")
    assert loading.gguf_cache_dir(gguf) is None
    assert loading._source_kwargs("default")[1] == {"gguf_file": loading.DEFAULT_GGUF_FILE}
