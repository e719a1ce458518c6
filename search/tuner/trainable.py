"""The Tune trainable: one `oneprune.train.train` run per trial, reported every epoch, with a
checkpoint every `checkpoint_every` epochs, so a trial that fails is retried from its last
checkpoint (Tune and Ray Train keep only the newest).

With one worker per trial the Tune function trains in its own process. With K > 1 it is
the driver of a Ray Train `TorchTrainer` of K workers (DDP: gloo on CPU, nccl on GPU)
whose rank 0 reports through `TuneReportCallback`; Ray Train restarts a failed worker
group from the last checkpoint, and a retried Tune trial finds its Train run (same name
and storage path) and continues it.

The dataset is loaded once by the driver and put in Ray's object store: single-process
trials receive the object (`tune.with_parameters` resolves it), Train workers fetch it by
reference. Each report carries the epoch's metrics, `train_seconds` (the training time so
far, from which the service sums its compute), `resumed_from` (the epoch of the checkpoint
this attempt started from; 0: none), and, space-separated in rank order, the Ray node of
every rank (`rank_nodes`) and, for a distributed trial, a digest of every rank's pruning
masks (`rank_masks`; a trial whose ranks disagree fails). A final run writes its trained
model to the storage path before its last report, for the driver to log
(`search.tracking.registry`).

A run that does not start from random weights reads them from the study's storage path
(`StudyFolders.starts`: the weights the study is given, or the dense reference's of the
same seed) on every rank, and every report carries their digest (`init_digest`; for a
distributed trial, every rank's, `rank_inits`); a run with a teacher reads its weights
from there too (`teacher_digest`, `rank_teachers`); the dense reference keeps its trained
weights there where an arm starts or distils from it, and the model as given is
evaluated, not trained.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
import torch.distributed as dist
from ray import tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from oneprune.config import TrainConfig
from oneprune.cost import SPARSITY, LatencySettings, measure_costs, saving
from oneprune.data import Batches, ImageData
from oneprune.distill import NO_TEACHER
from oneprune.distributed import gather, rank_and_world_size
from oneprune.pruning import Pruner
from oneprune.saving import save_pruned
from oneprune.starts import fit_weights, read_weights, weights_digest, write_weights
from oneprune.state import load_state, save_state
from oneprune.train import EVAL_BATCH_SIZE, TrainResult, evaluate, initial_model, train
from search.experiment.schema import DENSE_START, GIVEN, Experiment, Faults
from search.plan.outcomes import COST_SAVING
from search.plan.trials import AS_GIVEN, DENSE, FINAL, START, train_config
from search.tuner import storage
from search.tuner.faults import with_faults
from search.tuner.storage import StudyFolders

STATE_FILE = "state.pt"
TRAIN_MAX_FAILURES = 2  # worker-group restarts within one attempt of a distributed trial


def _mask_digest(state: Mapping[str, Any]) -> str:
    """SHA-256 of a training state's pruning masks ("" for a dense run)."""
    if state["pruner"] is None:
        return ""
    digest = hashlib.sha256()
    for mask in state["pruner"]["masks"].values():
        digest.update(mask.cpu().numpy().tobytes())
    return digest.hexdigest()


def _read_start(path: str | None) -> dict[str, torch.Tensor] | None:
    """The weights a run starts from, read from the storage path (None: scratch)."""
    if path is None:
        return None
    if not storage.exists(path):
        raise FileNotFoundError(f"the weights this run starts from are not at {path}: the "
                                f"run that makes them failed")
    with storage.local_copy(path) as local:
        return read_weights(local)


def _keep_weights(model: torch.nn.Module, path: str) -> None:
    """Store a trained model's weights at `path` for the runs that start from them."""
    with tempfile.TemporaryDirectory() as folder:
        storage.upload_file(write_weights(model.state_dict(), Path(folder) / "w.safetensors"),
                            path)


def _costs(result: TrainResult, cost: str, latency: LatencySettings | None
           ) -> dict[str, float]:
    """What a trained run's model costs deployed, next to dense (`measure_costs`, timed on
    this node where the cost is latency), and the share of `cost` it saved."""
    costs = measure_costs(copy.deepcopy(result.model).cpu(),
                          granularity=result.config.granularity, mean=result.mean,
                          std=result.std, image_size=result.image_size,
                          latency=latency if cost == "latency" else None)
    return {**costs, COST_SAVING: saving(cost, costs)}


