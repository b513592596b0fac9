"""What fused RMS norms save in one forward pass of the judge's body at a judge search's shapes.

Times ``last_hidden_state`` of the judge's cast copy (``--dtype``) with its own RMS norms and with them fused
(:func:`tokenmask.reconstructors.fused.fuse_rms_norms`, what ``refine_lookahead:...:bf16`` and ``move_agent:...:bf16``
use), on random token ids of ``--batch`` rows of ``--length`` tokens (default 64 x 385: a batch of the search's
``R`` passes at rate 0.5), warm, the device synchronised; prints one table with the machine named and the largest
difference of the hidden states.

    python benchmarks/fused_norms.py --device cuda                 # one GPU, bfloat16
    python benchmarks/fused_norms.py --device cpu --batch 2 --length 64 --dtype float32
"""

from __future__ import annotations

import argparse
import functools

import torch

from tokenmask.timing import seconds_per_call


def main(argv: list[str] | None = None) -> int:
    from tokenmask.evaluate.reports import device_description
    from tokenmask.reconstructors import Reconstructor

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--judge", default="default")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=385)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    judge = Reconstructor.load(args.judge, device=args.device, add_mask_token=False)
    device = torch.device(judge.device)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, judge.model.config.vocab_size, (args.batch, args.length), generator=generator)
    ids, attention = ids.to(device), torch.ones_like(ids, device=device)
    copies = {
        "own norms": judge.with_dtype(args.dtype),
        "fused norms": judge.with_dtype(args.dtype, fuse_norms=True),
    }
    print(
        f"judge body, {args.batch} x {args.length} tokens, {args.dtype}, {device_description(judge.device)}\n\n"
        "| norms | ms per pass | M tokens / s | max abs. difference of the hidden states |\n| --- | --- | --- | --- |"
    )
    with torch.inference_mode():
        reference = copies["own norms"].last_hidden_state(ids, attention).float()
        for name, twin in copies.items():
            forward = functools.partial(twin.last_hidden_state, ids, attention)
            ms = seconds_per_call(device, forward, args.repeats) * 1e3
            diff = float((forward().float() - reference).abs().max())
            print(f"| {name} | {ms:.2f} | {args.batch * args.length / ms / 1e3:.3f} | {diff:.3g} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
