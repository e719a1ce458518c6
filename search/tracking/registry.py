"""What a study hands over: its trained models, in MLflow.

Every final re-run (each family's best config with each final seed, and the dense
reference) ends by writing its pruned model to the storage path (`oneprune.saving`'s
files: the sparse weights, the config, the metrics). The driver, the only MLflow writer,
logs it as a logged model of the run (`log_final_model`): a `oneprune.deploy` module that
takes images in [0, 1] with the normalisation inside, with its zeroed filters removed for
filter pruning, in the `pt2` format (torch.export), so that loading it needs neither this
project, nor the user's model code, nor unpickling; with its signature, an input example,
its footprint as metrics, and the sparse weights, config and per-layer report as files.

When the verdict is written, each family's model is registered (`register_family`) as a
version of `<study>.<family>` (`quick.one_cycle`, `quick.dense`): the seed with the best
validation accuracy at the end of its run, so the test set plays no part in the choice.
The family the verdict ranks first carries the alias `best`.

Everything is found again before it is written (a run's READY logged model, a version of
the same run), so a resumed study never logs or registers a model twice.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.entities import LoggedModelStatus, Metric
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec

from oneprune._validate import first_line
from oneprune.deploy import INPUT, LAYERS_FILE, Deployable, save_layers
from oneprune.models import user_code_path
from oneprune.saving import CONFIG_FILE, METRICS_FILE, SPARSE_FILE, deployable_of, load_pruned
from search.plan.outcomes import FamilyOutcome
from search.plan.trials import DENSE

BEST = "best"
MODEL_METRICS = ("parameters", "parameter_bytes", "nonzero_weights", "macs_per_image",
                 "nonzero_macs_per_image")
# Loading a pickled model (the fallback below) needs this set: MLflow refuses pickles.
PICKLE_SWITCH = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true"


def registered_name(study: str, family: str) -> str:
    """The registered model of a study's family: `<study>.<family>`."""
    return f"{study}.{family}"


@dataclass(frozen=True)
class Handover:
    """A family's registered model: its URI and what the run that made it measured."""

    family: str
    uri: str
    seed: int
    val_acc: float
    test_acc: float
    sparsity: float
    nonzero_weights: int
    slim: bool


def _logged_models(client: MlflowClient, experiment_id: str, run_id: str) -> list:
    return list(client.search_logged_models([experiment_id],
                                            filter_string=f"source_run_id = '{run_id}'"))


def _ready_model(client: MlflowClient, experiment_id: str, run_id: str):
    return next((model for model in _logged_models(client, experiment_id, run_id)
                 if model.status == LoggedModelStatus.READY), None)


def logged_model_id(tracking_uri: str, run_id: str) -> str | None:
    """The id of the READY logged model of `run_id`, if it has one."""
    client = MlflowClient(tracking_uri)
    model = _ready_model(client, client.get_run(run_id).info.experiment_id, run_id)
    return None if model is None else model.model_id


def _signature(ready: Deployable, classes: int) -> ModelSignature:
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *ready.image_shape))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, classes))]))


def _code_paths(model_name: str) -> list[str]:
    """What a pickled model needs to unpickle: this library (its wrapper class) and the
    user's model code, if any."""
    import oneprune

    user_code = user_code_path(model_name)
    return [str(Path(oneprune.__file__).parent), *([user_code] if user_code else [])]


