"""`python -m oneprune` (also installed as `oneprune-train`): one training run from
the command line.

One flag per `TrainConfig` setting, derived from its declaration (`oneprune.config`), plus
the schedule's (`--schedule`, `--sparsity` and its parameters), `--out` and `--quiet`. Bad
input gives one line on stderr and exit code 2, before any data is loaded or trained.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path
from typing import Any

from oneprune import _validate
from oneprune.allocation import SCOPE_NAMES, from_scope
from oneprune.config import TrainConfig
from oneprune.saving import save_pruned
from oneprune.schedules import FAMILIES, Schedule, schedule_from_dict, schedule_parameters
from oneprune.train import TrainResult, check_model, starting_weights, teacher_weights, train


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (no usage block) and exits 2: the
    parser of every command of the project (`python -m oneprune`, `search/run.py`,
    the benchmarks)."""

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
    p = OneLineParser(prog="oneprune-train" if console_script else "python -m oneprune",
                description="Train a ConvNet once while pruning it along a schedule.")
    groups = {key: p.add_argument_group(title) for key, title in GROUP_TITLES.items()}
    for name, spec in TrainConfig.settings().items():
        if name != "schedule":  # built from --schedule, --sparsity and its parameters
            _add_flags(groups[spec.metadata["group"]], name, spec)
    prune = groups["pruning"]
    prune.add_argument("--schedule", default="one_cycle",
                       help=f"one of {', '.join(FAMILIES)}, or none (dense)")
    prune.add_argument("--sparsity", type=float, default=0.9, help="final sparsity in [0, 1)")
    prune.add_argument("--scope", choices=tuple(SCOPE_NAMES),
                       help="the older name of --allocation: local is uniform, global global")
    for name, spec in schedule_parameters().items():
        prune.add_argument(f"--{name.replace('_', '-')}", type=spec.kind,
                           help=f"{spec.help} (families that have it)")
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
    if getattr(args, "scope", None) is not None:
        named = from_scope(args.scope)
        if values.setdefault("allocation", named) != named:
            raise ValueError(f"--scope {args.scope} names allocation {named!r}, but "
                             f"--allocation is {values['allocation']!r}")
    for name in values:  # KEY=VALUE pairs (`--model-arg`, `--allocation-arg`)
        if settings[name].default_factory is dict:
            values[name] = dict(values[name])
    for key, value in given.items():
        if "." in key:
            name, part = key.split(".")
            values.setdefault(name, settings[name].default_factory().to_dict())[part] = value
    return TrainConfig(schedule=_schedule(args), **values)


def _schedule(args: argparse.Namespace) -> Schedule | None:
    given = {name: getattr(args, name) for name in schedule_parameters()
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
    """`python -m oneprune`: bad input gives one line on stderr and exit code 2."""
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
        start = starting_weights(cfg)  # before the data: a wrong file is refused at once
        teacher = teacher_weights(cfg)
        data = cfg.load_data(progress=not args.quiet)
        check_model(cfg, data, initial=start, teacher=teacher)
    except ValueError as error:  # includes DataUnavailableError
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    result = train(cfg, data=data, progress=not args.quiet, initial=start, teacher=teacher)
    print(_summary(result))
    if args.out is not None:
        files = save_pruned(result, args.out)
        for name, path in files.items():
            print(f"{name}: {path} ({path.stat().st_size:,} bytes)")
    if not math.isfinite(result.history[-1]["train_loss"]):
        print("warning: the training loss is not finite (diverged)", file=sys.stderr)
    return 0
