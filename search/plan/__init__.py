"""The plan of a study, pure (no Ray, no MLflow): what each trial trains, and what the
finished trials add up to.

- `search.plan.trials`: the Tune trial configs (search, final, dense) and the `TrainConfig`
  each stands for (`train_config`), from the family's `base_config` and the sampled params.
- `search.plan.outcomes`: `TrialRecord`, `select_best`, the `accuracy_floor` of a sparsity
  range, and `aggregate` into each family's `FamilyOutcome`.
- `search.plan.pareto`: points, fronts and hypervolumes of a sparsity range.
"""
