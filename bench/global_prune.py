"""Time one global `Pruner.prune_to` on a model with 25M+ prunable conv weights.

    python bench/global_prune.py [--device cpu|cuda] [--repeats 5] [--json PATH]

Each repeat builds fresh masks (weights re-drawn) and times a prune to 0.5, then from
there to 0.9 (the second call also ranks the already-pruned weights). Side by side, on
the same 28M magnitudes, it times the Pruner's exact selection of the k-th smallest
(a sampled bracket, then `kthvalue` inside it) against a plain `torch.kthvalue`. Prints
the medians, and writes them as JSON with --json.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch
from _common import json_path, machine, write_json
from torch import nn

from oneprune.cli import OneLineParser
from oneprune.pruning import Pruner, kth_smallest


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(device: torch.device, repeats: int) -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Conv2d(1024, 1024, 3, bias=False) for _ in range(3)]).to(device)
    weights = sum(p.numel() for p in model.parameters())
    first, second, bracketed, plain = [], [], [], []
    k = round(0.9 * weights)
    for _ in range(repeats):
        with torch.no_grad():
            for conv in model:
                conv.weight.normal_()
            magnitudes = torch.cat([conv.weight.abs().flatten() for conv in model])
        bracketed.append(_timed(lambda m=magnitudes: kth_smallest(m, k), device))
        plain.append(_timed(lambda m=magnitudes: torch.kthvalue(m, k), device))
        pruner = Pruner(model, scope="global")
        first.append(_timed(lambda p=pruner: p.prune_to(0.5), device))
        second.append(_timed(lambda p=pruner: p.prune_to(0.9), device))
        assert pruner.sparsity() == k / weights
    return {"device": str(device), "prunable_weights": weights, "repeats": repeats,
            "global_prune_to_0.5_seconds": statistics.median(first),
            "global_prune_0.5_to_0.9_seconds": statistics.median(second),
            "kth_smallest_bracketed_seconds": statistics.median(bracketed),
            "kth_smallest_plain_kthvalue_seconds": statistics.median(plain),
            "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python bench/global_prune.py",
                           description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=json_path, help="write the results here")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    result = {**measure(torch.device(args.device), args.repeats), "machine": machine()}
    print(json.dumps(result, indent=2))
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