def _epochs(cfg: TrainConfig, data: ImageData, *, start: Mapping[str, Any] | None,
            test: bool, every: int, faults: Faults | None,
            report: Callable[[dict, Path | None], None], model_path: str | None,
            initial_path: str | None, keep_path: str | None,
            teacher_path: str | None, cost: str = SPARSITY,
            latency: LatencySettings | None = None) -> None:
    """Train `cfg` from `start` (a saved state, or None) and the weights at `initial_path`
    (None: scratch), distilling from the teacher's at `teacher_path` (None: no teacher),
    calling `report(metrics, folder)` after every epoch on every rank, with a folder holding
    rank 0's checkpoint after every `every`-th epoch but the last (None otherwise, and on
    other ranks: a finished run needs none); every report carries the digest of the
    starting weights (`init_digest`) and of the teacher's (`teacher_digest`; for a
    distributed trial, every rank's: `rank_teachers`). With `test` (a final run), the last
    report comes after the test split and adds `test_acc` and `test_loss`, and rank 0 first
    writes the trained model to `model_path` (`save_pruned`'s files, which the driver logs to
    MLflow); with `keep_path`, rank 0 stores the trained weights there (the dense reference,
    for the runs that start from it). Under a `cost` other than sparsity, rank 0 measures
    the pruned model (`_costs`, timed as `latency` says) and its last report adds the
    costs. `faults`: this trial's test-only injected faults (None, always in a real study:
    none)."""
    node = ray.get_runtime_context().get_node_id()
    held: dict[str, Any] = {}
    measured = cost != SPARSITY and cfg.schedule is not None  # the dense reference: none
    initial, teacher = _read_start(initial_path), _read_start(teacher_path)
    init_digest = "" if initial is None else weights_digest(initial)
    teacher_digest = "" if teacher is None else weights_digest(teacher)

    def on_epoch(metrics: dict, state: dict) -> None:
        epoch = metrics["epoch"]
        metrics = {**metrics,
                   "train_seconds": sum(row["epoch_seconds"] for row in state["history"]),
                   "resumed_from": 0 if start is None else start["epoch"],
                   # strings, not lists: Tune's TensorBoard logger warns about lists
                   "rank_nodes": " ".join(gather(node)), "init_digest": init_digest,
                   "teacher_digest": teacher_digest}
        if dist.is_initialized():  # one rank has nothing to compare its masks with
            metrics["rank_inits"] = " ".join(gather(init_digest))  # what each rank loaded
            metrics["rank_teachers"] = " ".join(gather(teacher_digest))
            masks = gather(_mask_digest(state))
            if len(set(masks)) > 1:
                raise RuntimeError(f"the ranks' pruning masks differ after epoch {epoch}")
            metrics["rank_masks"] = " ".join(masks)
        last = epoch == cfg.epochs or metrics["diverged"]
        if last and (test or measured):
            held.update(metrics)  # reported with the test metrics or the costs
        elif last or epoch % every or (dist.is_initialized() and dist.get_rank() != 0):
            report(metrics, None)
        else:
            with tempfile.TemporaryDirectory() as folder:
                save_state(state, Path(folder) / STATE_FILE)
                report(metrics, Path(folder))

    if faults:
        on_epoch = with_faults(on_epoch, faults, resumed=start is not None)
    result = train(cfg, data=data, test=test, checkpoint=on_epoch, resume=start,
                   initial=initial, teacher=teacher)
    rank = rank_and_world_size()[0]
    if keep_path is not None and rank == 0:
        _keep_weights(result.model, keep_path)
    if measured and rank == 0 and not held.get("diverged"):
        held.update(_costs(result, cost, latency))
    if test:  # a final run: its model goes to the driver, before the last report
        if model_path is not None and rank == 0:
            with tempfile.TemporaryDirectory() as folder:
                save_pruned(result, folder, dense=False)
                storage.upload(folder, model_path)
        report({**held, "test_acc": result.test_acc, "test_loss": result.test_loss}, None)
    elif measured:
        report(held, None)


def _prepare_process() -> None:
    """One torch thread per CPU the process holds, so concurrent trials don't
    oversubscribe; and no log line per saved checkpoint (one per trial and epoch)."""
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    torch.set_num_threads(max(1, int(cpus)))
    for logger in ("ray.train._internal.storage", "ray.train.v2._internal.execution.storage"):
        logging.getLogger(logger).setLevel(logging.WARNING)


def _tune_report(metrics: dict, folder: Path | None) -> None:
    tune.report(metrics, checkpoint=None if folder is None
                else tune.Checkpoint.from_directory(folder))


def _train_report(metrics: dict, folder: Path | None) -> None:
    ray.train.report(metrics, checkpoint=None if folder is None
                     else ray.train.Checkpoint.from_directory(folder))


def _start_from(checkpoint: ray.train.Checkpoint | None) -> dict[str, Any] | None:
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return load_state(Path(folder) / STATE_FILE)


# The dataset: the object itself for a single-process trial; for a distributed one, its
# object-store reference in a 1-tuple (so that Tune passes it on unresolved).
TrialData = ImageData | tuple[ray.ObjectRef]


def _distributed_worker(config: Mapping[str, Any]) -> None:
    """One Ray Train worker: its rank of the DDP run `config` describes."""
    if torch.cuda.is_available():
        torch.cuda.set_device(ray.train.torch.get_device())
    _prepare_process()
    data = ray.get(config["data"][0])  # the reference rode in a tuple, unresolved
    _epochs(TrainConfig.from_dict(config["train"]), data,
            start=_start_from(ray.train.get_checkpoint()), test=config["test"],
            every=config["checkpoint_every"], faults=config["faults"],
            report=_train_report, model_path=config["model_path"],
            initial_path=config["initial_path"], keep_path=config["keep_path"],
            teacher_path=config["teacher_path"], cost=config["cost"],
            latency=config["latency"])


