"""MLflow, written by the driver only (sqlite takes one writer).

- `search.tracking.runs`: the MLflow structure of a study: tags, runs found by their tags,
  the store probe.
- `search.tracking.registry`: the models a study hands over: logged per final run,
  registered per family.
- `search.tracking.record`: each study's verdict written to MLflow: family runs, the
  comparison run, the models, the sweep.
"""
