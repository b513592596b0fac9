"""A learned move ranker: the judge's transformer, fine-tuned to pick ``refine_lookahead``'s move (issue 12).

Stops 26-27 fitted small MLPs on hand features (one-pass LM features and the base prefix's per-token NLLs)
to predict each move's judged recoverability gain ``dR``; the best correlated 0.78 and kept about half of the
search's gain. This asks whether capacity and data close the gap: the judge's own 30-layer transformer
reads the context once (a learned vector marks the base mask's kept tokens), each move is the mean of its
last hidden states over the run it keeps and over the tokens it drops, beside the same hand features,
and an MLP head predicts ``(dR, dF)``; the whole is fine-tuned on ``run_candidates.py`` files of many train
windows (``--offsets``). The ablation is the hand-feature MLP on the same data (``--lm false``).

Only ``refine_lookahead``'s moves compete (oldest-token drops of ``GUARD_MOVES``, the base's last 32 kept
tokens protected). The choice per context and rate: the move of highest predicted ``dR`` (the base when none
is predicted positive). Scored on the validation file's judged ``R`` and ``F`` beside the search's own rule and
``p`` (``--soft 64`` files), with the paired intervals of the bar::

    python benchmarks/move_ranker.py --train runs/rk/train_0.json,runs/rk/train_1.json \\
        --validation runs/rk/validation.json --device cuda --json runs/rk/ranker.json

Reads the continuation only through the files' judged ``F`` (to score choices); the ranker never sees it.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

PROTECT = 32
"""``refine_lookahead``'s protected tail: only moves that keep the base's last kept tokens compete."""

POOL = 128
"""Width each pooled hidden-state summary (the run kept, the tokens dropped) is projected to."""


@dataclass
class Group:
    """One context at one rate: its moves' masks, hand features and judged gains."""

    doc: int
    rate: str
    context: np.ndarray  # (C,) ids
    base: np.ndarray  # (C,) bool, the base mask
    index: np.ndarray  # (n,) candidate indices in the file
    added: np.ndarray  # (n, C) bool: tokens each move keeps that the base drops
    dropped: np.ndarray  # (n, C) bool: base tokens each move drops
    features: np.ndarray  # (n, F)
    gains: np.ndarray  # (n, 2): dR, dF in the files' units


def load_groups(paths: str) -> tuple[list[dict[str, Any]], list[Group]]:
    """The documents of the comma-separated files and one :class:`Group` per document and rate
    (``candidate_analysis.pointer_rows``' candidates, features and targets)."""
    from candidate_analysis import pointer_rows

    docs, keys, x, y = pointer_rows(paths, PROTECT, with_nll=True)
    rows: dict[tuple[int, str], list[int]] = {}
    for k, (i, rate, _) in enumerate(keys):
        rows.setdefault((i, rate), []).append(k)
    groups = []
    for (i, rate), ks in rows.items():
        c = docs[i]["rates"][rate]
        base = c["masks"][0]
        index = np.array([keys[k][2] for k in ks])
        masks = np.stack([c["masks"][j] for j in index])
        groups.append(
            Group(
                i,
                rate,
                np.asarray(docs[i]["context"]),
                base,
                index,
                masks & ~base,
                base & ~masks,
                x[ks],
                y[ks],
            )
        )
    return docs, groups


