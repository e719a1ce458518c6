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
import copy
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
from oneprune.data import DATASETS, RESIZED_DATASETS, Batches, ImageData, load_dataset
from oneprune.export import save_pruned
from oneprune.lr import COUPLINGS, LR_MAX, PCT_START, RECOVERY_GAIN, RECOVERY_WINDOW, CoupledLR
from oneprune.models import (
    MIN_IMAGE_SIZE,
    MODELS,
    build_model,
    check_model_args,
    check_model_name,
)
from oneprune.pruning import GRANULARITIES, SCOPES, Pruner, PruneSelection
from oneprune.schedules import FAMILIES, OneCycle, Schedule, schedule_from_dict

OPTIMIZERS = ("adam", "sgd")
EVAL_BATCH_SIZE = 1024
GROUPS = ("data", "model", "optimisation", "pruning", "run")
WHERE = ("top", "training", None)
TUNE = ("log", "linear", "choice", None)


def setting(default: Any = dataclasses.MISSING, *, help: str, group: str,
            check: Callable[[str, Any], Any], where: str | None = "top",
            tune: str | None = None, flags: tuple[str, ...] = (),
            default_factory: Callable[[], Any] | Any = dataclasses.MISSING) -> Any:
    """A `TrainConfig` field and everything derived from it, declared once.

    `check(key, value)` returns the normalised value or raises `ValueError` naming `key`
    (the field, an experiment key such as `training.lr_max`, or a flag). `help` and
    `group` make its `python -m oneprune.train` flag (`--field-name`, plus `flags`).
    `where` places it in an experiment file: a top-level key ("top"), a key of its
    `training:` section ("training") or none (None: set per trial by the service).
    `tune` says what a study may search: "log" / "linear" (a [low, high] range), "choice"
    (a list of values) or nothing.
    """
    if group not in GROUPS or where not in WHERE or tune not in TUNE:
        raise ValueError(f"setting: group {group!r}, where {where!r} or tune {tune!r} unknown")
    metadata = {"help": help, "group": group, "check": check, "where": where, "tune": tune,
                "flags": flags}
    return field(default=default, default_factory=default_factory, metadata=metadata)


def _choice(allowed) -> Callable[[str, Any], str]:
    return lambda key, value: _validate.choice(key, value, allowed)


def _real(**limits) -> Callable[[str, Any], float]:
    return lambda key, value: _validate.real(key, value, **limits)


def _integer(**limits) -> Callable[[str, Any], int]:
    return lambda key, value: _validate.integer(key, value, **limits)


