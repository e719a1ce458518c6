"""What defines one training run: `TrainConfig`, every field declared once with `setting`.

A field's `setting(...)` carries its check, its help text, its place in an experiment file
(`search.experiment.keys` reads it) and whether a study may tune it (`search.plan.space`),
so the command line (`oneprune.cli`), the experiment files and the search space are all derived
from this one declaration.

    >>> from oneprune.config import TrainConfig
    >>> cfg = TrainConfig(epochs=3, lr_max=1e-2)
    >>> cfg.model, cfg.schedule.family, cfg.schedule.final_sparsity
    ('convnet', 'one_cycle', 0.9)
    >>> TrainConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from oneprune import _validate
from oneprune.allocation import ALLOCATIONS, allocation_of, from_scope
from oneprune.data import DATASETS, ImageData, data_source, load_dataset
from oneprune.distill import NO_TEACHER
from oneprune.lr import COUPLINGS, LR_MAX, PCT_START, RECOVERY_GAIN, RECOVERY_WINDOW, CoupledLR
from oneprune.models import MODELS, check_model_args, check_model_name
from oneprune.pruning import GRANULARITIES, PruneSelection, check_round_to
from oneprune.schedules import OneCycle, Schedule, schedule_from_dict
from oneprune.starts import SCRATCH

OPTIMIZERS = ("adam", "sgd")
GROUPS = ("data", "model", "optimisation", "pruning", "run")
WHERE = ("top", "training", None)
TUNE = ("log", "linear", "choice", None)


def setting(default: Any = dataclasses.MISSING, *, help: str, group: str,
            check: Callable[[str, Any], Any], where: str | None = "top",
            tune: str | None = None, flags: tuple[str, ...] = (),
            default_range: tuple[float, float] | None = None,
            default_factory: Callable[[], Any] | Any = dataclasses.MISSING) -> Any:
    """A `TrainConfig` field and everything derived from it, declared once.

    `check(key, value)` returns the normalised value or raises `ValueError` naming `key`
    (the field, an experiment key such as `training.lr_max`, or a flag). `help` and
    `group` make its `python -m oneprune` flag (`--field-name`, plus `flags`).
    `where` places it in an experiment file: a top-level key ("top"), a key of its
    `training:` section ("training") or none (None: set per trial by the service).
    `tune` says what a study may search: "log" / "linear" (a [low, high] range), "choice"
    (a list of values) or nothing; `default_range` is the range a study searches a "log" or
    "linear" setting over where it wants it searched and the file gives none (the
    distillation settings, for the arms with a teacher).
    """
    if group not in GROUPS or where not in WHERE or tune not in TUNE:
        raise ValueError(f"setting: group {group!r}, where {where!r} or tune {tune!r} unknown")
    metadata = {"help": help, "group": group, "check": check, "where": where, "tune": tune,
                "flags": flags, "default_range": default_range}
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


def _allocation_args(key: str, value) -> dict[str, Any]:
    """A copy of `value` if it maps argument names to numbers (the allocation checks which
    it takes, and their ranges)."""
    if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and k.isidentifier() for k in value):
        raise ValueError(f"{key} must be a mapping of argument names to numbers, got {value!r}")
    return dict(value)


def _init(key: str, value) -> str:
    if not isinstance(value, str | os.PathLike) or not os.fspath(value).strip():
        raise ValueError(f"{key} must be 'scratch' or the path of the weights to start from, "
                         f"got {value!r}")
    return os.fspath(value)


def _teacher(key: str, value) -> str:
    if not isinstance(value, str | os.PathLike) or not os.fspath(value).strip():
        raise ValueError(f"{key} must be '{NO_TEACHER}' or the path of the teacher's weights, "
                         f"got {value!r}")
    return os.fspath(value)


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
    init: str = setting(SCRATCH, group="model", where=None, check=_init,
                        help="the weights it starts from: scratch (the model's random "
                             "initialisation, from the seed), or a state_dict .pt file, a "
                             ".safetensors file or a folder saved with --out")
    teacher: str = setting(NO_TEACHER, group="model", where=None, check=_teacher,
                           help="the weights of a teacher of the same model to distil from "
                                "(a state_dict .pt, a .safetensors file or a folder saved "
                                "with --out), or none; used where --distill-weight > 0")
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
    distill_weight: float = setting(
        0.0, group="optimisation", where="training", tune="linear",
        check=_real(low=0.0, high=1.0), default_range=(0.0, 1.0),
        help="weight w of the distillation term: (1 - w) * CE + w * T^2 * KL(teacher || "
             "student); 0 trains without the teacher")
    distill_temperature: float = setting(
        4.0, group="optimisation", where="training", tune="log",
        check=_real(low=0.0, high=100.0, low_open=True), default_range=(1.0, 8.0),
        help="temperature T that softens both networks' outputs in the distillation term")
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
    allocation: str = setting(
        "uniform", group="pruning", tune="choice", check=_choice(ALLOCATIONS),
        help="how the target is spread over the layers: "
             f"{', '.join(ALLOCATIONS)} (scope local | global: uniform | global)")
    allocation_args: dict[str, Any] = setting(
        default_factory=dict, group="pruning", check=_allocation_args,
        flags=("--allocation-arg",),
        help="the allocation's own arguments, e.g. exponent=2 for depth (KEY=VALUE, "
             "repeatable; a study searches those it does not fix)")
    granularity: str = setting("weight", group="pruning", check=_choice(GRANULARITIES),
                               help="weight or filter")
    round_to: int = setting(1, group="pruning", tune="choice", check=_integer(low=1),
                            help="keep each pruned layer's filters a multiple of N, e.g. 8 "
                                 "or 16 (filter granularity only; 1: no rounding)")
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
        data = data_source(self.dataset)
        if self.model is None:
            object.__setattr__(self, "model", data.default_model)
        if self.width != 1.0 and self.model not in MODELS:
            raise ValueError(f"width scales the built-in models only; size model "
                             f"{self.model!r} through model_args, got width={self.width:g}")
        allocation = allocation_of(self.allocation, self.allocation_args, self.granularity)
        check_round_to("round_to", self.round_to, self.granularity)
        object.__setattr__(self, "allocation_args", {  # as the allocation normalised them
            name: getattr(allocation, name) for name in self.allocation_args})
        if self.distill_weight > 0 and self.teacher == NO_TEACHER:
            raise ValueError(f"distill_weight={self.distill_weight:g} needs a teacher, but "
                             f"teacher is {NO_TEACHER!r}")
        if data.layout is not None and self.data_dir is None:
            raise ValueError(f"dataset {self.dataset!r} needs data_dir ({data.layout})")
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
        spec["allocation_args"] = dict(self.allocation_args)
        return spec

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> TrainConfig:
        """Build from `to_dict()` output or a hand-written mapping; unknown keys are refused."""
        if not isinstance(spec, Mapping):
            raise ValueError(f"train config must be a mapping, got {spec!r}")
        names = list(cls.settings())
        spec = dict(spec)
        if "scope" in spec and "allocation" not in spec:  # the older name, e.g. in a state
            spec["allocation"] = from_scope(spec.pop("scope"))
        if "depth_exponent" in spec and "allocation_args" not in spec:  # older, likewise
            exponent = spec.pop("depth_exponent")
            spec["allocation_args"] = ({"exponent": exponent}
                                       if spec.get("allocation") == "depth" else {})
        unknown = [key for key in spec if key not in names]
        if unknown:
            raise ValueError(f"train config has no field {unknown[0]!r}; "
                             f"fields: {', '.join(names)}")
        return cls(**spec)
