"""What a pruned network costs the one who deploys it, next to its dense twin: multiply-adds
per image as the deployed model executes them, the parameters it holds, the bytes of its
weights file, and its latency measured in the runtime it will run in.

What "deployed" means depends on how it was pruned. Filter pruning removes the zeroed
filters (`oneprune.structured.slim`, exact): the slim network is what runs and ships. Weight
pruning keeps dense shapes: dense kernels execute every multiply-add, so its MACs and
latency are the dense network's, and what shrinks is the parameters it holds (the
non-zeros) and its file, which stores only the non-zeros (`oneprune.saving.to_sparse`, the
format of `model_sparse.pt`). `sparsity` is the fraction of weights pruned, not a cost.

Multiply-adds are torch's own count (`torch.utils.flop_counter.FlopCounterMode`, FLOPs / 2,
of every operation it has a formula for: convolutions, matrix products, attention).

Latency is timed as a deployment times it: the model exported (ONNX for onnxruntime, the
module itself for torch), a fixed thread count, warm-up calls, then `rounds` interleaved
rounds in which every model runs one block of calls, in a rotating order, so that a drift
in the machine's load hits them alike. A latency is the median over the rounds, its spread
the interquartile range over the median, and a speed-up the median over the rounds of the
ratio dense / pruned measured in the same round.

    >>> import torch
    >>> from oneprune.cost import measure_costs
    >>>     >>> from oneprune.pruning import Pruner
    >>> model = build_model("convnet", num_classes=10, in_channels=1)
    >>> images = torch.zeros(2, 1, 8, 8)
    >>> Pruner(model, granularity="filter", example_inputs=images).prune_to(0.5)
    >>> costs = measure_costs(model, granularity="filter", mean=(0.3,), std=(0.4,),
    ...                       image_size=8)
    >>> costs["dense_macs"] / costs["macs"] > 3
    True
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from oneprune import _validate
from oneprune.deploy import Deployable, count_macs, deployable, save_onnx
from oneprune.structured import LAYERS

SPARSITY = "sparsity"
COSTS = (SPARSITY, "macs", "params", "bytes", "latency")  # what a range study may minimise
RUNTIMES = ("onnxruntime", "torch")
BLOCK_SECONDS = 0.05  # one timed block of calls, calibrated per model
COST_METRICS = ("macs", "params", "bytes", "dense_macs", "dense_params", "dense_bytes",
                "latency_ms", "dense_latency_ms", "latency_spread", "speedup")
"""The keys `measure_costs` returns (the latency ones only when it times)."""


@dataclass(frozen=True)
class LatencySettings:
    """How latency is measured: in `runtime`, on batches of `batch` images, with `threads`
    intra-op threads, over `rounds` interleaved rounds after `warmup` calls."""

    runtime: str = "onnxruntime"
    batch: int = 64
    threads: int = 1
    rounds: int = 7
    warmup: int = 3

    def __post_init__(self) -> None:
        _validate.choice("latency.runtime", self.runtime, RUNTIMES)
        _validate.integer("latency.batch", self.batch, low=1, high=4096)
        _validate.integer("latency.threads", self.threads, low=1, high=256)
        _validate.integer("latency.rounds", self.rounds, low=3, high=1000)
        _validate.integer("latency.warmup", self.warmup, low=0, high=1000)

    def check_runtime(self) -> None:
        """`ValueError` (one line) when the runtime is not installed: onnxruntime needs the
        `onnx` extra (onnxruntime, and onnx and onnxscript to export)."""
        if self.runtime != "onnxruntime":
            return
        for name in ("onnxruntime", "onnx", "onnxscript"):
            try:
                __import__(name)
            except ImportError:
                raise ValueError(f"latency.runtime onnxruntime needs {name}, which is not "
                                 f"installed: pip install -e \".[onnx]\"") from None


def _payload_bytes(state: Mapping[str, Any]) -> int:
    """Bytes of every tensor in `state` (nested in `to_sparse`'s entries too): what a
    weights file stores, less its small format overhead."""
    total = 0
    for value in state.values():
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif isinstance(value, Mapping):
            total += _payload_bytes(value)
    return total


def _sparse_is_smaller(weight: torch.Tensor) -> bool:
    """Whether `weight` takes fewer bytes as its non-zeros and a bit per entry."""
    size = weight.element_size()
    return int(torch.count_nonzero(weight)) * size + -(-weight.numel() // 8) \
        < weight.numel() * size


def deployed(model: nn.Module, *, granularity: str, mean: Sequence[float],
             std: Sequence[float], image_size: int) -> Deployable:
    """The network as it is deployed: slim (its zeroed filters removed) for filter
    pruning, dense-shaped for weight pruning (and for a filter-pruned network that cannot
    be slimmed, which then runs masked)."""
    if granularity == "filter":
        try:
            return deployable(model, mean=mean, std=std, image_size=image_size, slim=True)
        except ValueError:
            pass  # it stays masked, and costs what the masked network costs
    return deployable(model, mean=mean, std=std, image_size=image_size)


def static_costs(ready: Deployable, granularity: str) -> dict[str, int]:
    """`macs`, `params` and `bytes` of a deployed network: its multiply-adds per image
    (`count_macs`), the parameters it holds (for weight pruning, less the zeros of its conv
    and linear weights) and the bytes of the tensors its weights file stores (its state
    dict; for weight pruning, `to_sparse` with each conv / linear weight stored as its
    non-zero values and a bit per weight where that is smaller)."""
    from oneprune.saving import to_sparse

    network = ready.module.model
    state = {name: tensor.detach() for name, tensor in network.state_dict().items()}
    params = sum(p.numel() for p in network.parameters())
    if granularity == "weight":
        layers = {f"{name}.weight": module.weight.detach()
                  for name, module in network.named_modules() if isinstance(module, LAYERS)}
        params -= sum(int((weight == 0).sum()) for weight in layers.values())
        state = to_sparse(state, [name for name, weight in layers.items()
                                  if _sparse_is_smaller(weight)])
    return {"macs": count_macs(ready.module, ready.image_shape), "params": params,
            "bytes": _payload_bytes(state)}


def _caller(ready: Deployable, settings: LatencySettings, folder: Path,
            label: str) -> Callable[[], Any]:
    """A no-argument call that runs `ready` once on a batch, in the settings' runtime."""
    images = ready.example(settings.batch).uniform_(generator=torch.Generator().manual_seed(0))
    if settings.runtime == "onnxruntime":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = settings.threads
        options.log_severity_level = 3  # errors only
        session = onnxruntime.InferenceSession(
            str(save_onnx(ready, folder / f"{label}.onnx")), options,
            providers=["CPUExecutionProvider"])
        feed = {"images": images.numpy()}
        return lambda: session.run(None, feed)
    module = ready.module

    @torch.no_grad()
    def call():
        return module(images)
    return call


def time_interleaved(models: Mapping[str, Deployable], settings: LatencySettings
                     ) -> dict[str, list[float]]:
    """Per model, the seconds one batch took in each of `settings.rounds` interleaved
    rounds (see the module docstring), on the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        with tempfile.TemporaryDirectory() as folder:
            calls = {label: _caller(ready, settings, Path(folder), f"m{i}")
                     for i, (label, ready) in enumerate(models.items())}
            blocks = {}
            for label, call in calls.items():
                for _ in range(settings.warmup):
                    call()
                began = time.perf_counter()
                call()
                blocks[label] = max(1, round(BLOCK_SECONDS / max(
                    time.perf_counter() - began, 1e-6)))
            seconds: dict[str, list[float]] = {label: [] for label in calls}
            labels = list(calls)
            for round_ in range(settings.rounds):
                shift = round_ % len(labels)
                for label in labels[shift:] + labels[:shift]:
                    began = time.perf_counter()
                    for _ in range(blocks[label]):
                        calls[label]()
                    seconds[label].append((time.perf_counter() - began) / blocks[label])
            return seconds
    finally:
        torch.set_num_threads(threads)


def spread(times: Sequence[float]) -> float:
    """The interquartile range of `times` over their median: how noisy a latency was."""
    low, _, high = statistics.quantiles(times, n=4, method="inclusive")
    return (high - low) / statistics.median(times)


def speedup(dense: Sequence[float], times: Sequence[float]) -> float:
    """The median, over rounds, of dense / model timed in the same round (> 1: faster)."""
    return statistics.median(d / t for d, t in zip(dense, times, strict=True))


def measure_costs(model: nn.Module, *, granularity: str, mean: Sequence[float],
                  std: Sequence[float], image_size: int, dense: nn.Module | None = None,
                  latency: LatencySettings | None = None) -> dict[str, float]:
    """`model`'s costs as deployed (`macs`, `params`, `bytes`) and its dense twin's
    (`dense_macs`, ...: `dense`, or a copy of `model` with every weight restored to
    non-zero shapes, i.e. the same architecture unpruned); with `latency`, also
    `latency_ms` and `dense_latency_ms` (per batch, median), `latency_spread` and
    `speedup` (dense / model, paired by round), timed interleaved."""
    _validate.choice("granularity", granularity, ("weight", "filter"))
    kwargs = {"mean": mean, "std": std, "image_size": image_size}
    ready = deployed(model, granularity=granularity, **kwargs)
    if dense is None:
        dense = _unpruned_twin(model)
    dense_ready = deployable(dense, **kwargs)
    costs: dict[str, float] = dict(static_costs(ready, granularity))
    costs.update({f"dense_{name}": value for name, value in
                  static_costs(dense_ready, "filter").items()})
    if latency is not None:
        latency.check_runtime()
        seconds = time_interleaved({"dense": dense_ready, "model": ready}, latency)
        costs.update(latency_ms=statistics.median(seconds["model"]) * 1000,
                     dense_latency_ms=statistics.median(seconds["dense"]) * 1000,
                     latency_spread=spread(seconds["model"]),
                     speedup=speedup(seconds["dense"], seconds["model"]))
    return costs


def _unpruned_twin(model: nn.Module) -> nn.Module:
    """A network of `model`'s architecture with no zero weights (its weights + 1 where they
    are zero): what its dense twin holds and costs, whatever its training."""
    twin = copy.deepcopy(model).eval()
    with torch.no_grad():
        for parameter in twin.parameters():
            parameter.add_((parameter == 0).to(parameter.dtype))
    return twin


def saving(cost: str, costs: Mapping[str, float]) -> float:
    """The share of the dense twin's `cost` that pruning saved, below 1 (the second
    objective a range study maximises): 1 - model / dense; for latency 1 - 1 / speedup
    (so it is paired by round), below 0 where the model ran slower than dense."""
    _validate.choice("cost", cost, COSTS[1:])
    if cost == "latency":
        ratio = 1 / costs["speedup"]
    else:
        ratio = costs[cost] / costs[f"dense_{cost}"]
    return 1.0 - ratio

