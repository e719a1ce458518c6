"""cluster.yaml (AWS) and cluster-local.yaml (on-prem): checked offline with the Ray cluster
launcher's own steps, then for the properties that keep the cluster safe and usable.

`ray up` runs `prepare_config` (merge with the provider's defaults.yaml, per-node-type
min/max workers) and `validate_config` (Ray's JSON schema, head type, worker counts) before
it asks the cloud for anything; these tests run exactly those two, with no network. What
only the cloud can tell (AMI, instance types, quotas, IAM, the bucket) is not checked.
No Ray cluster is started.
"""

import copy
import re
import socket
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
AWS = ROOT / "cluster.yaml"
LOCAL = ROOT / "cluster-local.yaml"
FILES = [AWS, LOCAL]
COMMAND_LISTS = ("initialization_commands", "setup_commands", "head_setup_commands",
                 "worker_setup_commands", "head_start_ray_commands",
                 "worker_start_ray_commands")


def load(path):
    return yaml.safe_load(path.read_text())


def commands(config, *keys):
    return [cmd for key in (keys or COMMAND_LISTS) for cmd in config.get(key) or []]


def ray_up_checks(config):
    """What `ray up` does to a config before it contacts the provider."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the cluster-config tests must not use the network")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# -- Ray's own launcher validation -----------------------------------------------------------


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_ray_up_accepts_the_file(path):
    prepared = ray_up_checks(load(path))
    assert prepared["cluster_name"].startswith("oneprune")
    assert prepared["head_node_type"] in prepared["available_node_types"]
    # setup_commands are merged into both node roles, in order.
    setup = load(path)["setup_commands"]
    assert prepared["head_setup_commands"][:len(setup)] == setup
    assert prepared["worker_setup_commands"][:len(setup)] == setup


def test_aws_node_types_as_ray_sees_them():
    prepared = ray_up_checks(load(AWS))
    assert prepared["provider"]["type"] == "aws"
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0          # the driver's node runs no trial
    workers = [t for name, t in types.items() if name != prepared["head_node_type"]]
    assert len(workers) == 1
    assert prepared["available_node_types"][prepared["head_node_type"]]["max_workers"] == 0
    gpu = workers[0]
    assert gpu["resources"]["GPU"] == 1
    assert gpu["node_config"]["InstanceType"].startswith("g5.")
    assert gpu["min_workers"] == 0                        # autoscaled from zero
    assert len({t["node_config"]["ImageId"] for t in types.values()}) == 1   # one AMI
    assert 1 <= gpu["max_workers"] <= prepared["max_workers"]
    # One trial of the paper's grid (cpus_per_trial 4, gpus_per_trial 1) fits a worker.
    for experiment in (ROOT / "experiments" / "paper").glob("*.yaml"):
        needs = load(experiment)["resources"]
        assert needs["cpus_per_trial"] <= gpu["resources"]["CPU"], experiment.name
        assert needs["gpus_per_trial"] <= gpu["resources"]["GPU"], experiment.name


def test_local_provider_has_placeholder_machines():
    prepared = ray_up_checks(load(LOCAL))
    provider = prepared["provider"]
    assert provider["type"] == "local"
    assert provider["head_ip"] and provider["worker_ips"]
    assert provider["head_ip"] not in provider["worker_ips"]
    # One node type for head and workers; every listed worker is kept (min = max = count).
    (node_type,) = prepared["available_node_types"].values()
    assert node_type["min_workers"] == node_type["max_workers"] == len(provider["worker_ips"])


# A broken file must be refused by the same checks.
def _unknown_top_level_key(config):
    config["max_worker"] = 3                               # typo of max_workers


def _no_provider(config):
    del config["provider"]


def _unknown_node_type_field(config):
    config["available_node_types"]["worker.gpu"]["min_worker"] = 0


def _fractional_gpu_resource(config):
    config["available_node_types"]["worker.gpu"]["resources"]["GPU"] = 0.5


def _head_type_not_defined(config):
    config["head_node_type"] = "head.gpu"


def _min_workers_above_cap(config):
    config["available_node_types"]["worker.gpu"]["min_workers"] = config["max_workers"] + 1


@pytest.mark.parametrize("break_it, error", [
    (_unknown_top_level_key, jsonschema.ValidationError),
    (_no_provider, (jsonschema.ValidationError, KeyError)),
    (_unknown_node_type_field, jsonschema.ValidationError),
    (_fractional_gpu_resource, jsonschema.ValidationError),
    (_head_type_not_defined, ValueError),
    (_min_workers_above_cap, ValueError),
])
def test_ray_up_refuses_a_broken_config(break_it, error):
    config = load(AWS)
    ray_up_checks(config)                                  # fine as shipped
    break_it(config)
    with pytest.raises(error):
        ray_up_checks(config)


def test_schema_alone_refuses_a_config_without_provider():
    config = ray_up_checks(load(AWS))
    del config["provider"]
    with pytest.raises(jsonschema.ValidationError, match="provider"):
        validate_config(config)


# -- safety and consistency ------------------------------------------------------------------


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_dashboard_and_mlflow_listen_on_localhost_only(path):
    config = load(path)
    start = commands(config, "head_start_ray_commands")
    head_starts = [c for c in start if "ray start" in c and "--head" in c]
    assert len(head_starts) == 1
    assert "--dashboard-host=127.0.0.1" in head_starts[0]
    mlflow = [c for c in start if "mlflow server" in c]
    assert len(mlflow) == 1
    assert re.search(r"--host[ =]127\.0\.0\.1\b", mlflow[0])
    assert re.search(r"--port[ =]5000\b", mlflow[0])
    assert "nohup" in mlflow[0] and "&" in mlflow[0]        # in the background
    assert "sqlite:///$HOME/mlflow.db" in mlflow[0]
    for cmd in commands(config):
        assert "0.0.0.0" not in cmd, cmd


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_token_auth_on_every_node(path):
    config = load(path)
    # The token file made on the launching machine by `ray get-auth-token --generate`
    # goes to every node; the mode is set for every Ray process.
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("export RAY_AUTH_MODE=token" in c and ".bashrc" in c
               for c in config["initialization_commands"])
    starts = [c for c in commands(config, "head_start_ray_commands",
                                  "worker_start_ray_commands") if "ray start" in c]
    assert len(starts) == 2
    for cmd in starts:
        assert "RAY_AUTH_MODE=token ray start" in cmd


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_no_credentials_in_the_file(path):
    text = path.read_text()
    forbidden = [
        r"aws_access_key", r"aws_secret", r"secret_access_key", r"aws_session_token",
        r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",                  # AWS access key ids
        r"password", r"passwd",
        r"RAY_AUTH_TOKEN\s*[=:]",                          # a token value in the env
        r"-----BEGIN",                                     # inline private keys
        r"\b[0-9a-fA-F]{32,}\b",                           # hex secrets (Ray's: 64 hex)
        r"\b[A-Za-z0-9+/]{40}\b",                          # AWS secret key shape
    ]
    for pattern in forbidden:
        assert not re.search(pattern, text, flags=re.IGNORECASE), pattern
    auth = load(path).get("auth", {})
    assert set(auth) <= {"ssh_user", "ssh_private_key"}
    if "ssh_private_key" in auth:                          # a path to a key, not a key
        assert auth["ssh_private_key"].startswith(("~/", "/"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_project_is_synced_and_installed(path):
    config = load(path)
    assert config["file_mounts"]["~/oneprune"] == "."
    assert ".gitignore" in config["rsync_filter"]          # skips .venv, mlflow.db, mlruns
    setup = " && ".join(config["setup_commands"])
    assert "torch==2.14.1 torchvision==0.29.1" in setup
    assert f'"ray[default,tune]=={ray.__version__}"' in setup   # the Ray that checks it
    assert "pip install -q -e ~/oneprune" in setup
    assert setup.index("torch==") < setup.index("-e ~/oneprune")
    data = " ".join(config["head_setup_commands"])
    assert "load_dataset" in data and "download=True" in data
    for name in ("cifar10", "cifar100", "caltech101"):
        assert f"'{name}'" in data


def test_results_go_to_s3_placeholders_on_aws():
    text = AWS.read_text()
    storage = re.findall(r"--storage-path\s+(\S+)", text)
    assert storage and all(s.startswith("s3://YOUR-BUCKET/") for s in storage)
    mlflow = " ".join(commands(load(AWS), "head_start_ray_commands"))
    artifacts = re.search(r"--artifacts-destination\s+(\S+)", mlflow).group(1)
    assert artifacts.startswith("s3://YOUR-BUCKET/")


def test_results_go_to_shared_storage_on_prem():
    text = LOCAL.read_text()
    storage = re.findall(r"--storage-path\s+(\S+)", text)
    assert storage and all(s.startswith("/mnt/shared/") for s in storage)


def test_experiments_track_to_the_head_mlflow_server():
    for experiment in (ROOT / "experiments" / "paper").glob("*.yaml"):
        assert load(experiment)["tracking"]["tracking_uri"] == "http://127.0.0.1:5000"
