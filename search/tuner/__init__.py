"""The Ray Tune machinery of a study: one Tuner per experiment.

- `search.tuner.study`: `run_experiment`, start -> fit -> verdict, resume, checkpoints.
- `search.tuner.searcher`: `ExperimentSearcher`, the Optuna studies and what a free slot runs.
- `search.tuner.scheduler`: `GroupScheduler`, ASHA per (sparsity, family).
- `search.tuner.trainable`: the Tune trainable (Ray Train's `TorchTrainer` for K workers).
- `search.tuner.trial_logger`: each Tune trial mirrored into its MLflow run (a Tune callback).
- `search.tuner.progress`: the console lines of a running study.
- `search.tuner.storage`: the storage path (a folder or s3://...).
- `search.tuner.faults`: test-only fault injection.
"""