def log_final_model(tracking_uri: str, run_id: str, folder: str | os.PathLike, *,
                    name: str, example: np.ndarray, echo: Callable[[str], None] = print
                    ) -> str:
    """Log the model a final run saved in `folder` as a logged model of `run_id` (unless it
    has a READY one already), and return its id. `example`: a few test images in [0, 1]
    (the input example). Filter-pruned networks are logged slim when the removal is exact
    (else masked, with one line saying why); a network torch.export cannot export is
    logged in MLflow's pickle format with its code (one line says so too)."""
    done = logged_model_id(tracking_uri, run_id)
    if done is not None:
        return done
    client = MlflowClient(tracking_uri)
    experiment_id = client.get_run(run_id).info.experiment_id
    for stale in _logged_models(client, experiment_id, run_id):  # a driver killed mid-log
        client.delete_logged_model(stale.model_id)
    pruned = load_pruned(folder)
    train = pruned.config["train"]
    slim = train["granularity"] == "filter" and train["schedule"] is not None
    try:
        ready = deployable_of(pruned, slim=slim)
    except ValueError as error:
        echo(f"[{name}] {error}")
        ready = deployable_of(pruned, slim=False)
    classes = pruned.config["model"]["num_classes"]
    data = pruned.config["data"]
    metadata = {"input": INPUT, "mean": data["mean"], "std": data["std"],
                "image_size": data["image_size"], "channels": data["channels"],
                "classes": classes, "slim": ready.slim, "granularity": train["granularity"],
                "allocation": train["allocation"], "seed": train["seed"]}
    with tempfile.TemporaryDirectory() as scratch:
        layers = save_layers(ready, Path(scratch) / LAYERS_FILE)
        files = [str(Path(folder) / f) for f in (SPARSE_FILE, CONFIG_FILE, METRICS_FILE)]
        options = {"run_id": run_id, "signature": _signature(ready, classes),
                   "input_example": example, "metadata": metadata,
                   "extra_files": [*files, str(layers)], "step": train["epochs"],
                   "pip_requirements": [f"torch=={torch.__version__.split('+')[0]}"],
                   "validate_serving_input": False}
        params = client.get_run(run_id).data.params

        def new_model(serialization: str) -> str:
            """A logged model of the run in its experiment (the fluent API would put it
            in the active experiment)."""
            return client.create_logged_model(
                experiment_id, name=name, source_run_id=run_id, params=params,
                tags={"oneprune.slim": str(ready.slim), "oneprune.format": serialization},
                model_type="oneprune").model_id

        mlflow.set_tracking_uri(tracking_uri)
        model_id = new_model("pt2")
        try:
            info = mlflow.pytorch.log_model(ready.module, serialization_format="pt2",
                                            model_id=model_id, **options)
        except Exception as error:  # torch.export fails in many ways on a user's forward
            if not type(error).__module__.startswith("torch"):
                raise  # not torch.export's: MLflow's, the store's
            reason = first_line(error)
            echo(f"[{name}] torch.export cannot export {train['model']!r} ({reason}); "
                 f"logged in MLflow's pickle format with its code instead (loading it "
                 f"needs {PICKLE_SWITCH})")
            for failed in _logged_models(client, experiment_id, run_id):
                client.delete_logged_model(failed.model_id)
            # Without the input example: MLflow would validate it by unpickling the model,
            # which it refuses by default (and the flag below reaches torch.save).
            del options["input_example"], options["validate_serving_input"]
            info = mlflow.pytorch.log_model(ready.module, serialization_format="pickle",
                                            code_paths=_code_paths(train["model"]),
                                            model_id=new_model("pickle"), **options)
    stamp = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[
        Metric(key, float(ready.footprint[key]), stamp, train["epochs"],
               model_id=info.model_id) for key in MODEL_METRICS])
    return info.model_id


def choose_seed(seeds: Sequence[int], val_accs: Sequence[float]) -> int | None:
    """The seed whose final run ended with the best validation accuracy (ties: the lower
    seed); never the test accuracy."""
    ranked = [(-v, s) for s, v in zip(seeds, val_accs, strict=True) if math.isfinite(v)]
    return min(ranked)[1] if ranked else None


def register_family(tracking_uri: str, study: str, family: str, run_id: str, *,
                    description: str, tags: Mapping[str, str]) -> str:
    """Register the READY logged model of `run_id` as a version of `<study>.<family>`
    (once: a version of the same run is reused); returns the version."""
    client = MlflowClient(tracking_uri)
    name = registered_name(study, family)
    for version in client.search_model_versions(f"name = '{name}'"):
        if version.run_id == run_id:
            return version.version
    experiment_id = client.get_run(run_id).info.experiment_id
    model = _ready_model(client, experiment_id, run_id)
    if model is None:
        raise RuntimeError(f"run {run_id} of {name} has no logged model to register")
    with contextlib.suppress(mlflow.exceptions.MlflowException):  # already there
        client.create_registered_model(name, description=description)
    # The model's own location as the source: MLflow resolves a models:/ source through
    # the process's global tracking URI, not this client's.
    return client.create_model_version(name, model.artifact_location, run_id=run_id,
                                       tags=dict(tags), model_id=model.model_id).version


