"""The MLflow mirror of a study's trials (`search.tuner.trial_logger.TrialLogger`) on a real sqlite
store: a run that a killed driver left half-written is completed, never duplicated."""

from mlflow.entities import Dataset, DatasetInput
from mlflow.tracking import MlflowClient
from ray.tune.experiment import Trial

from search.tracking.runs import ROLE, TRIAL_ID
from search.tuner.trial_logger import RunSpec, TrialLogger

PARAMS = {"lr_max": "0.01", "schedule.final_sparsity": "0.9"}
DATA = DatasetInput(Dataset(name="digits", digest="abc123", source_type="code",
                            source="{}"))


def test_a_run_created_before_the_driver_was_killed_gets_its_params_and_inputs(tmp_path):
    """The killed driver had created the trial's run (its identity tags) but not yet logged
    its params or dataset; the resumed driver's logger finds that run, fills both in, and
    creates no second run."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("tracking", str(tmp_path / "artifacts"))
    identity = {ROLE: "trial", TRIAL_ID: "t1"}
    half_written = client.create_run(experiment_id, tags=identity).info.run_id

    def describe(trial_id, config):
        return RunSpec(experiment_id, {ROLE: "trial", TRIAL_ID: trial_id}, f"trial {trial_id}",
                       params=PARAMS, inputs=(DATA,))

    for _ in range(2):  # the resumed driver, and a second resume: nothing changes
        logger = TrialLogger(uri, [(experiment_id, {ROLE: "trial"})], describe, epochs=1)
        logger.on_trial_start(0, [], Trial("stand_in", stub=True, trial_id="t1", config={}))
        logger.flush()
        (run,) = client.search_runs([experiment_id])
        assert run.info.run_id == half_written
        assert run.data.params == PARAMS
        assert [i.dataset.digest for i in run.inputs.dataset_inputs] == ["abc123"]
