"""The one training loop: prune along a schedule while training, in one run.

    python -m oneprune.train --dataset digits --schedule one_cycle --sparsity 0.9 --epochs 15

Per batch, with progress t = step / total_steps (step counted from 1, so the last step
trains at t = 1 with the schedule's final sparsity):

    target = schedule(t)                    # prune_to only when it moved by > resolution
    lr = coupled one-cycle LR at t          # oneprune.lr
    forward, backward, optimizer step, pruner.apply_masks()

Per epoch: validation loss and accuracy, a `report(metrics)` call (rank 0 only) and a
`checkpoint(metrics, state)` call (every rank); `train(..., resume=state)` continues from
such a state exactly where it was taken. A non-finite training loss ends the run after
that epoch as diverged. At the end: test loss and accuracy. The same seed on CPU gives the
same metrics, resumed or not.

Under torch.distributed (initialised by the caller: torchrun, Ray Train), the model is
wrapped in DDP, every rank trains on its shard of each batch order and evaluates on its
shard of val / test (sums all-reduced), and the masks stay identical on every rank because
they are a deterministic function of the (synchronised) weights.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import pickle
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from oneprune import _validate
from oneprune._files import write_atomically
from oneprune.data import DATASETS, Batches, ImageData, load_dataset
from oneprune.export import save_pruned
from oneprune.lr import COUPLINGS, CoupledLR
from oneprune.models import MIN_IMAGE_SIZE, MODELS, build_model
from oneprune.pruning import GRANULARITIES, SCOPES, Pruner
from oneprune.schedules import FAMILIES, OneCycle, Schedule, schedule_from_dict

OPTIMIZERS = ("adam", "sgd")
EVAL_BATCH_SIZE = 1024


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run; validated on construction.

    `schedule=None` trains dense (no pruner). `model=None` picks the dataset's default:
    the small `convnet` for digits, `resnet18` otherwise. `seed` drives initialisation,
    batch order and augmentation; `split_seed` only the train/val/test split, so runs with
    different seeds are compared on the same data.
    """

    dataset: str = "digits"
    model: str | None = None
    width: float = 1.0
    data_dir: str | None = None
    download: bool = False
    verify_data: bool = True
    image_size: int = 64
    val_fraction: float = 0.1
    split_seed: int = 0
    epochs: int = 15
    batch_size: int = 64
    optimizer: str = "adam"
    lr_max: float = 1e-3
    pct_start: float = 0.25
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: Schedule | None = OneCycle(final_sparsity=0.9)
    coupling: str = "none"
    recovery_gain: float = 0.0
    recovery_window: float = 0.05
    scope: str = "local"
    granularity: str = "weight"
    prune_resolution: float = 1e-3
    seed: int = 0
    device: str = "auto"
    channels_last: bool = False
    bf16: bool = False

    def __post_init__(self) -> None:
        def put(name, value):
            object.__setattr__(self, name, value)

        _validate.choice("dataset", self.dataset, DATASETS)
        if self.model is None:
            put("model", "convnet" if self.dataset == "digits" else "resnet18")
        _validate.choice("model", self.model, tuple(MODELS))
        put("width", _validate.real("width", self.width, **_validate.WIDTH))
        if self.data_dir is not None and not isinstance(self.data_dir, str | os.PathLike):
            raise ValueError(f"data_dir must be a path or None, got {self.data_dir!r}")
        if self.data_dir is not None:
            put("data_dir", os.fspath(self.data_dir))
        for name in ("download", "verify_data", "channels_last", "bf16"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        put("image_size", _validate.integer("image_size", self.image_size,
                                            **_validate.IMAGE_SIZE))
        put("val_fraction", _validate.real("val_fraction", self.val_fraction,
                                           **_validate.VAL_FRACTION))
        put("split_seed", _validate.integer("split_seed", self.split_seed, **_validate.SEED))
        put("epochs", _validate.integer("epochs", self.epochs, low=1, high=10_000))
        put("batch_size", _validate.integer("batch_size", self.batch_size, low=2,
                                            high=65_536))
        _validate.choice("optimizer", self.optimizer, OPTIMIZERS)
        put("weight_decay", _validate.real("weight_decay", self.weight_decay, low=0.0,
                                           high=1.0))
        put("momentum", _validate.real("momentum", self.momentum, low=0.0, high=1.0,
                                       high_open=True))
        if isinstance(self.schedule, Mapping):
            put("schedule", schedule_from_dict(self.schedule))
        elif self.schedule is not None and not isinstance(self.schedule, Schedule):
            raise ValueError(f"schedule must be a Schedule, its to_dict() or None, "
                             f"got {self.schedule!r}")
        self.lr_policy()  # validates lr_max, pct_start, coupling and the recovery gain
        _validate.choice("scope", self.scope, SCOPES)
        _validate.choice("granularity", self.granularity, GRANULARITIES)
        put("prune_resolution", _validate.real("prune_resolution", self.prune_resolution,
                                               low=0.0, high=0.1))
        put("seed", _validate.integer("seed", self.seed, **_validate.SEED))
        device_ok = isinstance(self.device, str) and (
            self.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", self.device))
        if not device_ok:
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', "
                             f"got {self.device!r}")

    def lr_policy(self) -> CoupledLR:
        """The learning rate as a function of progress, coupled to the schedule."""
        return CoupledLR(self.schedule, self.lr_max, self.pct_start, self.coupling,
                         self.recovery_gain, self.recovery_window)

    def load_data(self) -> ImageData:
        """The dataset and splits this config trains on (load once, pass to many runs)."""
        return load_dataset(self.dataset, self.data_dir, self.download, self.val_fraction,
                            self.split_seed, image_size=self.image_size,
                            verify=self.verify_data)

    def resolve_device(self) -> torch.device:
        """`device` on this machine ("auto": CUDA when available, else CPU). Checked here,
        not on construction, so a CPU-only driver can configure runs for GPU workers."""
        if self.device == "cpu" or (self.device == "auto" and not torch.cuda.is_available()):
            return torch.device("cpu")
        if not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} requested but CUDA is not available")
        if self.device in ("auto", "cuda"):
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device(self.device)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready dict; `TrainConfig.from_dict` inverts it."""
        spec = dataclasses.asdict(self)
        spec["schedule"] = None if self.schedule is None else self.schedule.to_dict()
        return spec

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> TrainConfig:
        """Build from `to_dict()` output or a hand-written mapping; unknown keys are refused."""
        if not isinstance(spec, Mapping):
            raise ValueError(f"train config must be a mapping, got {spec!r}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [key for key in spec if key not in names]
        if unknown:
            raise ValueError(f"train config has no field {unknown[0]!r}; "
                             f"fields: {', '.join(names)}")
        return cls(**spec)


@dataclass
class TrainResult:
    """What a run produced: final metrics, per-epoch history, the trained model and masks."""

    config: TrainConfig
    test_loss: float
    test_acc: float
    val_loss: float
    val_acc: float
    sparsity: float
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    model: nn.Module | None = field(default=None, repr=False)
    pruner: Pruner | None = field(default=None, repr=False)
    diverged: bool = False

    def metrics(self) -> dict[str, Any]:
        """JSON-ready summary (what `--out` writes to metrics.json)."""
        layers = [] if self.pruner is None else [
            row._asdict() for row in self.pruner.layer_report()]
        return {"test_acc": self.test_acc, "test_loss": self.test_loss,
                "val_acc": self.val_acc, "val_loss": self.val_loss,
                "sparsity": self.sparsity,
                "target_sparsity": (0.0 if self.config.schedule is None
                                    else self.config.schedule.final_sparsity),
                "seconds": self.seconds, "diverged": self.diverged,
                "history": self.history, "layers": layers}


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum `values` over all ranks (a no-op without torch.distributed)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if _distributed()[1] > 1:
        dist.all_reduce(tensor)
    return tensor.tolist()


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches,
             autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
             ) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` over `batches` (all ranks together)."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=batches.device)
    correct = torch.zeros((), dtype=torch.int64, device=batches.device)
    count = 0
    for images, labels in batches:
        with autocast():
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum")
        correct += (logits.argmax(1) == labels).sum()
        count += len(labels)
    loss_sum, correct, count = _all_sum([loss_sum.item(), correct.item(), count],
                                        batches.device)
    return loss_sum / count, correct / count


def save_state(state: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write a `checkpoint` state to `path` atomically (a crash never leaves half a file)."""
    write_atomically(Path(path), lambda f: torch.save(dict(state), f))


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a state written by `save_state`, with `weights_only=True` (no pickled code runs)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError) as error:
        raise ValueError(f"cannot read training state {os.fspath(path)!r}: {error}") from None
    if not isinstance(state, dict) or not STATE_KEYS <= set(state):
        raise ValueError(f"{os.fspath(path)!r} is not a training state "
                         f"(keys {sorted(STATE_KEYS)})")
    return state