class Ranker:
    """The LM ranker (``lm=True``) or the hand-feature MLP: ``predict(groups)`` gives ``(dR, dF)`` per move."""

    def __init__(
        self,
        feature_mean: np.ndarray,
        feature_scale: np.ndarray,
        target_scale: np.ndarray,
        lm: bool,
        device: str,
        model: str = "default",
    ) -> None:
        import torch
        from torch import nn

        from tokenmask.reconstructors import Reconstructor

        self.torch = torch
        self.device = torch.device(device)
        self.mean = torch.tensor(feature_mean, device=self.device)
        self.scale = torch.tensor(feature_scale, device=self.device)
        self.target_scale = torch.tensor(target_scale, device=self.device)
        self.lm = None
        width = 0
        if lm:
            judge = Reconstructor.load(
                model, device=device, dtype="float32", add_mask_token=False, share=False
            )
            self.lm = judge.model.model  # the decoder stack (last hidden states)
            self.bos = int(judge.tokenizer.bos_token_id)
            width = int(judge.model.config.hidden_size)
            self.kept = nn.Parameter(torch.zeros(width, device=self.device))
            self.pool = nn.Linear(width, POOL).to(self.device)
        self.head = nn.Sequential(
            nn.Linear(len(feature_mean) + (2 * POOL if lm else 0), 128),
            nn.GELU(),
            nn.Dropout(0.1),
            nn.Linear(128, 128),
            nn.GELU(),
            nn.Linear(128, 2),
        ).to(self.device)

    def parameters(self) -> tuple[list[Any], list[Any]]:
        """(backbone parameters, head parameters)."""
        head = list(self.head.parameters())
        if self.lm is None:
            return [], head
        return list(self.lm.parameters()), head + [self.kept, *self.pool.parameters()]

    def train(self, mode: bool) -> None:
        self.head.train(mode)
        if self.lm is not None:
            self.lm.train(mode)

    def forward(self, groups: list[Group]) -> list[Any]:
        """Standardised ``(dR, dF)`` predictions per group."""
        torch = self.torch
        feats = [(torch.tensor(g.features, device=self.device) - self.mean) / self.scale for g in groups]
        if self.lm is None:
            return [self.head(f) for f in feats]
        ids = torch.tensor(
            np.stack([np.concatenate([[self.bos], g.context]) for g in groups]), device=self.device
        )
        kept = torch.tensor(np.stack([np.concatenate([[False], g.base]) for g in groups]), device=self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            emb = self.lm.embed_tokens(ids) + kept[..., None].float() * self.kept
            hidden = self.lm(inputs_embeds=emb).last_hidden_state[:, 1:].float()
        out = []
        for g, h, f in zip(groups, hidden, feats):
            pooled = []
            for which in (g.added, g.dropped):
                w = torch.tensor(which, device=self.device, dtype=torch.float32)
                pooled.append(self.pool((w @ h) / w.sum(1, keepdim=True).clamp(min=1)))
            out.append(self.head(torch.cat([*pooled, f], dim=1)))
        return out

    def predict(self, groups: list[Group], batch: int) -> list[np.ndarray]:
        """``(dR, dF)`` per move of each group, in the files' units."""
        self.train(False)
        out = []
        with self.torch.no_grad():
            for start in range(0, len(groups), batch):
                out += [
                    (p * self.target_scale).cpu().numpy() for p in self.forward(groups[start : start + batch])
                ]
        return out


def fit(ranker: Ranker, groups: list[Group], epochs: int, batch: int, seed: int, tau: float) -> list[float]:
    """Fine-tune: MSE on both standardised gains plus a listwise loss on dR (softmax over each group's moves
    against ``softmax(dR / tau)``, ``tau`` in standardised units). Returns the mean loss per epoch."""
    from tqdm import tqdm

    torch = ranker.torch
    backbone, head = ranker.parameters()
    groups_: list[dict[str, Any]] = [{"params": head, "lr": 1e-3}] + (
        [{"params": backbone, "lr": 2e-5}] if backbone else []
    )
    opt = torch.optim.AdamW(groups_, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    losses = []
    steps = epochs * ((len(groups) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[g["lr"] for g in groups_], total_steps=steps, pct_start=0.1
    )
    for _ in range(epochs):
        ranker.train(True)
        total = 0.0
        order = rng.permutation(len(groups))
        for start in tqdm(range(0, len(groups), batch), desc="ranker", leave=False):
            part = [groups[i] for i in order[start : start + batch]]
            preds = ranker.forward(part)
            loss = torch.zeros((), device=ranker.device)
            for g, p in zip(part, preds):
                y = torch.tensor(g.gains, device=ranker.device) / ranker.target_scale
                loss = loss + ((p - y) ** 2).mean()
                loss = loss - (torch.softmax(y[:, 0] / tau, 0) * torch.log_softmax(p[:, 0] / tau, 0)).sum()
            loss = loss / len(part)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in groups_ for p in g["params"]], 1.0)
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(part)
        losses.append(total / len(groups))
    return losses


def choices(
    groups: list[Group], preds: list[np.ndarray], docs: list[dict[str, Any]], rate: str, mu: float = 0.0
) -> list[int]:
    """Per document: the move of highest ``dR + mu * dF`` predicted, or the base (0) when none is above 0."""
    pick = [0] * len(docs)
    for g, p in zip(groups, preds):
        if g.rate != rate:
            continue
        score = p[:, 0] + mu * p[:, 1]
        if score.max() > 0:
            pick[g.doc] = int(g.index[int(np.argmax(score))])
    return pick


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", required=True, help="run_candidates.py files (comma-separated)")
    parser.add_argument("--validation", required=True, help="run_candidates.py --soft 64 file(s) to score on")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16, help="contexts x rates per step")
    parser.add_argument("--tau", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--lm", default="true,false", help="which rankers: true (LM), false (hand features), or both"
    )
    parser.add_argument("--model", default="default", help="the LM ranker's backbone (the judge)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)

    import torch
    from candidate_analysis import (
        EST_COLUMN,
        NLL_FEATURES,
        RATES,
        base_nlls,
        interval_cell,
        metric,
        proposal_choice,
        setting_choice,
    )

    from tokenmask.evaluate.reports import device_description
    from tokenmask.io import atomic_write_json
    from tokenmask.reconstructors.loading import pick_device

    device = str(pick_device(args.device))
    began = time.perf_counter()
    _, train = load_groups(args.train)
    docs, val = load_groups(args.validation)
    x = np.concatenate([g.features for g in train])
    y = np.concatenate([g.gains for g in train])
    print(
        f"{len(train)} train groups ({len(x)} moves), {len(val)} validation groups; features {time.perf_counter() - began:.0f} s"
    )
    rows: dict[str, dict[str, Any]] = {}

    def report(name: str, pick_of: Any) -> None:
        cells, row = [], {}
        for rate in RATES:
            pick = pick_of(rate)
            d_rec, d_ret = metric(docs, rate, pick)
            row[rate] = {"d_rec": d_rec, "d_ret": d_ret, "interval": interval_cell(docs, rate, pick)}
            cells.append(f"{d_rec:+.3f} / {d_ret:+.3f}")
        rows[name] = row
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)

    print(
        "| choice | "
        + " | ".join(f"{r}: d rec / d ret" for r in RATES)
        + " |\n| --- |"
        + " --- |" * len(RATES)
    )
    report(
        "lowest judged R among the moves (a perfect R predictor)",
        lambda r: choices(val, [g.gains for g in val], docs, r),
    )
    report("refine_lookahead (the search's rule)", lambda r: setting_choice(docs, r, f"o:{PROTECT}:0.02"))
    # the per-token NLLs load_groups cached beside each file, per document in the files' order
    per_doc = [
        {k: v[i] for k, v in nlls.items()}
        for nlls in (base_nlls(path, []) for path in args.validation.split(","))
        for i in range(len(nlls["e"]))
    ]
    report("refine_lookahead:p (16 judged)", lambda r: proposal_choice(docs, per_doc, r, 16))
    est = [g.features[:, EST_COLUMN - NLL_FEATURES] for g in val]
    report("est alone (no learning)", lambda r: choices(val, [np.stack([e, e], 1) for e in est], docs, r))
    for lm in [v.strip() == "true" for v in args.lm.split(",")]:
        torch.manual_seed(args.seed)
        ranker = Ranker(x.mean(0), x.std(0) + 1e-6, y.std(0), lm, device, args.model)
        t0 = time.perf_counter()
        losses = fit(ranker, train, args.epochs, args.batch, args.seed, args.tau)
        preds = ranker.predict(val, args.batch)
        p, t = np.concatenate(preds), np.concatenate([g.gains for g in val])
        name = "LM ranker (fine-tuned judge)" if lm else "hand-feature MLP (same data)"
        corr = [float(np.corrcoef(p[:, k], t[:, k])[0, 1]) for k in (0, 1)]
        print(
            f"\n{name}: {time.perf_counter() - t0:.0f} s, losses {', '.join(f'{v:.3f}' for v in losses)}; "
            f"correlation with judged dR {corr[0]:.3f}, dF {corr[1]:.3f}"
        )
        report(name, lambda r, p=preds: choices(val, p, docs, r))  # type: ignore[misc]
        report(name + ", + 0.5 x predicted dF", lambda r, p=preds: choices(val, p, docs, r, 0.5))  # type: ignore[misc]
        rows[name]["correlation"] = corr
        rows[name]["losses"] = losses
        # per validation context and rate: the candidates' indices in the file and their predicted (dR, dF),
        # so guards and choices can be studied later without the GPU
        rows[name]["predictions"] = [
            {"doc": g.doc, "rate": g.rate, "index": g.index.tolist(), "pred": np.round(q, 6).tolist()}
            for g, q in zip(val, preds)
        ]
    for name, row in rows.items():
        print(f"{name}: " + "; ".join(f"{r}: {row[r]['interval']}" for r in RATES))
    print(f"{len(train)} train groups; {time.perf_counter() - began:.0f} s in all")
    if args.json:
        atomic_write_json(
            args.json,
            {
                "train": args.train,
                "validation": args.validation,
                "machine": device_description(torch.device(device)),
                "seconds": time.perf_counter() - began,
                "args": vars(args),
                "rows": rows,
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
