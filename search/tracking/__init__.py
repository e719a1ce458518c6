"""MLflow, written by the driver only (sqlite takes one writer).

- `search.tracking.runs`: the MLflow structure of a study: tags, runs found by their tags,
  the store probe.
- `search.tracking.registry`: the models a study hands over: logged per final run,
  registered per family.
- `search.tracking.record`: each study's verdict written to MLflow: family runs, the
  comparison run, the models, the sweep.
- `search.tracking.retime`: a `cost: latency` study's final models, timed again together.
- `search.tracking.downloads`: models and weights read back from MLflow.
"""
