"""The plan of a study, pure (no Ray, no MLflow): what each trial trains, and what the
finished trials add up to.

- `search.plan.trials`: the Tune trial configs (search, final, dense) and the `TrainConfig`
  each stands for (`train_config`, from `search.experiment.train_configs`).
- `search.plan.space`: the define-by-run space Optuna samples a trial from.
- `search.plan.outcomes`: `TrialRecord`, `select_best`, the `accuracy_floor` of a sparsity
  range, and `aggregate` into each family's `FamilyOutcome`.
- `search.plan.pareto`: points, fronts and hypervolumes of a sparsity range.
- `search.plan.stats`: the intervals of the verdict.
"""
