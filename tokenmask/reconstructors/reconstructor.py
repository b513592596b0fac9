"""The reconstructor: a causal LM + tokenizer + mask token, scoring tokens in bits.

It is the only way tokenmask code reaches an LM: the environment, the baselines and the evaluation
all go through :class:`Reconstructor`, so a new model family works everywhere at once.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoModelForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from tokenmask.errors import InputError
from tokenmask.io import read_folder_meta, replace_dir, reraise_as, temporary_dir_beside
from tokenmask.reconstructors.fused import fuse_rms_norms
from tokenmask.reconstructors.loading import (
    DEFAULT_MODEL,
    load_causal_lm,
    load_tokenizer,
    pick_device,
    pick_dtype,
)
from tokenmask.reconstructors.options import MASK_MODES, MaskMode  # re-exported: a light module for configs

MASK_TOKEN = "<mask>"
RECONSTRUCTOR_FILE = "tokenmask_reconstructor.json"
LN2 = math.log(2.0)

TokenIds = Sequence[int]


class CorruptCheckpointError(ValueError):
    """Raised when a saved reconstructor folder cannot be read back."""


def pad_batch(
    sequences: Sequence[Sequence[int] | np.ndarray],
    pad_id: int,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token-id sequences into ``(input_ids, attention_mask)``, both ``(B, N)`` long.

    The one padding helper of tokenmask: :class:`Reconstructor` scoring, the metrics, the env's
    features and activation compression all batch through it. ``N`` is the longest sequence;
    padding ids are ``pad_id`` with attention 0.

    :param sequences: token ids per row (lists, tuples, ranges or 1-D integer arrays).
    :param pad_id: id written past each row's end.
    :param device: where the tensors go (``None``: the CPU).
    """
    width = max((len(s) for s in sequences), default=0)
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    attention = np.zeros((len(sequences), width), dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = np.asarray(seq, dtype=np.int64)
        attention[row, : len(seq)] = 1
    ids_t, attention_t = torch.from_numpy(ids), torch.from_numpy(attention)
    if device is None:
        return ids_t, attention_t
    return ids_t.to(device), attention_t.to(device)


# Per model object, how many times its weights were marked changed (see Reconstructor.mark_weights_changed).
# Kept per model, not per Reconstructor, because reconstructors loaded with share=True wrap one model.
_WEIGHTS_VERSIONS: weakref.WeakKeyDictionary[torch.nn.Module, int] = weakref.WeakKeyDictionary()


def weights_version(model: torch.nn.Module) -> int:
    """How many times the weights of ``model`` were marked changed (0 for a model never marked).

    :class:`~tokenmask.reconstructors.ReconstructorFinetuner` marks every optimizer step; caches of
    scores (the env's features and KV caches) compare it to know when to recompute.
    """
    return _WEIGHTS_VERSIONS.get(model, 0)


def mark_weights_changed(model: torch.nn.Module) -> int:
    """Record that the weights of ``model`` changed in place; return its new :func:`weights_version`."""
    version = weights_version(model) + 1
    _WEIGHTS_VERSIONS[model] = version
    return version


class Reconstructor:
    """A causal LM that prices tokens in bits, with a mask token for masked positions.

    Build one with :meth:`load` (any model name) or :meth:`from_pretrained` (a saved folder).

    :param model: a Hugging Face causal LM (already on its device).
    :param tokenizer: its tokenizer; it must contain the mask token when ``mask_token_id`` is set.
    :param mask_token_id: id of the mask token, or ``None`` for a judge that never sees masks.
    :param name: the model name it was loaded from (kept in saved folders).
    :param batch_size: how many sequences go through one forward pass.
    :param exclude_mask_from_predictions: give the mask token zero probability when scoring, so an
        added token does not take probability mass from real tokens.

    Scoring primitives, for code that needs more than :meth:`gather_log_probs`: :meth:`pad_batch`,
    :meth:`last_hidden_state`, :meth:`head_logits` and :meth:`gather_log_probs_top1`. Whoever changes
    the weights in place outside :class:`~tokenmask.reconstructors.ReconstructorFinetuner` calls
    :meth:`mark_weights_changed`, so cached scores are recomputed.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        mask_token_id: int | None,
        name: str = DEFAULT_MODEL,
        batch_size: int | None = None,
        exclude_mask_from_predictions: bool = True,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.mask_token_id = mask_token_id
        self.name = name
        self.device = next(model.parameters()).device
        self.batch_size = batch_size or (64 if self.device.type == "cuda" else 8)
        self.exclude_mask_from_predictions = exclude_mask_from_predictions
        bos = tokenizer.bos_token_id
        if bos is None:
            bos = tokenizer.eos_token_id
        if bos is None:
            raise ValueError(
                "The tokenizer has neither a BOS nor an EOS token; one is needed to start sequences."
            )
        self.bos_token_id: int = int(bos)
        self.pad_token_id: int = int(
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.bos_token_id
        )
        self.decoders: dict[tuple[int, ...], Any] = {}
        """Greedy decoders kept between calls of :func:`~tokenmask.reconstructors.judge.judge_continuations` (their
        cache buffers and captured CUDA graph), by batch shape and weights: a later call of the same shape refills and replays
        one instead of capturing a new graph. Cleared with :meth:`clear_decoders`."""

    def clear_decoders(self) -> None:
        """Release the kept greedy decoders (:attr:`decoders`) and their device memory."""
        self.decoders.clear()

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(
        cls,
        name: str = DEFAULT_MODEL,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = "auto",
        add_mask_token: bool = True,
        share: bool = True,
        batch_size: int | None = None,
    ) -> Reconstructor:
        """Load a reconstructor from a model name: ``default``, a ``.gguf`` file, a folder or a hub id.

        The loaded model is cached per process (the embedded GGUF takes ~20 s to load on 2 cores).

        :param name: model name, see :mod:`tokenmask.reconstructors.loading`.
        :param device: ``auto`` (cuda > mps > cpu) or a torch device.
        :param dtype: ``auto`` (bfloat16 on cuda, float32 elsewhere) or a dtype name.
        :param add_mask_token: add a ``<mask>`` token when the tokenizer has none.
        :param share: return the cached model itself; pass ``False`` to get a private copy that
            can be fine-tuned without changing other users of the cache.
        :param batch_size: sequences per forward pass (default 64 on cuda, 8 elsewhere).
        """
        if Path(os.path.expanduser(name)).joinpath(RECONSTRUCTOR_FILE).is_file():
            return cls.from_pretrained(name, device=device, dtype=dtype, batch_size=batch_size)
        torch_device = pick_device(device)
        torch_dtype = pick_dtype(torch_device, dtype)
        key = (name, str(torch_device), str(torch_dtype), add_mask_token)
        if key not in _CACHE:
            model = load_causal_lm(name, torch_device, torch_dtype)
            tokenizer = copy.deepcopy(load_tokenizer(name))
            mask_id = _ensure_mask_token(model, tokenizer) if add_mask_token else tokenizer.mask_token_id
            _CACHE[key] = (model, tokenizer, mask_id)
        model, tokenizer, mask_id = _CACHE[key]
        if not share:
            model, tokenizer = copy.deepcopy(model), copy.deepcopy(tokenizer)
        return cls(model, tokenizer, mask_id, name=name, batch_size=batch_size)

    @classmethod
    def from_config(
        cls,
        config: PretrainedConfig,
        tokenizer: PreTrainedTokenizerBase,
        device: str | torch.device | None = "cpu",
        seed: int = 0,
        add_mask_token: bool = True,
        batch_size: int | None = None,
    ) -> Reconstructor:
        """Build a randomly initialised reconstructor from a config (unit tests, speed benchmarks).

        :param config: a causal-LM config (e.g. a tiny ``LlamaConfig``).
        :param tokenizer: the tokenizer to pair with it (its vocabulary must fit ``config.vocab_size``).
        :param device: torch device.
        :param seed: seed of the random initialisation.
        :param add_mask_token: add a ``<mask>`` token when the tokenizer has none.
        :param batch_size: sequences per forward pass.
        """
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config).to(pick_device(device)).eval()
        tokenizer = copy.deepcopy(tokenizer)
        mask_id = _ensure_mask_token(model, tokenizer) if add_mask_token else tokenizer.mask_token_id
        return cls(model, tokenizer, mask_id, name=f"random:{config.model_type}", batch_size=batch_size)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = "auto",
        batch_size: int | None = None,
    ) -> Reconstructor:
        """Load a reconstructor saved with :meth:`save_pretrained`.

        :param path: the saved folder.
        :raises CorruptCheckpointError: if the folder is incomplete or its weights cannot be read.
        """
        folder = Path(path)
        # a missing GPU or a bad dtype is said as such, not as a damaged folder
        torch_device = pick_device(device)
        torch_dtype = pick_dtype(torch_device, dtype)
        meta = read_folder_meta(
            folder,
            RECONSTRUCTOR_FILE,
            CorruptCheckpointError,
            "a saved reconstructor",
            "pass a folder written by Reconstructor.save_pretrained, or load a model name with Reconstructor.load.",
        )
        with reraise_as(
            CorruptCheckpointError,
            f"The reconstructor folder {folder} is corrupt or incomplete. Fix: re-save it, or load the base model by name",
        ):
            model = load_causal_lm(str(folder), torch_device, torch_dtype)
            tokenizer = load_tokenizer(str(folder), cache=False)
        return cls(
            model,
            tokenizer,
            meta.get("mask_token_id"),
            name=meta.get("name", str(folder)),
            batch_size=batch_size,
            exclude_mask_from_predictions=meta.get("exclude_mask_from_predictions", True),
        )

    def save_pretrained(self, path: str | os.PathLike[str]) -> Path:
        """Save model, tokenizer and mask-token metadata to a folder, atomically.

        A GGUF-loaded model refuses ``save_pretrained``; its weights are copied into a fresh model
        built from the same config, which saves as safetensors.

        :param path: destination folder (replaced if it exists).
        :return: the folder path.
        """
        target = Path(path)
        tmp = temporary_dir_beside(target)
        try:
            self._plain_model().save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            meta = {
                "name": self.name,
                "mask_token_id": self.mask_token_id,
                "mask_token": self.tokenizer.convert_ids_to_tokens(self.mask_token_id)
                if self.mask_token_id is not None
                else None,
                "exclude_mask_from_predictions": self.exclude_mask_from_predictions,
            }
            (tmp / RECONSTRUCTOR_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
            replace_dir(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return target

    def with_dtype(self, dtype: str | torch.dtype, fuse_norms: bool = False) -> Reconstructor:
        """This reconstructor with its weights in ``dtype``: itself when they already are (and nothing is
        fused), else a copy.

        The copy shares the tokenizer, device, batch size and mask settings; its weights are cast
        from this one's (no reload). Use it for passes whose exact values matter less than their
        speed, e.g. a search's bfloat16 twin of a float32 judge, while the judge keeps scoring.
        Log-probabilities stay float32 either way.

        :param dtype: a dtype or its name (``float32``, ``bfloat16``, ``float16``; ``auto`` as in :meth:`load`).
        :param fuse_norms: the copy's RMS norms run as one fused kernel each
            (:func:`~tokenmask.reconstructors.fused.fuse_rms_norms`: about a quarter less time per forward pass on an
            H100 at the default model's width; values within the rounding of the variance's sum); always a copy.
        """
        torch_dtype = pick_dtype(self.device, dtype)
        if torch_dtype == self.model.dtype and not fuse_norms:
            return self
        model = copy.deepcopy(self.model)
        torch.nn.Module.to(
            model, torch_dtype
        ).eval()  # in place; PreTrainedModel's typing of .to hides this overload
        if fuse_norms:
            fuse_rms_norms(model)
        return Reconstructor(
            model,
            self.tokenizer,
            self.mask_token_id,
            name=self.name,
            batch_size=self.batch_size,
            exclude_mask_from_predictions=self.exclude_mask_from_predictions,
        )

    def _plain_model(self) -> PreTrainedModel:
        """The model itself, or a copy without GGUF quantization metadata that can save itself."""
        config = copy.deepcopy(self.model.config)
        if getattr(config, "quantization_config", None) is None:
            return self.model
        del config.quantization_config
        fresh = AutoModelForCausalLM.from_config(config, dtype=self.model.dtype)
        fresh.load_state_dict(self.model.state_dict())
        return fresh

    # ------------------------------------------------------------------ text helpers
    def encode(self, text: str) -> list[int]:
        """Token ids of a text, without BOS (tokenmask adds BOS itself where needed).

        :raises TypeError: if ``text`` is not a str.
        """
        if not isinstance(text, str):
            raise TypeError(
                f"encode takes a str, got a {type(text).__name__}. Fix: pass the text (decode bytes first)."
            )
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids (special tokens kept as they are)."""
        return str(self.tokenizer.decode(list(ids)))

    @property
    def vocab_size(self) -> int:
        """Token ids the reconstructor reads and scores: ``0 .. vocab_size - 1`` (the tokenizer's ids the LM has rows for)."""
        sizes = [len(self.tokenizer)]
        for table in (self.model.get_input_embeddings(), self.model.get_output_embeddings()):
            weight = getattr(table, "weight", None)
            if isinstance(weight, torch.Tensor):
                sizes.append(int(weight.shape[0]))
        return min(sizes)

    def check_ids(self, ids: torch.Tensor | np.ndarray) -> None:
        """Raise when an id lies outside ``0 .. vocab_size - 1`` (before torch fails on it with an index error).

        :raises InputError: one line naming the first bad id and the vocabulary size.
        """
        if not len(ids):
            return
        values = torch.as_tensor(ids)
        size = self.vocab_size
        bad = (values < 0) | (values >= size)
        if bool(bad.any()):
            first = int(values[bad].reshape(-1)[0])
            raise InputError(
                f"Token id {first} is outside the vocabulary of the reconstructor {self.name!r} ({size} ids: 0 .. {size - 1}).",
                fix="give ids of this reconstructor's tokenizer (reconstructor.encode(text)), not another model's.",
            )

    def _check_all(self, sequences: Sequence[TokenIds | np.ndarray]) -> None:
        """:meth:`check_ids` of every id of ``sequences`` at once."""
        arrays = []
        for sequence in sequences:
            array = np.asarray(sequence)
            if array.size and not np.issubdtype(array.dtype, np.integer):
                raise InputError(
                    f"Token ids must be integers, got {array.dtype} values (e.g. {array.reshape(-1)[0]!r}).",
                    fix="pass token ids (reconstructor.encode(text)), not texts or floats.",
                )
            arrays.append(array.astype(np.int64, copy=False).reshape(-1))
        self.check_ids(np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64))

    @property
    def num_parameters(self) -> int:
        """Number of parameters of the LM."""
        return sum(p.numel() for p in self.model.parameters())

    # ------------------------------------------------------------------ weights version
    @property
    def weights_version(self) -> int:
        """How many times the LM's weights were marked changed (every fine-tuning optimizer step)."""
        return weights_version(self.model)

    def mark_weights_changed(self) -> int:
        """Record an in-place change of the LM's weights (cached scores go stale); return the new version."""
        return mark_weights_changed(self.model)

    # ------------------------------------------------------------------ scoring primitives
    def pad_batch(self, sequences: Sequence[TokenIds | np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`pad_batch` with this reconstructor's pad id, on its device: ``(input_ids, attention_mask)``."""
        return pad_batch(sequences, self.pad_token_id, self.device)

    def last_hidden_state(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Final hidden states ``(B, N, D)`` (after the final norm), in the weights' dtype.

        Only the positions that are scored then go through :meth:`head_logits`, which keeps the
        ``(positions, vocab)`` logits small.

        :param input_ids: ``(B, N)`` token ids on the model's device.
        :param attention_mask: ``(B, N)`` 1 for real tokens, 0 for padding.
        """
        out = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 next-token logits of hidden states ``(..., D)`` -> ``(..., vocab)``, as tokenmask scores them.

        The LM head, then the model's logit scale and final soft-capping where its config has them,
        and the mask token at ``-inf`` when ``exclude_mask_from_predictions`` (zero probability).
        """
        logits = self.model.get_output_embeddings()(hidden).float()
        config = self.model.config
        scale = getattr(config, "logit_scale", None)
        if scale is not None:
            logits = logits * scale
        cap = getattr(config, "final_logit_softcapping", None)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        if (
            self.exclude_mask_from_predictions
            and self.mask_token_id is not None
            and self.mask_token_id < logits.shape[-1]
        ):
            logits = logits.clone()
            logits[..., self.mask_token_id] = float("-inf")
        return logits

    # ------------------------------------------------------------------ scoring
    def logits_at(self, inputs: Sequence[TokenIds], positions: Sequence[Sequence[int]]) -> torch.Tensor:
        """Float32 next-token logits (:meth:`head_logits`) at the given positions of each sequence, one forward pass.

        The one place tokenmask reads full distributions at chosen positions: :meth:`gather_log_probs` keeps
        each target's log-probability of them, the lookahead (``judge.soft_continuation_nlls``) whole rows.
        Sequences are right-padded (:meth:`pad_batch`) and their ids checked; the caller picks the autograd
        mode and the batch (every sequence here goes through the model at once).

        :param inputs: token-id sequences the LM reads.
        :param positions: for each sequence, the positions whose distributions are returned, each within it.
        :return: ``(sum of len(positions[b]), vocab)`` on the model's device, sequence by sequence, in order.
        :raises ValueError: no sequence, or a position outside the padded batch.
        """
        if not inputs:
            raise ValueError("logits_at needs at least one sequence.")
        sizes = torch.tensor([len(p) for p in positions], dtype=torch.long)
        rows = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
        cols = torch.cat([torch.as_tensor(list(p), dtype=torch.long) for p in positions])
        if len(cols) and (int(cols.max()) >= max(len(x) for x in inputs) or int(cols.min()) < 0):
            raise ValueError("A scored position lies outside its input sequence.")
        ids, attention = pad_batch(inputs, self.pad_token_id)
        self.check_ids(ids)
        hidden = self.last_hidden_state(ids.to(self.device), attention.to(self.device))
        return self.head_logits(hidden[rows.to(self.device), cols.to(self.device)])

    def gather_log_probs(
        self,
        inputs: Sequence[TokenIds],
        positions: Sequence[Sequence[int]],
        targets: Sequence[TokenIds],
        grad: bool = False,
    ) -> list[torch.Tensor]:
        """The scoring primitive: ``log p(target | inputs[:position + 1])`` in nats, float32.

        For each sequence ``b``, the LM reads ``inputs[b]`` (right-padded in the batch, attention
        mask set) and, for each ``k``, the distribution predicted at ``positions[b][k]`` is read at
        token ``targets[b][k]``. One forward pass per ``batch_size`` sequences.

        :param inputs: token-id sequences the LM reads.
        :param positions: for each sequence, the positions whose next-token distributions are read.
        :param targets: for each sequence, the token ids looked up (same length as ``positions``).
        :param grad: keep the autograd graph (fine-tuning); otherwise run under ``no_grad``.
        :return: one 1-D float32 tensor per sequence (on the model's device when ``grad``, else cpu).
        """
        return self._score(inputs, positions, targets, grad, top1=False)[0]

    def gather_log_probs_top1(
        self,
        inputs: Sequence[TokenIds],
        positions: Sequence[Sequence[int]],
        targets: Sequence[TokenIds],
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """:meth:`gather_log_probs` and, from the same forward pass, whether each target is the argmax.

        :return: per sequence, float32 ``log p(target)`` in nats and a bool tensor, ``True`` where
            the target is the most probable token at its position (both on the cpu).
        """
        logps, top1 = self._score(inputs, positions, targets, grad=False, top1=True)
        assert top1 is not None
        return logps, top1

    def _score(
        self,
        inputs: Sequence[TokenIds],
        positions: Sequence[Sequence[int]],
        targets: Sequence[TokenIds],
        grad: bool,
        top1: bool,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Batches of ``batch_size`` sequences through :meth:`_score_batch`."""
        if not (len(inputs) == len(positions) == len(targets)):
            raise ValueError("inputs, positions and targets must have the same number of sequences.")
        logps: list[torch.Tensor] = []
        hits: list[torch.Tensor] = []
        context = torch.enable_grad() if grad else torch.inference_mode()
        with context:
            for start in range(0, len(inputs), self.batch_size):
                stop = start + self.batch_size
                batch_logps, batch_hits = self._score_batch(
                    inputs[start:stop], positions[start:stop], targets[start:stop], grad, top1
                )
                logps.extend(batch_logps)
                hits.extend(batch_hits or [])
        return logps, hits if top1 else None

    def _score_batch(
        self,
        inputs: Sequence[TokenIds],
        positions: Sequence[Sequence[int]],
        targets: Sequence[TokenIds],
        grad: bool,
        top1: bool,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        lengths = [len(x) for x in inputs]
        if min(lengths, default=0) < 1:
            raise ValueError("Every input sequence needs at least one token (start it with BOS).")
        sizes = [len(p) for p in positions]
        if sum(sizes) == 0:
            empty = [torch.zeros(0) for _ in inputs]
            return empty, [torch.zeros(0, dtype=torch.bool) for _ in inputs] if top1 else None
        tgt_cpu = torch.cat([torch.as_tensor(list(t), dtype=torch.long) for t in targets])
        if len(tgt_cpu) != sum(sizes):
            raise ValueError("Each sequence needs as many targets as scored positions.")
        self.check_ids(tgt_cpu)
        tgt = tgt_cpu.to(self.device)
        logits = self.logits_at(inputs, positions)
        logp = torch.log_softmax(logits, dim=-1).gather(1, tgt[:, None])[:, 0]
        hits = None
        if top1:
            hits = list(torch.split((logits.argmax(-1) == tgt).cpu(), sizes))
        if not grad:
            logp = logp.cpu()
        return list(torch.split(logp, sizes)), hits

    def sequence_log_probs(self, sequences: Sequence[TokenIds], grad: bool = False) -> list[torch.Tensor]:
        """``log p(s[j] | s[:j])`` in nats for ``j = 1 .. len(s) - 1`` of each sequence (float32).

        :param sequences: token-id sequences, each of at least one token (start them with BOS).
        """
        return self.gather_log_probs(
            sequences,
            [range(len(s) - 1) for s in sequences],
            [list(s)[1:] for s in sequences],
            grad=grad,
        )

    def masked_inputs(
        self,
        ids: TokenIds,
        mask: Sequence[bool] | None,
        mode: MaskMode = "delete",
        prefix: TokenIds = (),
    ) -> tuple[list[int], list[int]]:
        """The LM input for a masked document and, per original token, the position predicting it.

        ``placeholder``: masked tokens are replaced by the mask token; token ``i`` is predicted at
        the position just before it. ``delete``: masked tokens are removed; token ``i`` is predicted
        after the last kept token before it (a run of deleted tokens shares that distribution).

        :param ids: the original token ids.
        :param mask: per token, ``True`` = masked; ``None`` = nothing masked.
        :param mode: ``placeholder`` or ``delete``.
        :param prefix: unmasked tokens read before the document (after BOS).
        :return: ``(input_ids, predicting_positions)``.
        """
        if mode not in MASK_MODES:
            raise ValueError(f"Unknown mask mode {mode!r}. Fix: use one of {MASK_MODES}.")
        ids = list(ids)
        flags = [False] * len(ids) if mask is None else [bool(m) for m in mask]
        if len(flags) != len(ids):
            raise ValueError(f"mask has {len(flags)} entries for {len(ids)} tokens; they must match.")
        head = [self.bos_token_id, *prefix]
        if mode == "placeholder":
            if any(flags) and self.mask_token_id is None:
                raise ValueError(
                    "placeholder mode needs a mask token. Fix: load the reconstructor with add_mask_token=True."
                )
            mask_id = int(self.mask_token_id) if self.mask_token_id is not None else -1
            body = [mask_id if f else t for t, f in zip(ids, flags)]
            return head + body, [len(head) - 1 + i for i in range(len(ids))]
        inputs = list(head)
        predicting: list[int] = []
        for token, masked in zip(ids, flags):
            predicting.append(len(inputs) - 1)
            if not masked:
                inputs.append(token)
        return inputs, predicting

    def token_bits(
        self,
        ids: Sequence[TokenIds],
        masks: Sequence[Sequence[bool]] | None = None,
        mode: MaskMode = "delete",
        prefixes: Sequence[TokenIds] | None = None,
    ) -> list[np.ndarray]:
        """Bits of every original token given the masked document: ``-log2 p(x_i | masked prefix)``.

        One batched forward pass per ``batch_size`` documents; padding never changes a document's bits.

        :param ids: original token ids per document.
        :param masks: per document and token, ``True`` = masked (``None``: nothing masked, i.e. surprisal).
        :param mode: ``delete`` (masked tokens removed from the input) or ``placeholder`` (mask token kept).
        :param prefixes: optional unmasked context per document, read after BOS and before it.
        :return: one float64 array of bits per document, one entry per original token.
        :raises InputError: an id outside the vocabulary (checked before any forward pass).
        """
        self._check_all([*ids, *(prefixes or [])])
        inputs, positions = [], []
        for b, doc in enumerate(ids):
            inp, pos = self.masked_inputs(
                doc, None if masks is None else masks[b], mode, () if prefixes is None else prefixes[b]
            )
            inputs.append(inp)
            positions.append(pos)
        logps = self.gather_log_probs(inputs, positions, [list(d) for d in ids])
        return [(-lp.double().numpy()) / LN2 for lp in logps]

    def masked_loss(
        self,
        ids: Sequence[TokenIds],
        masks: Sequence[Sequence[bool]],
        mode: MaskMode = "delete",
    ) -> torch.Tensor:
        """Mean negative log-likelihood (nats) of the masked tokens, with gradients (fine-tuning loss).

        :param ids: original token ids per document.
        :param masks: per document and token, ``True`` = masked.
        :param mode: ``delete`` or ``placeholder``, as in :meth:`token_bits`.
        """
        self._check_all(ids)
        inputs, positions, targets = [], [], []
        for doc, mask in zip(ids, masks):
            inp, pos = self.masked_inputs(doc, mask, mode)
            chosen = [i for i, m in enumerate(mask) if m]
            inputs.append(inp)
            positions.append([pos[i] for i in chosen])
            targets.append([doc[i] for i in chosen])
        logps = self.gather_log_probs(inputs, positions, targets, grad=True)
        total = torch.cat(logps)
        if total.numel() == 0:
            return torch.zeros((), device=self.device, requires_grad=True)
        return -total.mean()


_CACHE: dict[tuple[str, str, str, bool], tuple[PreTrainedModel, PreTrainedTokenizerBase, Any]] = {}


def _ensure_mask_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    """Add a ``<mask>`` token when the tokenizer has none; its embedding starts at the mean embedding.

    :return: the mask token id.
    """
    if tokenizer.mask_token_id is not None:
        return int(tokenizer.mask_token_id)
    tokenizer.add_special_tokens({"mask_token": MASK_TOKEN})
    mask_id = int(tokenizer.convert_tokens_to_ids(MASK_TOKEN))  # type: ignore[arg-type]
    if mask_id >= int(model.get_input_embeddings().weight.shape[0]):  # type: ignore[index]
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    # the new row is exactly the mean of the others (input and, when untied, output embeddings): it keeps
    # the LM's outputs sane and is deterministic (transformers' mean_resizing samples it at random)
    with torch.no_grad():
        for layer in (model.get_input_embeddings(), model.get_output_embeddings()):
            weight = getattr(layer, "weight", None)
            if weight is not None and weight.shape[0] > mask_id:
                weight[mask_id] = weight[:mask_id].float().mean(0).to(weight.dtype)
    mark_weights_changed(model)
    return mask_id
