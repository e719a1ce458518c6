"""The experiment schema, pure (no Ray, no MLflow): what a study is and every key of its file.

- `search.experiment.schema`: `Experiment` and its parts (`SparsityRange`, `SearchSettings`,
  `Resources`, `Faults`), `ConfigError`.
- `search.experiment.keys`: every key an experiment file accepts, declared once (`SECTIONS`).
- `search.experiment.train_configs`: the `TrainConfig` a run of the study trains
  (`base_config`, `trial_config`).
- `search.experiment.neutral_asha`: when early stopping is neutral to when a schedule prunes.
- `search.experiment.loading`: `load_experiment` / `parse_experiment`, checked so that a file
  that loads can run.
"""
