"""What pruning buys at inference: latency, multiply-adds, parameters and file bytes of
dense, masked, slim and unstructured-sparse networks, in PyTorch and onnxruntime.

    python bench/speedup.py --json bench/results/speedup-cpu.json
    python bench/speedup.py --device cuda --json bench/results/speedup-cuda.json

For each network (CIFAR-stem ResNet-18 and VGG-16 at width 1 on 32x32 images, the convnet
on 8x8 digits), from the same initial weights:

- dense: no pruning;
- filter 50/75/90%: `Pruner(granularity="filter")` (uniform allocation), its BatchNorm
  channels zeroed with the filters, BatchNorm statistics drawn at random as a trained
  network has them; `masked` is that network as trained (dense shapes, zeros), `slim` the
  same function with the zeroed filters removed (`oneprune.structured.slim`, checked
  exact);
- weight 90/98%: unstructured magnitude pruning, dense shapes (what a study of the
  default granularity hands over).

Each is wrapped as it is deployed (`oneprune.deploy.Normalized`) and timed at batch 1 and
64 with `torch.utils.benchmark.Timer` and with onnxruntime (its ONNX export), with a fixed
thread count. The variants are interleaved: every round times each of them once, in a
rotating order, so a drift in machine load hits all of them; a latency is the median over
the rounds, a ratio dense / variant (> 1: faster) comes from the same rounds. Also: the
multiply-adds per image as executed and counting non-zero weights only, parameters, and
the bytes of the pt2 and ONNX files and of the non-zeros-only weight file
(`oneprune.export.to_sparse`, what `model_sparse.pt` holds).

CUDA (`--device cuda`, written for a GPU machine, not run here): CUDA events around each
block, warm-up first, bf16 autocast and channels_last; onnxruntime is skipped there.
"""

from __future__ import annotations

import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import json_path, machine, write_json
from torch import nn
from torch.utils import benchmark

from oneprune.cli import OneLineParser
from oneprune.deploy import Deployable, deployable, save_onnx, save_program
from oneprune.models import build_model
from oneprune.pruning import Pruner
from oneprune.saving import to_sparse

NETWORKS = {"resnet18": (3, 32), "vgg16": (3, 32), "convnet": (1, 8)}  # channels, side
FILTER_SPARSITIES = (0.5, 0.75, 0.9)
WEIGHT_SPARSITIES = (0.9, 0.98)
BATCHES = (1, 64)
MEAN, STD = 0.45, 0.25


def _network(name: str) -> nn.Module:
    torch.manual_seed(0)
    channels, _ = NETWORKS[name]
    return build_model(name, 10, channels).eval()


