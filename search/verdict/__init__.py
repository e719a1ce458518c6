"""The verdict of a study, rendered (no Ray, no MLflow): tables, CSV files and figures.

- `search.verdict.columns`: a verdict column, declared once, and the columns both tables
  share; the Markdown, CSV and printed tables are loops over a list of them.
- `search.verdict.fixed`: the comparison at one sparsity: test accuracy per family and the
  difference to One-Cycle, paired by seed; the sweep over sparsities.
- `search.verdict.sparsity_range`: the verdict of a sparsity range: how sparse within the
  drop, the fronts (pareto.csv / .png).
- `search.verdict.sweep`: accuracy against sparsity over an experiment's studies.
- `search.verdict.importance`: fANOVA importance of each searched parameter.
"""
