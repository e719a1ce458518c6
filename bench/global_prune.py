"""Time one `Pruner.prune_to` on a model with 25M+ prunable conv weights, for every
registered allocation that can reach 90% on it (`oneprune.allocation.ALLOCATIONS`: the
global ranking, LAMP's, and those that compute per-layer budgets).

    python bench/global_prune.py [--device cpu|cuda] [--repeats 5] [--json PATH]

Each repeat re-draws the weights and, for each allocation in turn (the same weights for
all of them), builds fresh masks and times a prune to 0.5, then from there to 0.9 (the
second call also ranks the already-pruned weights). Ratios are taken against the global
prune of the same repeat. Side by side, on the same 28M magnitudes, it times the Pruner's
exact selection of the k-th smallest (a sampled bracket, then `kthvalue` inside it)
against a plain `torch.kthvalue`. Prints the medians, and writes them as JSON with --json.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch
from _common import json_path, machine, write_json
from torch import nn

from oneprune.allocation import ALLOCATIONS
from oneprune.cli import OneLineParser
from oneprune.pruning import Pruner
from oneprune.ranking import kth_smallest


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def reaching(model: nn.Module, sparsity: float) -> tuple[tuple[str, ...], dict[str, str]]:
    """The registered allocations that can prune `model` to `sparsity`, and why each other
    one cannot (uniform+ keeps its first layer dense)."""
    usable, skipped = [], {}
    for name in ALLOCATIONS:
        try:
            Pruner(model, allocation=name).check_reachable(sparsity)
            usable.append(name)
        except ValueError as error:
            skipped[name] = str(error)
    return tuple(usable), skipped


def measure(device: torch.device, repeats: int) -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Conv2d(1024, 1024, 3, bias=False) for _ in range(3)]).to(device)
    weights = sum(p.numel() for p in model.parameters())
    allocations, skipped = reaching(model, 0.9)
    first = {name: [] for name in allocations}
    second = {name: [] for name in allocations}
    bracketed, plain = [], []
    k = round(0.9 * weights)
    for repeat in range(repeats):
        with torch.no_grad():
            for conv in model:
                conv.weight.normal_()
            drawn = [conv.weight.clone() for conv in model]
            magnitudes = torch.cat([conv.weight.abs().flatten() for conv in model])
        bracketed.append(_timed(lambda m=magnitudes: kth_smallest(m, k), device))
        plain.append(_timed(lambda m=magnitudes: torch.kthvalue(m, k), device))
        shift = repeat % len(allocations)  # the order rotates, so drift hits all alike
        for name in allocations[shift:] + allocations[:shift]:
            with torch.no_grad():
                for conv, weight in zip(model, drawn, strict=True):
                    conv.weight.copy_(weight)
            pruner = Pruner(model, allocation=name)
            first[name].append(_timed(lambda p=pruner: p.prune_to(0.5), device))
            second[name].append(_timed(lambda p=pruner: p.prune_to(0.9), device))
            assert pruner.sparsity() == k / weights
    result = {"device": str(device), "prunable_weights": weights, "repeats": repeats,
              "kth_smallest_bracketed_seconds": statistics.median(bracketed),
              "kth_smallest_plain_kthvalue_seconds": statistics.median(plain),
              "threads": torch.get_num_threads(), "skipped": skipped}
    for name in allocations:
        result[f"{name}_prune_to_0.5_seconds"] = statistics.median(first[name])
        result[f"{name}_prune_0.5_to_0.9_seconds"] = statistics.median(second[name])
        for label, times in (("to_0.5", first), ("0.5_to_0.9", second)):
            result[f"{name}_over_global_{label}"] = statistics.median(
                t / g for t, g in zip(times[name], times["global"], strict=True))
    return result


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