def _evaluate_as_given(cfg: TrainConfig, data: ImageData, initial_path: str) -> None:
    """The model a study is given, evaluated as it is (no training): one report with its
    validation and test accuracy at epoch 0, and the share of zeros in the layers the study
    prunes (its sparsity as given)."""
    initial = _read_start(initial_path)
    device = cfg.resolve_device()
    model = initial_model(cfg, data)
    fit_weights(model, initial, f"init {cfg.init!r}")
    model.to(device)
    loader = {"mean": data.mean, "std": data.std, "device": device}
    val_loss, val_acc = evaluate(model, Batches(data.val, EVAL_BATCH_SIZE, **loader))
    test_loss, test_acc = evaluate(model, Batches(data.test, EVAL_BATCH_SIZE, **loader))
    modules = dict(model.named_modules())
    weights = [modules[name].weight for name in Pruner.of(model, cfg.prune).layer_names]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    tune.report({"epoch": 0, "val_loss": val_loss, "val_acc": val_acc, "test_loss": test_loss,
                 "test_acc": test_acc, "sparsity": zeros, "train_seconds": 0.0,
                 "diverged": False, "init_digest": weights_digest(initial)})


def _weight_paths(experiment: Experiment, config: Mapping[str, Any], folders: StudyFolders,
                  ) -> tuple[str | None, str | None, str | None]:
    """Where a trial's starting weights are (None: scratch), where it keeps its trained
    weights for others (None: nowhere; the dense reference where arms start or distil
    from it), and where its teacher's weights are (None: no teacher)."""
    family = config["family"]
    # A confirmation run starts (and distils) from the search seed's dense run, as search
    # trials do: the dense reference has no run with its seed.
    seed = config["seed"] if config["part"] in (FINAL, START) else experiment.search.seed
    dense = folders.dense_weights(config["sparsity"], seed)
    start, teacher = experiment.start_of(family), experiment.teacher_of(family)
    initial = (folders.given_weights if start == GIVEN else
               dense if start == DENSE_START else None)
    keep = dense if family == DENSE and experiment.keeps_dense else None
    teacher_path = (None if teacher == NO_TEACHER else
                    dense if teacher == DENSE_START else folders.teacher_weights)
    return initial, keep, teacher_path


def run_trial(config: Mapping[str, Any], *, experiment: Experiment, data: TrialData,
              folders: StudyFolders) -> None:
    """A trial of the experiment's Tuner (`config` as `search.plan` describes it): in this
    process, or as a `TorchTrainer` of `resources.workers_per_trial` DDP workers whose Train
    runs live under `folders.train` (shared storage on a multi-node cluster: a restarted
    worker may land on another node). A final run's last report adds its test accuracy,
    and its trained model goes to `folders.models/<trial id>` first; a search trial never
    sees the test split. Weights a run starts from, or keeps for others, are under
    `folders.starts`; the model as given is only evaluated."""
    cfg = train_config(experiment, config)
    initial_path, keep_path, teacher_path = _weight_paths(experiment, config, folders)
    if config["family"] == AS_GIVEN:
        _prepare_process()
        _evaluate_as_given(cfg, data if isinstance(data, ImageData) else ray.get(data[0]),
                           initial_path)
        return
    test = config["part"] == FINAL
    model_path = storage.join(folders.models, tune.get_context().get_trial_id()) \
        if test else None
    faults = experiment.faults and experiment.faults.for_family(config["family"])
    resources = experiment.resources
    if resources.workers_per_trial == 1:
        _prepare_process()
        _epochs(cfg, data, start=_start_from(tune.get_checkpoint()), test=test,
                every=experiment.checkpoint_every, faults=faults, report=_tune_report,
                model_path=model_path, initial_path=initial_path, keep_path=keep_path,
                teacher_path=teacher_path, cost=experiment.cost, latency=experiment.latency)
        return
    trainer = TorchTrainer(
        _distributed_worker,
        train_loop_config={"train": cfg.to_dict(), "data": data, "test": test,
                           "checkpoint_every": experiment.checkpoint_every,
                           "faults": faults, "model_path": model_path,
                           "initial_path": initial_path, "keep_path": keep_path,
                           "teacher_path": teacher_path, "cost": experiment.cost,
                           "latency": experiment.latency},
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.workers_per_trial, use_gpu=resources.gpus_per_trial > 0,
            resources_per_worker={"CPU": resources.cpus_per_trial,
                                  "GPU": resources.gpus_per_trial}),
        run_config=ray.train.RunConfig(
            name=tune.get_context().get_trial_id(), storage_path=folders.train,
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=TRAIN_MAX_FAILURES),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1)))
    trainer.fit()