def mark_best(tracking_uri: str, study: str, versions: Mapping[str, str], best: str | None
              ) -> None:
    """Give `best` (a family) the alias `best` on its registered version and take it from
    every other family of the study: one `@best` per study."""
    client = MlflowClient(tracking_uri)
    for family, version in versions.items():
        name = registered_name(study, family)
        if family == best:
            client.set_registered_model_alias(name, BEST, version)
        else:
            with contextlib.suppress(mlflow.exceptions.MlflowException):
                client.delete_registered_model_alias(name, BEST)


def _mean_test_acc(outcome: FamilyOutcome) -> float:
    return sum(outcome.test_accs) / len(outcome.test_accs)


def hand_over(tracking_uri: str, study: str, outcomes: Sequence[FamilyOutcome],
              final_run: Callable[[str, int], str], title: str,
              echo: Callable[[str], None] = print,
              registered: Callable[[], None] = lambda: None,
              rank: Callable[[FamilyOutcome], Any] | None = None) -> list[Handover]:
    """Register each family's model (and dense's) of a study whose verdict is `outcomes`,
    from the final run `final_run(family, seed)` of the seed `choose_seed` picks, and put
    the alias `best` on the family the verdict ranks first (dense aside): by `rank`
    (largest first; default: the mean test accuracy). `registered()` is called after each
    family (the test-only faults' hook)."""
    ranked = [o for o in outcomes if o.family != DENSE and o.test_accs]
    best = max(ranked, key=rank or _mean_test_acc, default=None)
    client = MlflowClient(tracking_uri)
    versions, chosen = {}, []
    for outcome in outcomes:
        seed = choose_seed(outcome.seeds, outcome.val_accs)
        if seed is None:
            continue
        run_id = final_run(outcome.family, seed)
        model_id = logged_model_id(tracking_uri, run_id)
        if model_id is None:
            echo(f"[{study}] {outcome.family}: seed {seed}'s run has no logged model; "
                 f"nothing registered")
            continue
        model = client.get_logged_model(model_id)
        measured = {m.key: m.value for m in model.metrics or []}
        tags = {"oneprune.family": outcome.family, "oneprune.seed": str(seed),
                **{key: f"{measured[key]:.6g}" for key in ("test_acc", "val_acc", "sparsity")
                   if key in measured}}
        versions[outcome.family] = register_family(
            tracking_uri, study, outcome.family, run_id, tags=tags, description=(
                f"{title}. Family {outcome.family}: a version per study; its final run with "
                f"the best validation accuracy. {INPUT}; mlflow.pytorch.load_model(URI)."))
        chosen.append((outcome.family, seed, measured,
                       model.tags.get("oneprune.slim") == "True"))
        registered()
    mark_best(tracking_uri, study, versions, best.family if best else None)
    return [Handover(family, f"models:/{registered_name(study, family)}"
                             + (f"@{BEST}" if best and family == best.family
                                else f"/{versions[family]}"),
                     seed, measured.get("val_acc", math.nan),
                     measured.get("test_acc", math.nan), measured.get("sparsity", 0.0),
                     int(measured.get("nonzero_weights", 0)), slim)
            for family, seed, measured, slim in chosen]


def handover_lines(handovers: Sequence[Handover]) -> list[str]:
    """What the run prints of a study's registered models: the URI to load, and what the
    chosen final run measured."""
    if not handovers:
        return []
    width = max(len(h.uri) for h in handovers)
    lines = ["Models (MLflow registry; mlflow.pytorch.load_model(URI) needs only mlflow and "
             "torch):"]
    for h in handovers:
        lines.append(f"  {h.uri:<{width}}   {h.family}, seed {h.seed}: test acc "
                     f"{h.test_acc:.2%}, val acc {h.val_acc:.2%}, {h.sparsity:.2%} sparse, "
                     f"{h.nonzero_weights:,} non-zero weights{', slim' if h.slim else ''}")
    return lines