def _boolean(key: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    return value


def _path_or_none(key: str, value) -> str | None:
    if value is not None and not isinstance(value, str | os.PathLike):
        raise ValueError(f"{key} must be a path or None, got {value!r}")
    return None if value is None else os.fspath(value)


def _model_or_none(key: str, value) -> str | None:
    return None if value is None else check_model_name(key, value)


def _device(key: str, value) -> str:
    if not (isinstance(value, str) and (value in ("auto", "cpu", "cuda")
                                        or re.fullmatch(r"cuda:\d+", value))):
        raise ValueError(f"{key} must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}")
    return value


def _schedule_or_none(key: str, value) -> Schedule | None:
    if isinstance(value, Mapping):
        return schedule_from_dict(value)
    if value is not None and not isinstance(value, Schedule):
        raise ValueError(f"{key} must be a Schedule, its to_dict() or None, got {value!r}")
    return value


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run; validated on construction.

    `schedule=None` trains dense (no pruner). `model=None` picks the dataset's default:
    the small `convnet` for digits, `resnet18` otherwise. `seed` drives initialisation,
    batch order and augmentation; `split_seed` only the train/val/test split, so runs with
    different seeds are compared on the same data.

    Every field is declared once, with `setting`: its check, its help, its place in an
    experiment file and its command-line flag are all read from here (`settings()`).
    """

    dataset: str = setting("digits", group="data", check=_choice(DATASETS),
                           help=f"one of {', '.join(DATASETS)}")
    data_dir: str | None = setting(None, group="data", check=_path_or_none,
                                   help="where the dataset files are (default "
                                        "~/.cache/oneprune/data; digits needs none, "
                                        "imagefolder needs it)")
    download: bool = setting(False, group="data", check=_boolean,
                             help="download missing files (CIFAR, Caltech-101)")
    verify_data: bool = setting(True, group="data", check=_boolean,
                                help="check the CIFAR files against torchvision's md5 sums")
    image_size: int = setting(64, group="data", check=_integer(**_validate.IMAGE_SIZE),
                              help="image side after resizing (Caltech-101, imagefolder)")
    val_fraction: float = setting(0.1, group="data",
                                  check=_real(**_validate.VAL_FRACTION),
                                  help="share of the training set held out for validation")
    split_seed: int = setting(0, group="data", check=_integer(**_validate.SEED),
                              help="seed of the train/val/test split")
    model: str | None = setting(None, group="model", check=_model_or_none,
                                help=f"one of {', '.join(MODELS)}, package.module:callable "
                                     "or timm:<name> (default: convnet for digits, "
                                     "resnet18 otherwise)")
    model_args: dict[str, Any] = setting(
        default_factory=dict, group="model", check=check_model_args, flags=("--model-arg",),
        help="more keyword arguments of the model's constructor (KEY=VALUE, repeatable)")
    width: float = setting(1.0, group="model", check=_real(**_validate.WIDTH),
                           help="channel multiplier of the built-in models")
    epochs: int = setting(15, group="optimisation", check=_integer(low=1, high=10_000),
                          help="training epochs (the whole budget)")
    batch_size: int = setting(64, group="optimisation", check=_integer(low=2, high=65_536),
                              help="training batch size (over all ranks)")
    optimizer: str = setting("adam", group="optimisation", where="training", tune="choice",
                             check=_choice(OPTIMIZERS),
                             help="adam (AdamW: decoupled weight decay) or sgd (Nesterov)")
    lr_max: float = setting(1e-3, group="optimisation", where="training", tune="log",
                            check=_real(**LR_MAX), flags=("--lr-max", "--lr"),
                            help="peak learning rate of the one-cycle policy")
    pct_start: float = setting(0.25, group="optimisation", where="training", tune="linear",
                               check=_real(**PCT_START),
                               help="warm-up fraction of the one-cycle policy")
    weight_decay: float = setting(0.0, group="optimisation", where="training",
                                  tune="linear", check=_real(low=0.0, high=1.0),
                                  help="weight decay")
    momentum: float = setting(0.9, group="optimisation", where="training", tune="linear",
                              check=_real(low=0.0, high=1.0, high_open=True),
                              help="SGD momentum")
    schedule: Schedule | None = setting(OneCycle(final_sparsity=0.9), group="pruning",
                                        where=None, check=_schedule_or_none,
                                        help="the pruning schedule (None: dense)")
    coupling: str = setting("none", group="pruning", where="training", tune="choice",
                            check=_choice(COUPLINGS),
                            help=f"LR coupling to the schedule: {', '.join(COUPLINGS)}")
    recovery_gain: float = setting(0.0, group="pruning", where="training", tune="linear",
                                   check=_real(**RECOVERY_GAIN),
                                   help="LR boost while weights are being removed")
    recovery_window: float = setting(0.05, group="pruning", where="training",
                                     check=_real(**RECOVERY_WINDOW),
                                     help="trailing window of the recovery gain")
    prune: PruneSelection = setting(
        default_factory=PruneSelection, group="pruning", check=PruneSelection.parse,
        help="which layers are pruned: kinds (conv, linear) and module names to exclude")
    scope: str = setting("local", group="pruning", check=_choice(SCOPES),
                         help="local or global")
    granularity: str = setting("weight", group="pruning", check=_choice(GRANULARITIES),
                               help="weight or filter")
    prune_resolution: float = setting(1e-3, group="pruning", where="training",
                                      check=_real(low=0.0, high=0.1),
                                      help="prune again when the target moved by more")
    seed: int = setting(0, group="run", where=None, check=_integer(**_validate.SEED),
                        help="seed of initialisation, batch order and augmentation")
    device: str = setting("auto", group="run", where=None, check=_device,
                          help="auto, cpu, cuda or cuda:N")
    channels_last: bool = setting(False, group="run", check=_boolean,
                                  help="channels-last memory format")
    bf16: bool = setting(False, group="run", check=_boolean, help="bfloat16 autocast")

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            value = spec.metadata["check"](spec.name, getattr(self, spec.name))
            object.__setattr__(self, spec.name, value)
        if self.model is None:
            object.__setattr__(self, "model",
                               "convnet" if self.dataset == "digits" else "resnet18")
        if self.width != 1.0 and self.model not in MODELS:
            raise ValueError(f"width scales the built-in models only; size model "
                             f"{self.model!r} through model_args, got width={self.width:g}")
        if self.dataset == "imagefolder" and self.data_dir is None:
            raise ValueError("dataset 'imagefolder' needs data_dir (a folder with train/ "
                             "and optionally test/ of class folders)")
        self.lr_policy()  # the coupling needs a schedule

    @classmethod
    def settings(cls) -> dict[str, dataclasses.Field]:
        """Every field with its `setting` metadata, in declaration order."""
        return {spec.name: spec for spec in dataclasses.fields(cls)}

    def lr_policy(self) -> CoupledLR:
        """The learning rate as a function of progress, coupled to the schedule."""
        return CoupledLR(self.schedule, self.lr_max, self.pct_start, self.coupling,
                         self.recovery_gain, self.recovery_window)

    def load_data(self, progress: bool = False) -> ImageData:
        """The dataset and splits this config trains on (load once, pass to many runs);
        `progress`: a progress bar while an image folder is decoded the first time."""
        return load_dataset(self.dataset, self.data_dir, self.download, self.val_fraction,
                            self.split_seed, image_size=self.image_size,
                            verify=self.verify_data, progress=progress)

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
        spec = {name: getattr(self, name) for name in self.settings()}
        spec["schedule"] = None if self.schedule is None else self.schedule.to_dict()
        spec["prune"] = self.prune.to_dict()
        spec["model_args"] = copy.deepcopy(self.model_args)
        return spec

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> TrainConfig:
        """Build from `to_dict()` output or a hand-written mapping; unknown keys are refused."""
        if not isinstance(spec, Mapping):
            raise ValueError(f"train config must be a mapping, got {spec!r}")
        names = list(cls.settings())
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
    num_classes: int | None = None
    in_channels: int | None = None

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
    if cfg.dataset in RESIZED_DATASETS:
        made["image_size"], wanted["image_size"] = data.image_size, cfg.image_size
    for key, value in made.items():
        if value != wanted[key]:
            raise ValueError(f"data was loaded with {key}={value!r} but the config "
                             f"has {key}={wanted[key]!r}")
    if data.image_size < MIN_IMAGE_SIZE.get(cfg.model, 1):
        raise ValueError(f"model {cfg.model!r} needs images of at least "
                         f"{MIN_IMAGE_SIZE[cfg.model]}x{MIN_IMAGE_SIZE[cfg.model]}; "
                         f"{cfg.dataset} has {data.image_size}x{data.image_size}")


def new_model(cfg: TrainConfig, data: ImageData) -> nn.Module:
    """`cfg`'s model, freshly initialised for `data`'s classes and channels."""
    return build_model(cfg.model, data.num_classes, data.in_channels, cfg.width,
                       cfg.model_args)


def new_pruner(cfg: TrainConfig, model: nn.Module) -> Pruner | None:
    """The pruner of `model`'s layers that `cfg.prune` selects (None: dense training)."""
    if cfg.schedule is None:
        return None
    return Pruner.of(model, cfg.prune, scope=cfg.scope, granularity=cfg.granularity)


def check_model(cfg: TrainConfig, data: ImageData) -> None:
    """Raise `ValueError` (one line) unless `cfg`'s model can be built for `data`, has
    layers to prune, and maps a batch of `data`'s images to one logit per class: the
    checks worth making before any trial starts (a user's model is otherwise unknown)."""
    check_data(cfg, data)
    with torch.random.fork_rng(devices=[]):
        model = new_model(cfg, data)
    Pruner.of(model, cfg.prune)  # raises when nothing is left to prune
    size = data.image_size
    images = torch.zeros(2, data.in_channels, size, size)
    try:
        with torch.no_grad():
            logits = model.eval()(images)
    except Exception as error:  # a user's forward can raise anything
        raise ValueError(f"model {cfg.model!r} cannot take {data.in_channels}x{size}x{size} "
                         f"images of {cfg.dataset}: {type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''}") from None
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (2, data.num_classes):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
        raise ValueError(f"model {cfg.model!r} must return logits of shape (batch, "
                         f"{data.num_classes}) for {cfg.dataset}, got {shape}")


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
    model = new_model(cfg, data).to(device, memory_format=memory_format)
    pruner = new_pruner(cfg, model)
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
                       time.perf_counter() - started, history, model, pruner, diverged,
                       data.num_classes, data.in_channels)


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


