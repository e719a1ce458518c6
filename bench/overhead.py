"""Training-step overhead of pruning: oneprune against the dense step and torch's own pruning.

    python bench/overhead.py --device cpu --json bench/results/overhead-cpu.json
    python bench/overhead.py --device cuda --json bench/results/overhead-cuda.json

Why: a pruning library that makes every training step slower costs more than it saves;
oneprune keeps the forward pass untouched (masks are applied to the weights after the
optimizer step) where torch's two pruning APIs reparametrise the weight in every forward.

What is timed, per training step (AdamW, lr 1e-3, cross-entropy on random data):

- dense: forward, backward, optimizer step.
- oneprune: `Pruner(model)` (uniform allocation, unstructured), `prune_to(target)` when the
  target moved by more than `--resolution` or reached its final value (the rule of
  `oneprune.train`), then the dense step, then `apply_masks()` every step.
- torch_prune: `torch.nn.utils.prune.l1_unstructured` on every conv weight at the same
  steps, with an integer amount that brings each layer to the same count as oneprune
  (iterative pruning, as torch documents it: the PruningContainer prunes among the
  remaining weights); the `weight_orig * weight_mask` forward-pre-hook stays in place
  (no `prune.remove`).
- torch_ao: a `torch.ao.pruning.BaseSparsifier` subclass (unstructured magnitude, same
  counts) with its `FakeSparsity` parametrisation; each group's `sparsity_level` is set
  to the count and `sparsifier.step()` runs at the same steps. (torch 2.14's
  `WeightNormSparsifier` handles 2-D weights only and fails on conv weights.)

All four start from the same initial weights, see the same batches in the same order and
follow the same schedule (one_cycle to `--sparsity` over the timed steps). Their steps
are interleaved round-robin (the order rotates every step), so drifts in machine load hit
all of them alike; ratios are median step time / median dense step time. Separately, one
global `prune_to(0.9)` is timed on a ResNet-18 with 25M+ conv weights
(`global_prune_25m_seconds`, median of `--global-repeats`).

Distillation (`--distill-steps`, 0 skips it): on the convnet and on ResNet-18 at the
same width, a training step without a teacher, the same step with a teacher of the same
model (its forward pass first, in eval mode without gradients, then the student's and
`oneprune.distill.distillation_loss`, as `oneprune.train` does it) and the teacher's
forward pass alone, interleaved; `extra_over_teacher_forward` is what a teacher adds to a
step in units of its own forward pass (the claim: at most 1).

CPU: ResNet-18 (CIFAR stem) at width 0.25 on 32x32 inputs; CUDA: width 1.0, synchronised
around every timed step. `--threads` defaults to 1 so that a shared CPU stays fair.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
import torch.nn.utils.prune as torch_prune
from _common import cpu_name, json_path, machine, write_json
from torch import nn
from torch.ao.pruning import BaseSparsifier

from oneprune.allocation import allocation_of
from oneprune.cli import OneLineParser
from oneprune.distill import distillation_loss, frozen_teacher
from oneprune.models import build_model
from oneprune.pruning import Pruner
from oneprune.schedules import OneCycle

METHODS = ("dense", "oneprune", "torch_prune", "torch_ao")
NUM_CLASSES, IMAGE_SIZE = 10, 32
GLOBAL_WIDTH = 1.5  # CIFAR ResNet-18 at width 1.5: 25,106,976 conv weights


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def _layer_counts(units: list[int], target: float) -> list[int]:
    """Pruned weights per layer at `target`, as oneprune's uniform allocation counts them
    (exactly round(target * N) in all, largest remainder per layer)."""
    total = min(round(target * sum(units)), sum(units) - len(units))
    return allocation_of("uniform").budgets(units, [(n,) for n in units], total,
                                            [0] * len(units))


class MagnitudeSparsifier(BaseSparsifier):
    """Unstructured magnitude pruning in torch.ao.pruning: exactly the oneprune count per
    layer (`sparsity_level` of a group carries it), lowest |w| of the current (masked)
    weight first, so pruned weights stay pruned."""

    def __init__(self):
        super().__init__(defaults={"sparsity_level": 0})

    def update_mask(self, module, tensor_name, sparsity_level, **kwargs):
        mask = getattr(module.parametrizations, tensor_name)[0].mask
        magnitude = getattr(module, tensor_name).abs().flatten()  # mask * original
        k = sparsity_level
        if k > 0:
            new = torch.ones_like(magnitude)
            new[torch.topk(magnitude, k, largest=False, sorted=False).indices] = 0.0
            mask.copy_(new.view_as(mask))


class Method:
    """One contender: its own copy of the model and optimizer, and how it prunes."""

    def __init__(self, name: str, base: nn.Module):
        self.name = name
        self.model = copy.deepcopy(base)
        self.update: Callable[[float], None] | None = None
        self.after_step: Callable[[], None] | None = None
        convs = _convs(self.model)
        if name == "oneprune":
            pruner = Pruner(self.model)
            self.update, self.after_step = pruner.prune_to, pruner.apply_masks
            self.sparsity = pruner.sparsity
        elif name == "torch_prune":
            for conv in convs:  # the reparametrisation from the first step on (amount 0)
                torch_prune.l1_unstructured(conv, "weight", amount=0)

            def update(target: float) -> None:
                counts = _layer_counts([c.weight_mask.numel() for c in convs], target)
                for conv, count in zip(convs, counts, strict=True):
                    mask = conv.weight_mask
                    more = count - (mask.numel() - int(torch.count_nonzero(mask)))
                    if more > 0:
                        torch_prune.l1_unstructured(conv, "weight", amount=more)

            self.update = update
            self.sparsity = lambda: _mask_sparsity([c.weight_mask for c in convs])
        elif name == "torch_ao":
            sparsifier = MagnitudeSparsifier()
            names = [n for n, m in self.model.named_modules() if isinstance(m, nn.Conv2d)]
            sparsifier.prepare(self.model, [{"tensor_fqn": f"{n}.weight"} for n in names])

            def update(target: float) -> None:
                counts = _layer_counts([c.weight.numel() for c in convs], target)
                for group, count in zip(sparsifier.groups, counts, strict=True):
                    group["sparsity_level"] = count  # a count: see MagnitudeSparsifier
                sparsifier.step()

            self.update = update
            self.sparsity = lambda: _mask_sparsity(
                [c.parametrizations.weight[0].mask for c in convs])
        else:
            self.sparsity = lambda: 0.0
        # After the reparametrisation, so that it sees the parameters as they are now.
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.0)
        self.model.train()

    def step(self, images: torch.Tensor, labels: torch.Tensor, target: float | None) -> None:
        """One training step; `target` is the sparsity to prune to first, or None."""
        if target is not None and self.update is not None:
            self.update(target)
        loss = F.cross_entropy(self.model(images), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.after_step is not None:
            self.after_step()


def _mask_sparsity(masks: list[torch.Tensor]) -> float:
    total = sum(m.numel() for m in masks)
    return (total - sum(int(torch.count_nonzero(m)) for m in masks)) / total


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prune_steps(steps: int, sparsity: float, resolution: float) -> list[float | None]:
    """Per timed step, the target to prune to (oneprune.train's rule), or None."""
    targets = OneCycle(final_sparsity=sparsity)(np.arange(1, steps + 1) / steps)
    final, pruned_to, plan = targets[-1], 0.0, []
    for target in map(float, targets):
        if target - pruned_to > resolution or (target == final != pruned_to):
            plan.append(target)
            pruned_to = target
        else:
            plan.append(None)
    return plan


def measure_steps(device: torch.device, width: float, batch_size: int, steps: int,
                  warmup: int, sparsity: float, resolution: float, seed: int,
                  progress: bool) -> dict:
    torch.manual_seed(seed)
    base = build_model("resnet18", NUM_CLASSES, 3, width).to(device)
    pool = 4  # distinct batches, cycled; every method sees batch i at its step i
    batches = [(torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, device=device),
                torch.randint(0, NUM_CLASSES, (batch_size,), device=device))
               for _ in range(pool)]
    methods = [Method(name, base) for name in METHODS]
    for i in range(warmup):  # untimed, nothing pruned yet
        for method in methods:
            method.step(*batches[i % pool], None)
    plan = prune_steps(steps, sparsity, resolution)
    times = {name: [] for name in METHODS}
    started = time.perf_counter()
    for i, target in enumerate(plan):
        order = methods[i % len(methods):] + methods[:i % len(methods)]
        for method in order:
            _sync(device)
            start = time.perf_counter()
            method.step(*batches[i % pool], target)
            _sync(device)
            times[method.name].append(time.perf_counter() - start)
        if progress and (i + 1) % max(1, steps // 10) == 0:
            print(f"  step {i + 1}/{steps}  {time.perf_counter() - started:.0f} s",
                  file=sys.stderr, flush=True)
    update_steps = [i for i, t in enumerate(plan) if t is not None]
    other_steps = [i for i, t in enumerate(plan) if t is None]
    dense = times["dense"]
    result = {
        "model": f"resnet18 (CIFAR stem), width {width:g}",
        "prunable_weights": sum(c.weight.numel() for c in _convs(base)),
        "batch_size": batch_size, "image_size": IMAGE_SIZE, "steps": steps,
        "warmup_steps": warmup, "mask_update_steps": len(update_steps),
        "schedule": OneCycle(final_sparsity=sparsity).to_dict(),
        "prune_resolution": resolution,
    }
    for method in methods:
        t = times[method.name]
        paired = [a / b for a, b in zip(t, dense, strict=True)]
        result[method.name] = {
            "median_step_seconds": statistics.median(t),
            "mean_step_seconds": statistics.fmean(t),
            "median_ratio_to_dense": statistics.median(t) / statistics.median(dense),
            "mean_ratio_to_dense": statistics.fmean(t) / statistics.fmean(dense),
            "median_paired_ratio": statistics.median(paired),
            "median_ratio_on_mask_update_steps": (
                statistics.median(t[i] for i in update_steps)
                / statistics.median(dense[i] for i in update_steps)) if update_steps else None,
            "median_ratio_on_other_steps": (
                statistics.median(t[i] for i in other_steps)
                / statistics.median(dense[i] for i in other_steps)) if other_steps else None,
            "final_sparsity": method.sparsity(),
        }
    return result


def measure_global_prune(device: torch.device, repeats: int, seed: int) -> dict:
    """Median time of one global `prune_to(0.9)` from dense masks on 25M+ conv weights."""
    torch.manual_seed(seed)
    model = build_model("resnet18", NUM_CLASSES, 3, GLOBAL_WIDTH).to(device)
    convs = _convs(model)
    seconds = []
    for _ in range(repeats):
        with torch.no_grad():
            for conv in convs:
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        pruner = Pruner(model, scope="global")
        _sync(device)
        start = time.perf_counter()
        pruner.prune_to(0.9)
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return {"global_prune_25m_seconds": statistics.median(seconds),
            "global_prune_25m_all_seconds": seconds,
            "global_prune_model": f"resnet18 (CIFAR stem), width {GLOBAL_WIDTH:g}",
            "global_prune_weights": sum(c.weight.numel() for c in convs),
            "global_prune_sparsity": pruner.sparsity()}


def _distillation_row(device: torch.device, name: str, width: float, batch_size: int,
                      steps: int, warmup: int, seed: int) -> dict:
    """One model's three timings (see `measure_distillation`), interleaved step by step."""
    torch.manual_seed(seed)
    student = build_model(name, NUM_CLASSES, 3, width).to(device).train()
    teacher = frozen_teacher(build_model(name, NUM_CLASSES, 3, width),
                             student.state_dict(), "the student's weights").to(device)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    images = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, device=device)
    labels = torch.randint(0, NUM_CLASSES, (batch_size,), device=device)

    def step(with_teacher: bool) -> None:
        if with_teacher:  # as oneprune.train does it: the teacher first
            with torch.no_grad():
                teacher_logits = teacher(images)
            loss = distillation_loss(student(images), teacher_logits, labels, weight=0.5,
                                     temperature=4.0)
        else:
            loss = F.cross_entropy(student(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def teacher_forward() -> None:
        with torch.no_grad():
            teacher(images)

    kinds = {"step": lambda: step(False), "step_with_teacher": lambda: step(True),
             "teacher_forward": teacher_forward}
    times = {kind: [] for kind in kinds}
    for i in range(warmup + steps):
        for kind in list(kinds)[i % 3:] + list(kinds)[:i % 3]:
            _sync(device)
            start = time.perf_counter()
            kinds[kind]()
            _sync(device)
            if i >= warmup:
                times[kind].append(time.perf_counter() - start)
    median = {kind: statistics.median(t) for kind, t in times.items()}
    return {"width": width, **{f"{kind}_median_seconds": v for kind, v in median.items()},
            "ratio_with_teacher": median["step_with_teacher"] / median["step"],
            "extra_over_teacher_forward": (median["step_with_teacher"] - median["step"])
            / median["teacher_forward"]}


def measure_distillation(device: torch.device, width: float, batch_size: int, steps: int,
                         warmup: int, seed: int) -> dict:
    """Per model (the convnet, and ResNet-18 at `width`; 3x32x32 inputs): the median time
    of a training step without a teacher (cross-entropy), of the same step with a teacher
    (its forward pass in eval mode without gradients, `distillation_loss` at w = 0.5,
    T = 4), and of the teacher's forward pass alone, on the same batch. The claim: a step
    with a teacher costs at most the teacher's forward pass more
    (`extra_over_teacher_forward` <= 1)."""
    return {"distillation": {name: _distillation_row(device, name, model_width, batch_size,
                                                     steps, warmup, seed)
                             for name, model_width in (("convnet", 1.0), ("resnet18", width))},
            "distillation_steps": steps, "distillation_batch_size": batch_size}


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python bench/overhead.py", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per method (default: 100 on cpu, 400 on cuda)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per method first")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--width", type=float, default=None,
                   help="ResNet-18 width (default: 0.25 on cpu, 1.0 on cuda)")
    p.add_argument("--sparsity", type=float, default=0.9, help="final sparsity of one_cycle")
    p.add_argument("--resolution", type=float, default=1e-3,
                   help="prune when the target moved by more than this (oneprune.train's)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (cpu)")
    p.add_argument("--global-repeats", type=int, default=3,
                   help="repeats of the 25M-weight global prune (0: skip it)")
    p.add_argument("--distill-steps", type=int, default=50,
                   help="timed steps of each kind in the distillation measurement (the "
                        "convnet and ResNet-18, with and without a teacher; 0: skip it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=json_path, help="write the results here")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.device not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda, got {args.device!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.steps is None:
        args.steps = 100 if args.device == "cpu" else 400
    if args.width is None:
        args.width = 0.25 if args.device == "cpu" else 1.0
    rules = [("steps", args.steps >= 10, ">= 10"), ("warmup", args.warmup >= 0, ">= 0"),
             ("batch-size", args.batch_size >= 2, ">= 2"),
             ("width", 0.0 < args.width <= 8.0, "in (0, 8]"),
             ("sparsity", 0.0 < args.sparsity < 1.0, "in (0, 1)"),
             ("resolution", 0.0 <= args.resolution <= 0.1, "in [0, 0.1]"),
             ("threads", args.threads >= 1, ">= 1"),
             ("global-repeats", args.global_repeats >= 0, ">= 0"),
             ("distill-steps", args.distill_steps >= 0, ">= 0")]
    for name, ok, allowed in rules:
        if not ok:
            value = getattr(args, name.replace("-", "_"))
            parser.error(f"--{name} must be {allowed}, got {value!r}")
    if args.json is not None:  # checked now, not after minutes of measuring
        if args.json.is_dir():
            parser.error(f"--json {str(args.json)!r} is a folder")
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            parser.error(f"--json {str(args.json)!r}: cannot make its folder: "
                         f"{error.strerror}")


def _table(result: dict) -> str:
    rows = [f"{'method':<12} {'median step':>12} {'ratio':>7} {'paired':>7} "
            f"{'mean ratio':>10} {'sparsity':>9}"]
    for name in METHODS:
        r = result[name]
        rows.append(f"{name:<12} {r['median_step_seconds'] * 1e3:>9.1f} ms "
                    f"{r['median_ratio_to_dense']:>7.3f} {r['median_paired_ratio']:>7.3f} "
                    f"{r['mean_ratio_to_dense']:>10.3f} {r['final_sparsity']:>9.4f}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if not args.quiet:
        print(f"{args.steps} steps x {len(METHODS)} methods, resnet18 width {args.width:g}, "
              f"batch {args.batch_size}, {device}, {args.threads} thread(s)", file=sys.stderr)
    result = {**machine(), "device": str(device),
              "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                              else cpu_name()),
              "threads": torch.get_num_threads(), "optimizer": "AdamW"}
    result.update(measure_steps(device, args.width, args.batch_size, args.steps,
                                args.warmup, args.sparsity, args.resolution, args.seed,
                                progress=not args.quiet))
    for name in METHODS[1:]:
        result[f"{name}_ratio"] = result[name]["median_ratio_to_dense"]
    for name in METHODS:
        result[f"{name}_median_step_seconds"] = result[name]["median_step_seconds"]
    if args.global_repeats:
        result.update(measure_global_prune(device, args.global_repeats, args.seed))
    if args.distill_steps:
        result.update(measure_distillation(device, args.width, args.batch_size,
                                           args.distill_steps, args.warmup, args.seed))
    print(_table(result))
    for name, row in result.get("distillation", {}).items():
        print(f"{name} (width {row['width']:g}): step {row['step_median_seconds'] * 1e3:.1f} "
              f"ms, with a teacher {row['step_with_teacher_median_seconds'] * 1e3:.1f} ms "
              f"({row['ratio_with_teacher']:.2f}x), the teacher's forward "
              f"{row['teacher_forward_median_seconds'] * 1e3:.1f} ms: the teacher adds "
              f"{row['extra_over_teacher_forward']:.2f} of its forward pass")
    if args.global_repeats:
        print(f"global prune_to(0.9) on {result['global_prune_weights']:,} weights: "
              f"{result['global_prune_25m_seconds']:.3f} s (median of {args.global_repeats})")
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
