"""Activation clustering as an in-model compressor of ``tokenmask evaluate`` (docs/evaluation.md, last section).

``tokenmask evaluate --methods truncation,activation,activation:runs/act/model`` scores it on the
same table as the text compressors. The method name's argument is empty (fresh compression layers
with the default settings on the judge's own LM), a folder saved by ``tokenmask activation train``
(trained with ``freeze_base``, so the judge's weights are unchanged), or a JSON file of
:class:`~tokenmask.activation_compression.config.CompressionConfig` keys.

Per document: ``BOS + context`` is pre-filled through the compressing judge, with the clusters of
each compression layer chosen so the KV entries kept over **all** layers are the requested
fraction of the uncompressed context's (docs/evaluation.md's in-model rate; the layer plan's shape
is followed, :func:`~tokenmask.activation_compression.plan.cluster_targets`); the continuation
(retention) and ``sep + context`` (recoverability) are then scored against what was kept, their
position ids continuing after the full context. The last context token stays an uncompressed
position (it is the query that predicts the next token) and counts as kept; the layers before the
first compression layer keep every position. Each score carries the positions kept per layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tokenmask.activation_compression.config import CompressionConfig
from tokenmask.activation_compression.model import META_FILE, CompressedCausalLM, check_same_tokenizer
from tokenmask.config import read_config_file
from tokenmask.evaluate.compressor import InModelResult, InModelScore, MethodContext, check_rate
from tokenmask.reconstructors import Reconstructor, pad_batch
from tokenmask.timing import timed_call

TokenIds = Sequence[int]


class ActivationInModelCompressor:
    """:class:`~tokenmask.evaluate.compressor.InModelCompressor` of activation clustering.

    :param model: compression layers wrapped around the judge's LM.
    :param name: the method's name in reports.
    """

    def __init__(self, model: CompressedCausalLM, name: str = "activation") -> None:
        self.model = model
        self.name = name

    def _score_batch(
        self, contexts: Sequence[TokenIds], tails: Sequence[TokenIds], rate: float, skip: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """NLL of ``tails[b][skip:]`` after the compressed ``BOS + context``, and the ``(B, L)`` positions
        of ``BOS + context`` kept / held uncompressed per layer."""
        model = self.model
        bos = model.reconstructor.bos_token_id
        ids, mask = pad_batch(
            [[bos, *c, *t] for c, t in zip(contexts, tails)], model.reconstructor.pad_token_id
        )
        prefix = torch.as_tensor([1 + len(c) for c in contexts])
        score = torch.zeros_like(mask, dtype=torch.bool)
        for row, (c, t) in enumerate(zip(contexts, tails)):
            score[row, 1 + len(c) + skip : 1 + len(c) + len(t)] = True
        with torch.no_grad():
            # the last context token is kept raw: it is the query predicting the first tail token
            output = model(
                ids,
                mask,
                compress_lengths=prefix - 1,
                mode="prefill",
                target_rate=rate,
                cache_lengths=prefix,
            )
            nll = model.token_nlls(output, ids, score).sum(1)
        return nll.cpu(), output.layer_kept.cpu(), output.layer_total.cpu()

    def _prefill_seconds(self, contexts: Sequence[TokenIds], rate: float) -> float:
        """Wall time of the compressing pre-fill of ``BOS + context`` alone."""
        model = self.model
        ids, mask = pad_batch(
            [[model.reconstructor.bos_token_id, *c] for c in contexts], model.reconstructor.pad_token_id
        )
        prefix = torch.as_tensor([1 + len(c) for c in contexts])
        with torch.no_grad():
            return timed_call(
                model.device, model, ids, mask, compress_lengths=prefix - 1, mode="prefill", target_rate=rate
            )[1]

    def score(
        self,
        judge: Reconstructor,
        contexts: Sequence[TokenIds],
        continuations: Sequence[TokenIds],
        sep: TokenIds,
        rate: float,
        seed: int = 0,
    ) -> InModelResult:
        """Compress each context inside the judge and return the NLLs with what was kept (see the module docstring)."""
        check_rate(rate)
        embeddings: Any = judge.model.get_input_embeddings()
        check_same_tokenizer(self.model, int(embeddings.weight.shape[0]))
        if len(contexts) != len(continuations):
            raise ValueError(
                f"{len(contexts)} contexts for {len(continuations)} continuations; they must match."
            )
        torch.manual_seed(seed)
        scores: list[InModelScore] = []
        seconds = 0.0
        step = self.model.reconstructor.batch_size
        for start in range(0, len(contexts), step):
            ctx = [list(c) for c in contexts[start : start + step]]
            cont_nll, kept, total = self._score_batch(
                ctx, [list(c) for c in continuations[start : start + step]], rate
            )
            recover_nll, _, _ = self._score_batch(ctx, [[*sep, *c] for c in ctx], rate, skip=len(sep))
            seconds += self._prefill_seconds(ctx, rate)
            for row in range(len(ctx)):
                scores.append(
                    InModelScore(
                        context_nll=float(recover_nll[row]),
                        continuation_nll=float(cont_nll[row]),
                        positions_kept=int(kept[row].sum()),
                        positions_total=int(total[row].sum()),
                        layer_kept=[int(x) for x in kept[row].tolist()],
                        layer_total=[int(x) for x in total[row].tolist()],
                    )
                )
        return InModelResult(scores=scores, compress_seconds=seconds)


def build_activation_method(argument: str, context: MethodContext) -> ActivationInModelCompressor:
    """Factory of the ``activation`` method (see the module docstring for ``argument``).

    :raises ValueError: for a folder whose base LM was fine-tuned (the judge must score), or an unreadable argument.
    """
    judge = context.judge
    name = f"activation:{argument}" if argument else "activation"
    if not argument:
        return ActivationInModelCompressor(CompressedCausalLM(judge, CompressionConfig()), name)
    path = Path(argument)
    if (path / META_FILE).is_file():
        model = CompressedCausalLM.from_pretrained(path, reconstructor=judge)
        if model.reconstructor is not judge:
            raise ValueError(
                f"{path} carries its own fine-tuned base LM; the judge must score in-model compressors. "
                "Fix: evaluate compression layers trained with --freeze_base true."
            )
        return ActivationInModelCompressor(model, name)
    if path.suffix == ".json" and path.is_file():
        values = read_config_file(path)
        known = set(CompressionConfig().to_dict())
        config = CompressionConfig(**{k: v for k, v in values.items() if k in known})
        return ActivationInModelCompressor(CompressedCausalLM(judge, config), name)
    raise ValueError(
        f"activation:{argument}: not a folder saved by `tokenmask activation train` nor a JSON config file. "
        "Fix: e.g. activation:runs/activation/model or activation:configs/dev/activation_eval.json."
    )