def _trained_statistics(model: nn.Module) -> None:
    """BatchNorm as training leaves it (weights, shifts and running statistics not 1 and
    0), so that a zeroed filter whose BatchNorm channel were not zeroed would show."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                size = module.num_features
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(size, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)


def variants(name: str) -> dict[str, tuple[dict, Deployable]]:
    """Every variant of network `name`: its description and deployable."""
    channels, side = NETWORKS[name]
    mean, std = (MEAN,) * channels, (STD,) * channels
    example = torch.zeros(2, channels, side, side)
    built = {}
    dense = _network(name)
    _trained_statistics(dense)
    built["dense"] = ({"granularity": None, "sparsity": 0.0, "slim": False},
                      deployable(dense, mean=mean, std=std, image_size=side))
    for sparsity in FILTER_SPARSITIES:
        model = _network(name)
        _trained_statistics(model)
        Pruner(model, granularity="filter", example_inputs=example).prune_to(sparsity)
        for slim in (False, True):
            label = f"filter {sparsity:.0%} {'slim' if slim else 'masked'}"
            built[label] = ({"granularity": "filter", "sparsity": sparsity, "slim": slim},
                            deployable(model, mean=mean, std=std, image_size=side,
                                       slim=slim))
    for sparsity in WEIGHT_SPARSITIES:
        model = _network(name)
        _trained_statistics(model)
        pruner = Pruner(model)
        pruner.prune_to(sparsity)
        built[f"weight {sparsity:.0%}"] = (
            {"granularity": "weight", "sparsity": sparsity, "slim": False,
             "pruned_layers": pruner.layer_names},
            deployable(model, mean=mean, std=std, image_size=side))
    return built


def file_bytes(info: dict, ready: Deployable, folder: Path) -> dict[str, int]:
    """Bytes of the pt2 and ONNX files, and of the weights with only the pruned layers'
    non-zeros stored (`to_sparse`, `model_sparse.pt`'s format)."""
    sizes = {"pt2_bytes": save_program(ready, folder / "m.pt2").stat().st_size,
             "onnx_bytes": save_onnx(ready, folder / "m.onnx").stat().st_size}
    state = {k: v.detach() for k, v in ready.module.model.state_dict().items()}
    layers = [k for k in state if k.endswith(".weight") and state[k].dim() == 4]
    buffer = io.BytesIO()
    torch.save(to_sparse(state, layers), buffer)
    sizes["sparse_weights_bytes"] = buffer.getbuffer().nbytes
    return sizes


class Runner:
    """Times one variant at one batch size: PyTorch (benchmark.Timer, or CUDA events) or
    onnxruntime; `calls` per block, calibrated so that a block takes ~0.2 s."""

    def __init__(self, ready: Deployable, batch: int, runtime: str, device: torch.device,
                 threads: int, folder: Path):
        self.batch, self.runtime, self.device = batch, runtime, device
        images = ready.example(batch).uniform_(generator=torch.Generator().manual_seed(2))
        if runtime == "onnxruntime":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = threads
            session = onnxruntime.InferenceSession(str(folder / "m.onnx"), options,
                                                   providers=["CPUExecutionProvider"])
            feed = {"images": images.numpy()}
            self.call = lambda: session.run(None, feed)
        else:
            module = ready.module.to(device)
            if device.type == "cuda":
                module = module.to(memory_format=torch.channels_last)
                images = images.to(device, memory_format=torch.channels_last)
            else:
                images = images.to(device)

            @torch.no_grad()
            def call():
                with torch.autocast(device.type, dtype=torch.bfloat16,
                                    enabled=device.type == "cuda"):
                    return module(images)
            self.call = call
            self.timer = benchmark.Timer(stmt="call()", globals={"call": call},
                                         num_threads=threads)
        for _ in range(3):  # warm-up (allocator, kernel selection, CUDA context)
            self.call()
        self.calls = max(1, round(0.2 / max(self._block(1), 1e-6)))

    def _block(self, calls: int) -> float:
        """Seconds per call over a block of `calls`."""
        if self.device.type == "cuda" and self.runtime == "torch":
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            for _ in range(calls):
                self.call()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1000 / calls
        if self.runtime == "torch":
            return self.timer.timeit(calls).mean
        began = time.perf_counter()
        for _ in range(calls):
            self.call()
        return (time.perf_counter() - began) / calls

    def block(self) -> float:
        return self._block(self.calls)


def measure(name: str, device: torch.device, threads: int, rounds: int) -> list[dict]:
    """Every variant of `name`, timed interleaved; one row per variant."""
    torch.set_num_threads(threads)
    built = variants(name)
    rows, runners = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        for label, (info, ready) in built.items():
            folder = Path(scratch) / label.replace(" ", "_").replace("%", "")
            folder.mkdir()
            rows[label] = {"network": name, "variant": label, **info, **ready.footprint,
                           **file_bytes(info, ready, folder)}
            runtimes = ["torch"] + (["onnxruntime"] if device.type == "cpu" else [])
            for runtime in runtimes:
                for batch in BATCHES:
                    runners[(label, runtime, batch)] = Runner(ready, batch, runtime, device,
                                                              threads, folder)
        seconds: dict[tuple, list[float]] = {key: [] for key in runners}
        keys = list(runners)
        for round_ in range(rounds):
            shift = round_ % len(keys)
            for key in keys[shift:] + keys[:shift]:
                seconds[key].append(runners[key].block())
    for (label, runtime, batch), times in seconds.items():
        dense = seconds[("dense", runtime, batch)]
        row = rows[label]
        row[f"{runtime}_b{batch}_ms"] = statistics.median(times) * 1000
        row[f"{runtime}_b{batch}_speedup"] = statistics.median(
            d / t for d, t in zip(dense, times, strict=True))
    return list(rows.values())


def markdown(rows: list[dict]) -> str:
    """The README's table: one line per network and variant."""
    runtimes = [r for r in ("torch", "onnxruntime") if f"{r}_b1_ms" in rows[0]]
    head = ["network", "variant", "MACs / image", "params", "pt2 bytes", "sparse bytes"]
    for runtime in runtimes:
        head += [f"{runtime} b1 ms (×)", f"{runtime} b64 ms (×)"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        cells = [row["network"], row["variant"], f"{row['macs_per_image'] / 1e6:.3g} M",
                 f"{row['parameters'] / 1e6:.3g} M", f"{row['pt2_bytes'] / 1e6:.3g} MB",
                 f"{row['sparse_weights_bytes'] / 1e6:.3g} MB"]
        for runtime in runtimes:
            for batch in BATCHES:
                cells.append(f"{row[f'{runtime}_b{batch}_ms']:.3g} "
                             f"({row[f'{runtime}_b{batch}_speedup']:.2f}×)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python bench/speedup.py", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=NETWORKS)
    parser.add_argument("--json", type=json_path, help="write the results here")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.rounds < 1:
        parser.error("--threads and --rounds must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    rows = []
    for name in args.networks:
        print(f"{name}: building and timing the variants", file=sys.stderr, flush=True)
        rows += measure(name, torch.device(args.device), args.threads, args.rounds)
    print(markdown(rows))
    write_json(args.json, {"rows": rows, "threads": args.threads, "rounds": args.rounds,
                           "device": args.device, "machine": machine()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