GROUP_TITLES = {"data": "data", "model": "model", "optimisation": "optimisation",
                "pruning": "pruning schedule and LR coupling", "run": "run"}


def _key_value(text: str) -> tuple[str, Any]:
    """KEY=VALUE of `--model-arg`, VALUE read as YAML (3, 0.5, true, [1, 2], text)."""
    import yaml

    key, equals, value = text.partition("=")
    if not equals or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError:
        return key, value


def _add_flags(group, name: str, spec: dataclasses.Field) -> None:
    """The flag(s) of one `TrainConfig` setting: its name with dashes (or `flags`), parsed
    by the type of its default; only flags that are given reach the namespace."""
    meta = spec.metadata
    default = (spec.default_factory() if spec.default is dataclasses.MISSING
               else spec.default)
    flags = meta["flags"] or (f"--{name.replace('_', '-')}",)
    common = {"dest": name, "default": argparse.SUPPRESS}
    shown = "" if default is None else f" (default: {default})"
    if isinstance(default, bool):
        group.add_argument(*flags, action=argparse.BooleanOptionalAction,
                           help=meta["help"] + shown, **common)
    elif isinstance(default, dict):
        group.add_argument(*flags, action="append", type=_key_value, metavar="KEY=VALUE",
                           help=meta["help"], **common)
    elif dataclasses.is_dataclass(default):  # a nested setting: one flag per field
        for part in dataclasses.fields(default):
            value = getattr(default, part.name)
            group.add_argument(f"{flags[0]}-{part.name.replace('_', '-')}", nargs="*",
                               dest=f"{name}.{part.name}", default=argparse.SUPPRESS,
                               metavar=part.metadata["metavar"],
                               help=f"{part.metadata['help']} "
                                    f"(default: {' '.join(value) or 'none'})")
    else:
        kind = type(default) if default is not None else str
        group.add_argument(*flags, type=kind, help=meta["help"] + shown, **common)


