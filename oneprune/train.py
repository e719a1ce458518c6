"""The one training loop: prune along a schedule while training, in one run.

    python -m oneprune --dataset digits --schedule one_cycle --sparsity 0.9 --epochs 15

Per batch, with progress t = step / total_steps (step counted from 1, so the last step
trains at t = 1 with the schedule's final sparsity):

    target = schedule(t)                    # prune_to only when it moved by > resolution
    lr = coupled one-cycle LR at t          # oneprune.lr
    forward, backward, optimizer step, pruner.apply_masks()
                                            # with a teacher (distill_weight > 0): the loss
                                            # adds its soft targets, oneprune.distill

Per epoch: validation loss and accuracy, a `report(metrics)` call (rank 0 only) and a
`checkpoint(metrics, state)` call (every rank); `train(..., resume=state)` continues from
such a state exactly where it was taken. A non-finite training loss ends the run after
that epoch as diverged. At the end: test loss and accuracy. The same seed on CPU gives the
same metrics, resumed or not.

Under torch.distributed (initialised by the caller: torchrun, Ray Train), the model is
wrapped in DDP, every rank trains on its shard of each batch order and evaluates on its
shard of val / test (sums all-reduced), and the masks stay identical on every rank because
they are a deterministic function of the (synchronised) weights.

Around the loop: `oneprune.config` (TrainConfig, every setting declared once),
`oneprune.state` (the resumable state and its files), `oneprune.distributed` (no-op-safe
collectives) and `oneprune.cli` (the command line, which `python -m oneprune` runs).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from oneprune.config import TrainConfig
from oneprune.data import Batches, ImageData, data_source
from oneprune.distill import NO_TEACHER, distillation_loss, frozen_teacher
from oneprune.distributed import all_sum, gather, rank_and_world_size
from oneprune.models import MIN_IMAGE_SIZE, build_model
from oneprune.pruning import Pruner
from oneprune.starts import SCRATCH, fit_weights, read_weights, weights_digest
from oneprune.state import check_resume

EVAL_BATCH_SIZE = 1024


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
    mean: tuple[float, ...] = ()  # the normalisation of the inputs, in [0, 1] units
    std: tuple[float, ...] = ()
    image_size: int | None = None
    init_digest: str | None = None  # of the weights it started from (None: scratch)
    teacher_digest: str | None = None  # of its teacher's weights (None: no teacher)

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
                "init": self.config.init, "init_digest": self.init_digest,
                "teacher": self.config.teacher, "teacher_digest": self.teacher_digest,
                "history": self.history, "layers": layers}


def train(cfg: TrainConfig, report: Callable[[dict], Any] | None = None, *,
          data: ImageData | None = None, progress: bool = False, test: bool = True,
          checkpoint: Callable[[dict, dict], Any] | None = None,
          resume: Mapping[str, Any] | None = None,
          initial: Mapping[str, torch.Tensor] | None = None,
          teacher: Mapping[str, torch.Tensor] | None = None) -> TrainResult:
    """Train `cfg` once, pruning along its schedule; call `report` after every epoch.

    `data` may be passed in already loaded (e.g. once for many runs); it must have been
    loaded as the config says. `progress` shows a tqdm bar per epoch. `test=False` skips
    the test split (a tuning run must not see it): test loss and accuracy are then NaN.
    `checkpoint(metrics, state)` is called after every epoch on every rank (all ranks hold
    the same state; save it once, e.g. with `save_state`, during the call: its tensors are
    the live ones); `resume=state` continues the run from it with the same config, data
    and world size. A config whose `init` is not "scratch" starts from those weights:
    `initial` if given (its tensors), else read from the file `init` names
    (`oneprune.starts.read_weights`); `ValueError` when they do not fit the model. A config
    with a `teacher` distils from it (`oneprune.distill`) where `distill_weight` > 0: from
    `teacher` if given (its tensors), else from the file `cfg.teacher` names.
    """
    rank, world_size = rank_and_world_size()
    device = cfg.resolve_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if data is None:
        data = cfg.load_data()
    check_data(cfg, data)

    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = initial_model(cfg, data)
    start = starting_weights(cfg, initial)
    if start is not None:
        fit_weights(model, start, f"init {cfg.init!r}")
    model = model.to(device, memory_format=memory_format)
    teacher_state = teacher_weights(cfg, teacher)
    distiller = None if teacher_state is None or cfg.distill_weight == 0 else frozen_teacher(
        new_model_unseeded(cfg, data), teacher_state, f"teacher {cfg.teacher!r}").to(
            device, memory_format=memory_format)
    pruner = new_pruner(cfg, model, data)
    net = model
    if world_size > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = new_optimizer(cfg, model)

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
        check_resume(resume, cfg, world_size)
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
                    if distiller is None:
                        loss = F.cross_entropy(net(images), labels)
                    else:  # the teacher first: its forward then costs no more than alone
                        with torch.no_grad():  # (not beside the student's live activations)
                            teacher_logits = distiller(images)
                        loss = distillation_loss(net(images), teacher_logits, labels,
                                                 weight=cfg.distill_weight,
                                                 temperature=cfg.distill_temperature)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if pruner is not None:
                    pruner.apply_masks()
                loss_sum += loss.detach() * len(labels)
                bar.update()
            train_loss_sum, seen = all_sum(
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
                       data.num_classes, data.in_channels, data.mean, data.std,
                       data.image_size, None if start is None else weights_digest(start),
                       None if teacher_state is None else weights_digest(teacher_state))


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
    loss_sum, correct, count = all_sum([loss_sum.item(), correct.item(), count],
                                        batches.device)
    return loss_sum / count, correct / count


def check_data(cfg: TrainConfig, data: ImageData) -> None:
    """Raise `ValueError` unless `data` was loaded as `cfg` says and suits its model."""
    made = {"dataset": data.name, "split_seed": data.split_seed,
            "val_fraction": data.val_fraction}
    wanted = {"dataset": cfg.dataset, "split_seed": cfg.split_seed,
              "val_fraction": cfg.val_fraction}
    if data_source(cfg.dataset).resized:
        made["image_size"], wanted["image_size"] = data.image_size, cfg.image_size
    for key, value in made.items():
        if value != wanted[key]:
            raise ValueError(f"data was loaded with {key}={value!r} but the config "
                             f"has {key}={wanted[key]!r}")
    if data.image_size < MIN_IMAGE_SIZE.get(cfg.model, 1):
        raise ValueError(f"model {cfg.model!r} needs images of at least "
                         f"{MIN_IMAGE_SIZE[cfg.model]}x{MIN_IMAGE_SIZE[cfg.model]}; "
                         f"{cfg.dataset} has {data.image_size}x{data.image_size}")


def initial_model(cfg: TrainConfig, data: ImageData) -> nn.Module:
    """`cfg`'s model as seed `cfg.seed` initialises it (the global torch RNG is seeded
    first): the same weights whatever the schedule, LR or family, which is what pairs the
    final runs of a study by seed."""
    torch.manual_seed(cfg.seed)
    return new_model(cfg, data)


def _named_weights(role: str, named: str, nothing: str,
                   given: Mapping[str, torch.Tensor] | None) -> Mapping[str, torch.Tensor] | None:
    """None where the config's `role` field (`init`, `teacher`) is `nothing`, else the
    weights `given`, or those read from the file it `named`."""
    if named == nothing:
        if given is not None:
            raise ValueError(f"{role} weights were given, but the config's {role} is "
                             f"{nothing!r}")
        return None
    return read_weights(named, role) if given is None else given


def starting_weights(cfg: TrainConfig, initial: Mapping[str, torch.Tensor] | None = None,
                     ) -> Mapping[str, torch.Tensor] | None:
    """The weights a run of `cfg` starts from: None for `init: scratch`, else `initial` or
    the file `cfg.init` names."""
    return _named_weights("init", cfg.init, SCRATCH, initial)


def teacher_weights(cfg: TrainConfig, teacher: Mapping[str, torch.Tensor] | None = None,
                    ) -> Mapping[str, torch.Tensor] | None:
    """The weights a run of `cfg` distils from: None without a teacher, else `teacher` or
    the file `cfg.teacher` names."""
    return _named_weights("teacher", cfg.teacher, NO_TEACHER, teacher)


def new_model_unseeded(cfg: TrainConfig, data: ImageData) -> nn.Module:
    """`cfg`'s model built without touching the global RNG (its random initialisation is
    overwritten at once: a teacher, a model to check), so that the run's own draws stay
    those of its seed."""
    with torch.random.fork_rng(devices=[]):
        return new_model(cfg, data)


def new_model(cfg: TrainConfig, data: ImageData) -> nn.Module:
    """`cfg`'s model, freshly initialised for `data`'s classes and channels."""
    return build_model(cfg.model, data.num_classes, data.in_channels, cfg.width,
                       cfg.model_args)


def new_pruner(cfg: TrainConfig, model: nn.Module, data: ImageData | None = None
               ) -> Pruner | None:
    """The pruner of `model`'s layers that `cfg.prune` selects, with `cfg`'s allocation
    and `round_to` (None: dense training). For filter pruning, a batch shaped like `data`'s
    images lets it find the BatchNorm channel each filter feeds, zeroed with the filter,
    and the layers a residual addition couples, scored together."""
    if cfg.schedule is None:
        return None
    example = None
    if cfg.granularity == "filter" and data is not None:
        parameter = next(model.parameters())
        example = torch.zeros(2, data.in_channels, data.image_size, data.image_size,
                              device=parameter.device)
    return Pruner.of(model, cfg.prune, granularity=cfg.granularity,
                     allocation=cfg.allocation, allocation_args=cfg.allocation_args,
                     example_inputs=example, round_to=cfg.round_to)


def new_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """`optimizer: adam` is `torch.optim.AdamW` (decoupled weight decay, as fastai's Adam
    and the paper); `sgd` is SGD with Nesterov momentum (plain SGD at momentum 0). The LR
    is set per step from the coupled policy."""
    if cfg.optimizer == "adam":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr_max,
                                 weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr_max, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)


def check_model(cfg: TrainConfig, data: ImageData, *,
                sparsities: tuple[float, ...] | None = None,
                allocations: tuple[str, ...] | None = None,
                initial: Mapping[str, torch.Tensor] | None = None,
                teacher: Mapping[str, torch.Tensor] | None = None) -> None:
    """Raise `ValueError` (one line) unless `cfg`'s model can be built for `data`, takes the
    weights it starts from (`initial`, if given) and its `teacher`'s (if given: a teacher
    of the same model has the student's classes), has layers to prune, can be pruned to
    each of `sparsities` (default: the schedule's final one) by each of `allocations`
    (default: `cfg.allocation`), and maps a batch of `data`'s images to one logit per class:
    the checks worth making before any trial starts (a user's model is otherwise
    unknown)."""
    check_data(cfg, data)
    model = new_model_unseeded(cfg, data)
    if teacher is not None:
        frozen_teacher(new_model_unseeded(cfg, data), teacher, f"teacher {cfg.teacher!r}")
    if initial is not None:
        fit_weights(model, initial, f"init {cfg.init!r}")
    Pruner.of(model, cfg.prune)  # raises when nothing is left to prune
    if sparsities is None:
        sparsities = () if cfg.schedule is None else (cfg.schedule.final_sparsity,)
    for allocation in allocations or (cfg.allocation,):
        pruner = Pruner.of(model, cfg.prune, granularity=cfg.granularity,
                           allocation=allocation)
        for sparsity in sparsities:
            pruner.check_reachable(sparsity)
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