def check_data(cfg: TrainConfig, data: ImageData) -> None:
    """Raise `ValueError` unless `data` was loaded as `cfg` says and suits its model."""
    made = {"dataset": data.name, "split_seed": data.split_seed,
            "val_fraction": data.val_fraction}
    wanted = {"dataset": cfg.dataset, "split_seed": cfg.split_seed,
              "val_fraction": cfg.val_fraction}
    if cfg.dataset == "caltech101":
        made["image_size"], wanted["image_size"] = data.image_size, cfg.image_size
    for key, value in made.items():
        if value != wanted[key]:
            raise ValueError(f"data was loaded with {key}={value!r} but the config "
                             f"has {key}={wanted[key]!r}")
    if data.image_size < MIN_IMAGE_SIZE[cfg.model]:
        raise ValueError(f"model {cfg.model!r} needs images of at least "
                         f"{MIN_IMAGE_SIZE[cfg.model]}x{MIN_IMAGE_SIZE[cfg.model]}; "
                         f"{cfg.dataset} has {data.image_size}x{data.image_size}")


def train(cfg: TrainConfig, report: Callable[[dict], Any] | None = None, *,
          data: ImageData | None = None, progress: bool = False, test: bool = True,
          checkpoint: Callable[[dict, dict], Any] | None = None,
          resume: Mapping[str, Any] | None = None) -> TrainResult:
    """Train `cfg` once, pruning along its schedule; call `report` after every epoch.

    `data` may be passed in already loaded (e.g. once for many runs); it must have been
    loaded as the config says. `progress` shows a tqdm bar per epoch. `test=False` skips
    the test split (a tuning run must not see it): test loss and accuracy are then NaN.
    `checkpoint(metrics, state)` is called after every epoch on every rank (all ranks hold
    the same state; save it once, e.g. with `save_state`, during the call: its tensors are
    the live ones); `resume=state` continues the run from it with the same config, data
    and world size.
    """
    rank, world_size = _distributed()
    device = cfg.resolve_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if data is None:
        data = cfg.load_data()
    check_data(cfg, data)

    torch.manual_seed(cfg.seed)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = build_model(cfg.model, data.num_classes, data.in_channels, cfg.width)
    model = model.to(device, memory_format=memory_format)
    pruner = (None if cfg.schedule is None
              else Pruner(model, scope=cfg.scope, granularity=cfg.granularity))
    net = model
    if world_size > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.optimizer == "adam":  # decoupled weight decay, as fastai's Adam and the paper
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr_max,
                                      weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr_max, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)

    loader = {"mean": data.mean, "std": data.std, "device": device, "rank": rank,
              "world_size": world_size, "memory_format": memory_format}
    train_batches = Batches(data.train, cfg.batch_size, augment=data.augment, shuffle=True,
                            drop_last=True, seed=cfg.seed, **loader)
    if len(train_batches) == 0:
        raise ValueError(f"batch_size={cfg.batch_size} exceeds the training shard "
                         f"({len(data.train) // world_size} samples per rank)")
    val_batches = Batches(data.val, EVAL_BATCH_SIZE, **loader)
    # The whole budget's progress, target sparsity and LR, computed once (vectorised).
    total_steps = cfg.epochs * len(train_batches)
    progress_at = np.arange(1, total_steps + 1) / total_steps
    target_at = np.zeros(total_steps) if pruner is None else cfg.schedule(progress_at)
    lr_at = cfg.lr_policy()(progress_at)
    final_target = target_at[-1]

    history: list[dict[str, float]] = []
    step, pruned_to, first_epoch, seconds_before = 0, 0.0, 1, 0.0
    if resume is not None:
        _check_resume(resume, cfg, world_size)
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        if pruner is not None:
            pruner.load_state_dict(resume["pruner"])
        train_batches.load_generator_state(resume["batches"][rank])
        torch.set_rng_state(resume["rng"])
        history = [dict(row) for row in resume["history"]]
        step, pruned_to = resume["step"], resume["pruned_to"]
        first_epoch, seconds_before = resume["epoch"] + 1, resume["seconds"]
    started = time.perf_counter() - seconds_before
    diverged = bool(history) and history[-1]["diverged"]
    if diverged:  # resumed from the state of a run that diverged: nothing left to train
        first_epoch = cfg.epochs + 1
    for epoch in range(first_epoch, cfg.epochs + 1):
        epoch_start = time.perf_counter()
        net.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        with tqdm(total=len(train_batches), desc=f"epoch {epoch}/{cfg.epochs}", unit="batch",
                  file=sys.stderr, disable=not (progress and rank == 0)) as bar:
            for images, labels in train_batches:
                target, lr = float(target_at[step]), float(lr_at[step])
                step += 1
                if pruner is not None and (target - pruned_to > cfg.prune_resolution
                                           or (target == final_target != pruned_to)):
                    pruner.prune_to(target)
                    pruned_to = target
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with autocast():
                    loss = F.cross_entropy(net(images), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if pruner is not None:
                    pruner.apply_masks()
                loss_sum += loss.detach() * len(labels)
                bar.update()
            train_loss_sum, seen = _all_sum(
                [loss_sum.item(), len(train_batches) * cfg.batch_size], device)
            diverged = not math.isfinite(train_loss_sum)
            val_loss, val_acc = evaluate(model, val_batches, autocast)
            metrics = {
                "epoch": epoch, "step": step, "progress": step / total_steps, "lr": lr,
                "target_sparsity": target,
                "sparsity": 0.0 if pruner is None else pruner.sparsity(),
                "train_loss": train_loss_sum / seen, "val_loss": val_loss, "val_acc": val_acc,
                "epoch_seconds": time.perf_counter() - epoch_start, "diverged": diverged,
            }
            bar.set_postfix(loss=f"{metrics['train_loss']:.3f}", val_acc=f"{val_acc:.3f}",
                            sparsity=f"{metrics['sparsity']:.3f}")
        history.append(metrics)
        if report is not None and rank == 0:
            report(dict(metrics))
        if checkpoint is not None:
            state = {
                "config": cfg.to_dict(), "world_size": world_size, "epoch": epoch,
                "step": step, "pruned_to": pruned_to, "history": list(history),
                "seconds": time.perf_counter() - started, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "pruner": None if pruner is None else pruner.state_dict(),
                "batches": gather(train_batches.generator_state()),
                "rng": torch.get_rng_state()}
            checkpoint(dict(metrics), state)
        if diverged:
            break

    test_loss, test_acc = math.nan, math.nan
    if test:
        test_loss, test_acc = evaluate(model, Batches(data.test, EVAL_BATCH_SIZE, **loader),
                                       autocast)
    return TrainResult(cfg, test_loss, test_acc, history[-1]["val_loss"],
                       history[-1]["val_acc"], history[-1]["sparsity"],
                       time.perf_counter() - started, history, model, pruner, diverged)


STATE_KEYS = frozenset({"config", "world_size", "epoch", "step", "pruned_to", "history",
                        "seconds", "model", "optimizer", "pruner", "batches", "rng"})


def gather(value: Any) -> list[Any]:
    """`value` (any picklable object) from every rank, in rank order: a collective call
    under torch.distributed, a one-element list without it."""
    world_size = _distributed()[1]
    if world_size == 1:
        return [value]
    values: list[Any] = [None] * world_size
    dist.all_gather_object(values, value)
    return values


def _check_resume(state: Mapping[str, Any], cfg: TrainConfig, world_size: int) -> None:
    """Refuse a state taken from another run: it would silently mix two trainings."""
    if not isinstance(state, Mapping) or not STATE_KEYS <= set(state):
        raise ValueError(f"resume must be a training state with keys {sorted(STATE_KEYS)}")
    if state["config"] != cfg.to_dict():
        differs = sorted(k for k, v in cfg.to_dict().items() if state["config"].get(k) != v)
        raise ValueError(f"resume state was taken with another config (differs in "
                         f"{', '.join(differs)})")
    if state["world_size"] != world_size:
        raise ValueError(f"resume state was taken with world_size={state['world_size']}, "
                         f"this run has {world_size}")
    if not 1 <= state["epoch"] <= cfg.epochs:
        raise ValueError(f"resume state epoch must be in [1, {cfg.epochs}], "
                         f"got {state['epoch']}")


# -- command line -------------------------------------------------------------------------

SCHEDULE_PARAMS = ("start", "end", "alpha", "beta", "power", "steps", "initial_sparsity")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (no usage block) and exits 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    console_script = Path(sys.argv[0]).name == "oneprune-train"
    p = _Parser(prog="oneprune-train" if console_script else "python -m oneprune.train",
                description="Train a ConvNet once while pruning it along a schedule.")
    data = p.add_argument_group("data")
    data.add_argument("--dataset", default=defaults.dataset, help=f"one of {', '.join(DATASETS)}")
    data.add_argument("--data-dir", help="where the dataset files are (default "
                      "~/.cache/oneprune/data; digits needs none)")
    data.add_argument("--download", action="store_true", help="download missing files")
    data.add_argument("--no-verify-data", dest="verify_data", action="store_false",
                      help="skip torchvision's md5 checks of the CIFAR files")
    data.add_argument("--image-size", type=int, default=defaults.image_size,
                      help="Caltech-101 image side after resizing")
    data.add_argument("--val-fraction", type=float, default=defaults.val_fraction)
    data.add_argument("--split-seed", type=int, default=defaults.split_seed)
    model = p.add_argument_group("model and optimisation")
    model.add_argument("--model", help=f"one of {', '.join(MODELS)} (default: convnet for "
                       "digits, resnet18 otherwise)")
    model.add_argument("--width", type=float, default=defaults.width,
                       help="channel multiplier")
    model.add_argument("--epochs", type=int, default=defaults.epochs)
    model.add_argument("--batch-size", type=int, default=defaults.batch_size)
    model.add_argument("--optimizer", default=defaults.optimizer, help="adam or sgd")
    model.add_argument("--lr", type=float, default=defaults.lr_max, dest="lr_max",
                       help="peak learning rate of the one-cycle policy")
    model.add_argument("--pct-start", type=float, default=defaults.pct_start,
                       help="warm-up fraction of the one-cycle policy")
    model.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    model.add_argument("--coupling", default=defaults.coupling,
                       help=f"LR coupling to the schedule: {', '.join(COUPLINGS)}")
    model.add_argument("--recovery-gain", type=float, default=defaults.recovery_gain)
    model.add_argument("--recovery-window", type=float, default=defaults.recovery_window)
    prune = p.add_argument_group("pruning schedule")
    prune.add_argument("--schedule", default="one_cycle",
                       help=f"one of {', '.join(FAMILIES)}, or none (dense)")
    prune.add_argument("--sparsity", type=float, default=0.9, help="final sparsity in [0, 1)")
    for name in SCHEDULE_PARAMS:
        prune.add_argument(f"--{name.replace('_', '-')}",
                           type=int if name == "steps" else float,
                           help="schedule parameter (families that have it)")
    prune.add_argument("--scope", default=defaults.scope, help="local or global")
    prune.add_argument("--granularity", default=defaults.granularity, help="weight or filter")
    run = p.add_argument_group("run")
    run.add_argument("--seed", type=int, default=defaults.seed)
    run.add_argument("--device", default=defaults.device, help="auto, cpu, cuda or cuda:N")
    run.add_argument("--channels-last", action="store_true")
    run.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    run.add_argument("--out", type=Path, help="write the pruned model, its config and "
                     "metrics.json to this folder")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _schedule(args: argparse.Namespace) -> Schedule | None:
    given = {name: getattr(args, name) for name in SCHEDULE_PARAMS
             if getattr(args, name) is not None}
    if args.schedule == "none":
        if given:
            raise ValueError(f"--{next(iter(given)).replace('_', '-')} needs a schedule, "
                             f"not --schedule none")
        return None
    family = _validate.choice("--schedule", args.schedule, (*FAMILIES, "none"))
    spec = {"family": family, "final_sparsity": args.sparsity, **given}
    fields = {f.name for f in dataclasses.fields(FAMILIES[family])}
    for name in given:
        if name not in fields:
            raise ValueError(f"--{name.replace('_', '-')} does not apply to --schedule "
                             f"{family} (its parameters: {', '.join(sorted(fields))})")
    if family == "one_shot" and "start" not in given:
        raise ValueError("--schedule one_shot needs --start (the progress at which it prunes)")
    return schedule_from_dict(spec)


def _summary(result: TrainResult) -> str:
    target = 0.0 if result.config.schedule is None else result.config.schedule.final_sparsity
    return (f"test_acc {result.test_acc:.4f}  val_acc {result.val_acc:.4f}  "
            f"sparsity {result.sparsity:.4%} (target {target:.2%})  "
            f"{result.config.model} on {result.config.dataset}, "
            f"{result.config.epochs} epochs in {result.seconds:.1f} s")


def main(argv: list[str] | None = None) -> int:
    """`python -m oneprune.train`: bad input gives one line on stderr and exit code 2."""
    parser = _parser()
    args = parser.parse_args(argv)
    # Flags are named after the config's fields (`--schedule` is a family name, built apart).
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"schedule"}
    try:
        cfg = TrainConfig(schedule=_schedule(args),
                          **{k: v for k, v in vars(args).items() if k in fields})
        cfg.resolve_device()
        if args.out is not None:  # before training, so that no finished run is lost
            try:
                args.out.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise ValueError(f"--out {str(args.out)!r} cannot be a folder here: "
                                 f"{error.strerror}") from None
        data = cfg.load_data()
        check_data(cfg, data)
    except ValueError as error:  # includes DataUnavailableError
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    result = train(cfg, data=data, progress=not args.quiet)
    print(_summary(result))
    if args.out is not None:
        files = save_pruned(result, args.out)
        for name, path in files.items():
            print(f"{name}: {path} ({path.stat().st_size:,} bytes)")
    if not math.isfinite(result.history[-1]["train_loss"]):
        print("warning: the training loss is not finite (diverged)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