def _parser() -> argparse.ArgumentParser:
    console_script = Path(sys.argv[0]).name == "oneprune-train"
    p = _Parser(prog="oneprune-train" if console_script else "python -m oneprune.train",
                description="Train a ConvNet once while pruning it along a schedule.")
    groups = {key: p.add_argument_group(title) for key, title in GROUP_TITLES.items()}
    for name, spec in TrainConfig.settings().items():
        if name != "schedule":  # built from --schedule, --sparsity and its parameters
            _add_flags(groups[spec.metadata["group"]], name, spec)
    prune = groups["pruning"]
    prune.add_argument("--schedule", default="one_cycle",
                       help=f"one of {', '.join(FAMILIES)}, or none (dense)")
    prune.add_argument("--sparsity", type=float, default=0.9, help="final sparsity in [0, 1)")
    for name in SCHEDULE_PARAMS:
        prune.add_argument(f"--{name.replace('_', '-')}",
                           type=int if name == "steps" else float,
                           help="schedule parameter (families that have it)")
    run = groups["run"]
    run.add_argument("--out", type=Path, help="write the pruned model, its config and "
                     "metrics.json to this folder")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The `TrainConfig` of parsed flags (`ValueError` naming the field if it is bad)."""
    settings = TrainConfig.settings()
    given = {key: value for key, value in vars(args).items()
             if key.partition(".")[0] in settings and key != "schedule"}
    values = {key: value for key, value in given.items() if "." not in key}
    if "model_args" in values:
        values["model_args"] = dict(values["model_args"])
    for key, value in given.items():
        if "." in key:
            name, part = key.split(".")
            values.setdefault(name, settings[name].default_factory().to_dict())[part] = value
    return TrainConfig(schedule=_schedule(args), **values)


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
    try:
        cfg = config_from_args(args)
        cfg.resolve_device()
        if args.out is not None:  # before training, so that no finished run is lost
            try:
                args.out.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise ValueError(f"--out {str(args.out)!r} cannot be a folder here: "
                                 f"{error.strerror}") from None
        data = cfg.load_data(progress=not args.quiet)
        check_model(cfg, data)
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
