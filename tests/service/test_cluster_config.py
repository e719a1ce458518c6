"""cluster.yaml (AWS) and cluster-local.yaml (on-prem): checked offline with the Ray cluster
launcher's own steps, then for the properties that keep the cluster safe and usable.

`ray up` runs `prepare_config` (merge with the provider's defaults.yaml, per-node-type
min/max workers) and `validate_config` (Ray's JSON schema, head type, worker counts) before
it asks the cloud for anything; these tests run exactly those two, with no network. What
only the cloud can tell (AMI, instance types, quotas, IAM, the bucket) is not checked.
No Ray cluster is started: the head's MLflow start and stop commands run in bash, the way
Ray's SSH runner runs them, in a scratch HOME with fake ray, pip and mlflow executables.
"""

import base64
import copy
import getpass
import hashlib
import inspect
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private import commands as launcher_commands
from ray.autoscaler._private.command_runner import _with_interactive
from ray.autoscaler._private.local.node_provider import LocalNodeProvider
from ray.autoscaler._private.util import prepare_config, validate_config
from testkit import ROOT

from oneprune.data import DATASETS, DEFAULT_DATA_DIR

AWS = ROOT / "cluster.yaml"
LOCAL = ROOT / "cluster-local.yaml"
FILES = [AWS, LOCAL]
COMMAND_LISTS = ("initialization_commands", "setup_commands", "head_setup_commands",
                 "worker_setup_commands", "head_start_ray_commands",
                 "worker_start_ray_commands")


def load(path):
    return yaml.safe_load(path.read_text())


def header(path):
    """The file's leading comment block (its documentation), without the `# `."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[2:])
    return "\n".join(lines)


def paper_experiments():
    found = sorted((ROOT / "experiments" / "paper").glob("*.yaml"))
    assert found, "no experiments/paper/*.yaml: the checks on them would pass vacuously"
    return found


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
    for experiment in paper_experiments():
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
    assert 'pip install -q -e "$HOME/oneprune[timm]"' in setup   # timm: model: timm:<name>
    assert setup.index("torch==") < setup.index('-e "$HOME/oneprune')


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
    for experiment in paper_experiments():
        assert load(experiment)["tracking"]["tracking_uri"] == "http://127.0.0.1:5000"


# -- network needs: `ray up` must work on a head without internet ------------------------------


DOWNLOADS = re.compile(r"download\s*=\s*True|--download\b|load_dataset|oneprune\.data|"
                       r"\bwget\b|curl\s+(?:-\S+\s+)*https?://(?!127\.0\.0\.1)")


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_ray_up_downloads_no_dataset(path):
    # Nothing of the kind in any command: a dataset is fetched by the study that uses it
    # (download: true in its experiment file), or in advance with the header's command.
    for cmd in commands(load(path)):
        assert not DOWNLOADS.search(cmd), cmd
    # The data folder is made, so `ray rsync-up` into it works on a fresh head.
    setup = commands(load(path), "head_setup_commands")
    data_dir = str(DEFAULT_DATA_DIR)
    assert f"mkdir -p {data_dir}" in setup


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_header_documents_the_dataset_commands(path):
    text = header(path)
    data_dir = str(DEFAULT_DATA_DIR)
    # Pre-download on the head: one `ray exec` that runs on the head's venv Python.
    (line,) = [ln.strip() for ln in text.splitlines()
               if ln.strip().startswith(f"ray exec {path.name} ") and "download=True" in ln]
    argv = shlex.split(line)                               # as your shell passes it
    assert argv[:3] == ["ray", "exec", path.name] and len(argv) == 4
    remote = shlex.split(argv[3])                          # as the head's bash runs it
    assert remote[:2] == ["python", "-c"]
    snippet, dataset = remote[2], remote[3]
    compile(snippet, "<header>", "exec")
    assert "load_dataset(sys.argv[1], download=True)" in snippet
    assert dataset in DATASETS and dataset != "digits"
    for name in DATASETS:                                  # the names it lists
        assert name == "digits" or name in text
    # Air-gapped head: copy a filled cache into the default data_dir.
    assert f"ray rsync-up {path.name} {data_dir}/ {data_dir}/" in text


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_header_says_where_pip_installs_from(path):
    setup = " ".join(commands(load(path), "setup_commands", "head_setup_commands"))
    assert "pip install" in setup and "--index-url" not in setup   # so: PyPI by default
    text = " ".join(header(path).split())
    assert "PyPI" in text
    assert "export PIP_INDEX_URL=" in text                 # a mirror
    assert "PIP_NO_INDEX=1" in text and "PIP_FIND_LINKS=" in text   # or a wheelhouse
    assert "~/.bashrc" in text and "pip.conf" in text


def test_studies_download_their_own_dataset():
    # The headers promise that a study fetches its dataset itself; the paper's do.
    for experiment in paper_experiments():
        config = load(experiment)
        if config["dataset"] != "digits":
            assert config.get("download") is True, experiment.name


# -- MLflow: one server, stopped with the cluster --------------------------------------------


def mlflow_start(config):
    (cmd,) = [c for c in commands(config, "head_start_ray_commands") if "mlflow server" in c]
    return cmd


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_mlflow_server_writes_a_pid_file_and_starts_once(path):
    config = load(path)
    start = mlflow_start(config)
    # Its own process group (setsid), whose id is the pid in ~/mlflow.pid (exec keeps it).
    assert re.search(r"setsid bash -c 'echo \$\$ > ~/mlflow\.pid; exec mlflow server ", start)
    # Not started when one answers on the port or the pid file's server is alive.
    guard, launch = start.split("|| {")
    assert "curl -sf http://127.0.0.1:5000/health" in guard
    assert 'ps -ww -p "$(cat ~/mlflow.pid 2>/dev/null)" -o args=' in guard
    assert 'grep -q "mlflow server"' in guard
    assert "mlflow server" in launch and "&" in launch


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_ray_stop_on_the_head_stops_mlflow(path):
    config = load(path)
    setup = commands(config, "head_setup_commands")
    (hooks,) = [c for c in setup if c.endswith("> ~/.oneprune_head.sh")]
    assert "'ray() { if [ \"$1\" = stop ]; then oneprune_stop_mlflow; fi; command ray \"$@\"; }'" \
        in hooks
    assert 'kill -- -"$pid"' in hooks and "rm -f ~/mlflow.pid" in hooks
    sourced = "source ~/.oneprune_head.sh"                # once, after the file is written
    hook = f"grep -qxF '{sourced}' ~/.bashrc || echo '{sourced}' >> ~/.bashrc"
    assert hook in setup and setup.index(hook) > setup.index(hooks)
    # `ray up` restarts Ray through the function, then starts MLflow.
    start = commands(config, "head_start_ray_commands")
    assert start[0] == "ray stop" and "mlflow server" in start[-1]
    # The one command that stops it by hand.
    assert f"ray exec {path.name} 'kill -- -$(cat ~/mlflow.pid) && rm ~/mlflow.pid'" \
        in header(path)


def test_ray_down_runs_ray_stop_on_the_head_in_a_bashrc_shell():
    # What the function above relies on, read from the installed Ray: `ray down` execs
    # "ray stop" on the head (the only command it runs there), through the SSH runner's
    # login shell, which sources ~/.bashrc first; a local provider's terminate_node only
    # records the node as terminated (nothing runs on it).
    teardown = inspect.getsource(launcher_commands.teardown_cluster)
    assert re.findall(r'\bcmd="([^"]*)"', teardown) == ["ray stop"]
    assert "source ~/.bashrc;" in " ".join(_with_interactive("ray stop"))
    terminate = inspect.getsource(LocalNodeProvider.terminate_node)
    for runs_something in ("cmd_runner", "subprocess", "ssh", ".run("):
        assert runs_something not in terminate


FAKE_MLFLOW = """#!/bin/bash
sleep 300 &                                                # a worker, as uvicorn has
trap 'exit 0' TERM
wait
"""


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
@pytest.mark.slow
def test_head_commands_start_one_mlflow_and_ray_down_stops_it(path, tmp_path):
    """Runs the head's setup and start commands, then `ray down`'s `ray stop`, each the way
    Ray's SSH runner runs them (bash --login -i, ~/.bashrc first), in a scratch HOME whose
    ~/.bashrc puts fakes of ray, pip, python, curl (nothing answers on :5000) and mlflow
    first."""
    for tool in ("bash", "setsid", "nohup", "ps", "grep", "seq"):
        if not shutil.which(tool, path="/usr/bin:/bin"):
            pytest.skip(f"{tool} not found")
    config = load(path)
    for cmd in commands(config):                           # runs nothing that downloads
        assert not DOWNLOADS.search(cmd), cmd
    system_path = "/usr/bin:/bin"
    assert not shutil.which("ray", path=system_path)       # only the fake ray can run
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "mlflow").write_text(FAKE_MLFLOW)
    (fake / "ray").write_text('#!/bin/bash\necho "ray $*" >> "$HOME/ray.calls"\n')
    for tool in ("pip", "python", "python3"):
        (fake / tool).write_text("#!/bin/bash\n")
    (fake / "curl").write_text("#!/bin/bash\nexit 7\n")
    for tool in ("sudo", "apt-get", "tmux"):               # nothing installs for real
        (fake / tool).write_text(f'#!/bin/bash\necho "{tool} $*" >> "$HOME/apt.calls"\n')
    for tool in fake.iterdir():
        tool.chmod(0o755)
    (tmp_path / ".bashrc").write_text(f'export PATH="{fake}:$PATH"\n')
    env = {"HOME": str(tmp_path), "PATH": system_path, "TERM": "dumb"}
    pid_file = tmp_path / "mlflow.pid"
    groups = set()

    def on_head(cmd):
        line = " ".join(_with_interactive(cmd))            # what ssh hands the head's shell
        subprocess.run(["bash", "-c", line], env=env, cwd=tmp_path, timeout=60,
                       stdin=subprocess.DEVNULL, capture_output=True, check=False,
                       start_new_session=True)             # as over ssh: not our group

    def servers():
        listing = subprocess.run(["ps", "-ww", "-eo", "pid=,pgid=,args="], capture_output=True,
                                 text=True, check=True).stdout
        found = [int(line.split()[1]) for line in listing.splitlines()
                 if f"{fake}/mlflow server" in line]
        groups.update(found)                               # all killed at the end
        return found

    def wait_for(condition):
        for _ in range(200):
            if condition():
                return
            time.sleep(0.05)

    def ray_up():
        for cmd in commands(config, "head_setup_commands", "head_start_ray_commands"):
            on_head(cmd)
        wait_for(lambda: pid_file.is_file() and servers())  # pid written, then exec
        if pid_file.is_file() and pid_file.read_text().strip().isdigit():
            groups.add(int(pid_file.read_text()))

    try:
        ray_up()
        (first,) = servers()
        assert int(pid_file.read_text()) == first          # pid = process group id
        ray_up()                                           # again: one server, a fresh one
        (second,) = servers()
        assert second != first
        on_head(mlflow_start(config))                      # the start alone: no second one
        assert servers() == [second]
        assert (tmp_path / ".bashrc").read_text().count("source ~/.oneprune_head.sh") == 1
        on_head("ray stop")                                # what `ray down` runs
        wait_for(lambda: not servers())
        assert servers() == [] and not pid_file.exists()
        with pytest.raises(ProcessLookupError):            # its worker went too
            os.killpg(second, 0)
        calls = (tmp_path / "ray.calls").read_text().splitlines()
        assert calls.count("ray stop") == 3 and calls[-1] == "ray stop"
        on_head("ray stop")                                # no server, no pid file: fine
    finally:
        for group in groups - {os.getpgrp()}:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_a_node_without_a_gpu_installs_pytorchs_cpu_wheels(path, tmp_path):
    """The torch install line, run in bash with a fake pip that records its arguments: a node
    where `nvidia-smi -L` fails (none here) adds PyTorch's CPU index (or the mirror
    ONEPRUNE_TORCH_CPU_INDEX names); a GPU node installs from PyPI alone."""
    (line,) = [cmd for cmd in commands(load(path), "setup_commands") if "torch==" in cmd]
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "pip").write_text(f'#!/bin/bash\necho "$*" > {tmp_path}/pip.args\n')
    (fake / "pip").chmod(0o755)

    def pip_args(gpu, **env):
        (fake / "nvidia-smi").unlink(missing_ok=True)
        if gpu:
            (fake / "nvidia-smi").write_text("#!/bin/bash\necho 'GPU 0: H100'\n")
            (fake / "nvidia-smi").chmod(0o755)
        subprocess.run(["bash", "-c", line], check=True, timeout=30,
                       env={"PATH": f"{fake}:/usr/bin:/bin", **env})
        return (tmp_path / "pip.args").read_text().split()

    cpu = pip_args(gpu=False)
    assert cpu[cpu.index("--extra-index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    assert "torch==2.14.1" in cpu
    mirror = pip_args(gpu=False, ONEPRUNE_TORCH_CPU_INDEX="https://mirror/torch-cpu/simple")
    assert mirror[mirror.index("--extra-index-url") + 1] == "https://mirror/torch-cpu/simple"
    assert "--extra-index-url" not in pip_args(gpu=True)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("hard", ["1024", "20000", "65536", "1048576", "unlimited"])
def test_the_open_file_limit_rises_to_65536_or_the_hard_limit(path, hard):
    """Each start command's `ulimit` prefix, in bash, where `ulimit` answers `hard` for the
    hard limit (an ordinary SSH user's is often below 65536) and records the soft limit
    asked for: min(hard, 65536), and never more than the hard limit allows. The real
    builtin then sets this machine's own limit the same way, without an error."""
    config = load(path)
    starts = commands(config, "head_start_ray_commands", "worker_start_ray_commands")
    prefixes = {cmd.split("RAY_AUTH_MODE=token ray start")[0] for cmd in starts
                if "ray start" in cmd}
    assert len(prefixes) == 1 and "ulimit" in next(iter(prefixes))
    prefix = next(iter(prefixes))
    fake = (f'ulimit() {{ if [ "$1" = -Hn ]; then echo {hard}; else echo "soft $2"; fi; }}; ')
    done = subprocess.run(["bash", "-c", fake + prefix], capture_output=True, text=True,
                          timeout=30)
    assert done.stderr == "" and done.returncode == 0
    expected = 65536 if hard == "unlimited" else min(int(hard), 65536)
    assert done.stdout.split() == ["soft", str(expected)]
    real = subprocess.run(["bash", "-c", prefix + "ulimit -Hn; ulimit -n"],
                          capture_output=True, text=True, timeout=30)
    assert real.stderr == "" and real.returncode == 0
    limit, soft = real.stdout.split()
    assert soft == str(65536 if limit == "unlimited" else min(int(limit), 65536))


# -- the torch check: a node without a GPU must have got the +cpu build -----------------------


def torch_lines(config):
    """The torch install line and the check right after it."""
    setup = commands(config, "setup_commands")
    (install,) = [cmd for cmd in setup if "torch==" in cmd]
    (check,) = [cmd for cmd in setup if "ONEPRUNE_ALLOW_CUDA_TORCH" in cmd]
    assert setup.index(check) == setup.index(install) + 1  # before Ray and the project
    return install, check


def default_cpu_index(install):
    return re.search(r"\$\{ONEPRUNE_TORCH_CPU_INDEX:-([^}]+)\}", install).group(1)


def test_both_files_install_and_check_torch_alike():
    assert torch_lines(load(AWS)) == torch_lines(load(LOCAL))


def run_on_node(cmd, home, path):
    """`cmd` as Ray's SSH runner runs it (bash --login -i, ~/.bashrc first)."""
    line = " ".join(_with_interactive(cmd))
    return subprocess.run(["bash", "-c", line], env={"HOME": str(home), "PATH": path,
                                                     "TERM": "dumb"},
                          cwd=home, timeout=60, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, start_new_session=True)


@pytest.mark.parametrize("gpu, version, allow, stops", [
    (False, "2.14.1+cpu", None, False),
    (False, "2.14.1", None, True),                          # PyPI's CUDA build
    (False, "2.14.1+cu130", None, True),                    # PyTorch's CUDA index
    (False, None, None, True),                              # no torch at all
    (False, "2.14.1", "1", False),                          # the user said CUDA is fine
    (False, "2.14.1", "0", True),
    (False, "2.14.1", "yes", True),                         # only 1 says so
    (True, "2.14.1", None, False),                          # a GPU node wants CUDA torch
])
def test_a_torch_without_cpu_stops_ray_up_on_a_node_without_a_gpu(tmp_path, gpu, version,
                                                                  allow, stops):
    """The check line, run as Ray runs it, in a scratch HOME whose ~/.bashrc puts a fake
    `pip` (`pip show torch` answers `version`) and, on a GPU node, a fake `nvidia-smi` first.
    Ray's updater stops `ray up` on a setup command's non-zero status."""
    install, check = torch_lines(load(LOCAL))
    fake = tmp_path / "bin"
    fake.mkdir()
    shown = f'echo "Name: torch"; echo "Version: {version}"' if version else "exit 1"
    (fake / "pip").write_text(f'#!/bin/bash\n[ "$1 $2" = "show torch" ] && {{ {shown}; }}\n'
                              'exit 0\n')
    (fake / "nvidia-smi").write_text("#!/bin/bash\necho 'GPU 0: NVIDIA A10G'\n" if gpu else
                                     "#!/bin/bash\necho 'No devices were found'; exit 6\n")
    for tool in fake.iterdir():
        tool.chmod(0o755)
    bashrc = f'export PATH="{fake}:$PATH"\n'
    if allow is not None:
        bashrc += f"export ONEPRUNE_ALLOW_CUDA_TORCH={allow}\n"
    (tmp_path / ".bashrc").write_text(bashrc)
    done = run_on_node(check, tmp_path, "/usr/bin:/bin")
    said = [ln for ln in (done.stdout + done.stderr).splitlines() if "oneprune" in ln]
    if not stops:
        assert done.returncode == 0 and said == [], done.stderr
        return
    assert done.returncode != 0
    (line,) = said                                           # one line, on stderr
    assert line in done.stderr and line.startswith("oneprune: ")
    for needed in ("ONEPRUNE_TORCH_CPU_INDEX=", default_cpu_index(install), "2.14.1+cpu",
                   "~/.bashrc", "rm -rf ~/venv", "ONEPRUNE_ALLOW_CUDA_TORCH=1"):
        assert needed in line, needed


def make_wheel(folder, name, version):
    """A minimal pure-Python wheel (enough for pip to install and `pip show`)."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": f"__version__ = {version!r}\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n"}
    record = []
    for path, text in files.items():
        digest = hashlib.sha256(text.encode()).digest()
        record.append(f"{path},sha256={base64.urlsafe_b64encode(digest).rstrip(b'=').decode()}"
                      f",{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as wheel:
        for path, text in files.items():
            wheel.writestr(path, text)
        wheel.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")


@pytest.mark.slow
def test_the_real_pip_takes_cpu_wheels_from_a_wheelhouse_not_from_a_folder_index(tmp_path):
    """The install line and the check, with the real pip in a fresh venv, on wheels made
    here (no network: pip's config files are off, its index is a file:// URL that lists
    nothing, and a proxy that does not exist would catch any http request). A wheelhouse
    (PIP_NO_INDEX, PIP_FIND_LINKS) that holds both builds gives +cpu and passes the check;
    a folder in ONEPRUNE_TORCH_CPU_INDEX is passed over, pip takes the plain (CUDA) build
    from the other source, and the check stops."""
    install, check = torch_lines(load(LOCAL))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    no_gpu = tmp_path / "no-gpu"                           # whatever this machine has
    no_gpu.mkdir()
    (no_gpu / "nvidia-smi").write_text("#!/bin/bash\nexit 6\n")
    (no_gpu / "nvidia-smi").chmod(0o755)
    plain, cpu, wheelhouse = tmp_path / "plain", tmp_path / "cpu", tmp_path / "wheelhouse"
    for folder, suffix in ((plain, ""), (cpu, "+cpu"), (wheelhouse, ""), (wheelhouse, "+cpu")):
        make_wheel(folder, "torch", f"2.14.1{suffix}")
        make_wheel(folder, "torchvision", f"0.29.1{suffix}")
    base = {"HOME": str(tmp_path), "PATH": f"{venv}/bin:{no_gpu}:/usr/bin:/bin",
            "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_RETRIES": "0", "PIP_TIMEOUT": "5", "http_proxy": "http://127.0.0.1:9",
            "https_proxy": "http://127.0.0.1:9", "PIP_INDEX_URL": f"file://{tmp_path}/none"}

    def on_cpu_node(**env):
        subprocess.run([f"{venv}/bin/pip", "uninstall", "-q", "-y", "torch", "torchvision"],
                       env={**base}, capture_output=True, timeout=120)
        installed = subprocess.run(["bash", "-c", install], env={**base, **env}, timeout=300,
                                   capture_output=True, text=True)
        assert installed.returncode == 0, installed.stderr
        shown = subprocess.run([f"{venv}/bin/pip", "show", "torch", "torchvision"],
                               env=base, capture_output=True, text=True, timeout=120).stdout
        checked = subprocess.run(["bash", "-c", check], env={**base, **env}, timeout=120,
                                 capture_output=True, text=True)
        return re.findall(r"^Version: (\S+)$", shown, flags=re.M), checked

    versions, checked = on_cpu_node(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheelhouse))
    assert versions == ["2.14.1+cpu", "0.29.1+cpu"]
    assert checked.returncode == 0 and checked.stderr == ""
    versions, checked = on_cpu_node(PIP_FIND_LINKS=str(plain), ONEPRUNE_TORCH_CPU_INDEX=str(cpu))
    assert versions == ["2.14.1", "0.29.1"]
    assert checked.returncode != 0 and checked.stderr.startswith("oneprune: ")


# -- what listens where: the metrics ports the header's firewall rule closes ------------------


def metrics_export_ports(config):
    starts = [c for c in commands(config, "head_start_ray_commands",
                                  "worker_start_ray_commands") if "ray start" in c]
    return {int(m) for c in starts for m in re.findall(r"--metrics-export-port=(\d+)", c)}, \
        starts


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_metrics_port_is_fixed_and_named_in_the_header(path):
    """Ray 2.60's three Prometheus endpoints answer without the token (measured; see the
    guide): the agent's on --metrics-export-port (random unless set: every node must set
    the same), the dashboard's and the autoscaler's on Ray's constants. The header names
    each one, and the on-prem header's firewall rule drops exactly these."""
    from ray.autoscaler._private.constants import AUTOSCALER_METRIC_PORT
    from ray.dashboard.consts import DASHBOARD_METRIC_PORT

    ports, starts = metrics_export_ports(load(path))
    assert len(ports) == 1 and len(starts) == 2
    assert all("--metrics-export-port=" in c for c in starts)
    expected = ports | {AUTOSCALER_METRIC_PORT, DASHBOARD_METRIC_PORT}
    text = " ".join(header(path).split())
    for port in expected:
        assert re.search(rf"\b{port}\b", text), port
    assert "answer" in text and "without a token" in text
    if path == LOCAL:
        (rule,) = [ln.strip() for ln in header(path).splitlines() if "nft add rule" in ln]
        dropped = re.search(r"tcp dport '\{ ([\d, ]+) \}' drop", rule).group(1)
        assert {int(p) for p in dropped.split(",")} == expected
        assert "iif != lo" in rule                         # the node itself still reads them
        assert "sudo nft delete table inet oneprune" in text


def test_the_metrics_servers_bind_all_interfaces_in_this_ray():
    """What the headers say Ray cannot be told otherwise: each of the three metrics servers
    binds 127.0.0.1 only when the node's address is a loopback one, and `ray start` turns
    a loopback --node-ip-address into the machine's address."""
    from ray._private import services
    from ray.autoscaler.v2 import monitor as monitor_v2
    from ray.dashboard import head
    from ray.dashboard.modules.reporter import reporter_agent

    for module in (head, monitor_v2):                       # the dashboard, the autoscaler
        assert '{"addr": get_localhost_ip()} if is_localhost(' in inspect.getsource(module)
    assert 'address=get_localhost_ip() if is_localhost(self._ip) else ""' in \
        inspect.getsource(reporter_agent)
    assert services.resolve_ip_for_localhost("127.0.0.1") != "127.0.0.1"


# -- what `ray down` leaves, and the command that removes it ----------------------------------


def leftovers_block():
    text = header(LOCAL)
    return text[text.index("What `ray down` leaves"):text.index("After `ray down`")]


PATHS = re.compile(r"(?:~|/tmp|/dev/shm)/[\w.\-/*$]*[\w*$]")


def removal_loop():
    (line,) = [ln.strip() for ln in header(LOCAL).splitlines()
               if ln.strip().startswith("for host in ") and " ssh " in ln]
    argv = shlex.split(line)                              # as your shell passes it
    ssh = argv.index("ssh")
    assert argv[ssh + 1:ssh + 3] == ["-i", load(LOCAL)["auth"]["ssh_private_key"]]
    assert argv[ssh + 3] == f"{load(LOCAL)['auth']['ssh_user']}@$host"
    assert argv[:3] == ["for", "host", "in"] and argv[ssh - 1] == "do"
    assert argv[ssh + 4].endswith(";") and argv[ssh + 5:] == ["done"]   # '...'; done
    return [h.rstrip(";") for h in argv[3:ssh - 1]], argv[ssh + 4][:-1]


def removed_paths(remote):
    rm = remote[remote.index("rm -rf ") + len("rm -rf "):remote.index(";")].split()
    found = re.search(r"find (/tmp/ray) -mindepth 1 -maxdepth 1 -user \"\$USER\" "
                      r"-exec rm -rf \{\} \+", remote)
    edited = re.findall(r" (~/\.bashrc)$", remote)
    return set(rm) | {found.group(1)} | set(edited)


def test_the_removal_command_removes_what_the_header_lists():
    listed = set(PATHS.findall(leftovers_block()))
    assert {"~/venv", "~/.ray", "/tmp/ray", "~/run.py", "~/.config/mlflow"} <= listed
    hosts, remote = removal_loop()
    assert removed_paths(remote) == listed
    config = load(LOCAL)
    assert hosts == [config["provider"]["head_ip"], *config["provider"]["worker_ips"]]
    # Every file the YAML's commands and file_mounts put in ~ is on the list (or stays on
    # purpose: the data folder), so a new one cannot be forgotten here.
    written = set()
    for cmd in commands(config):
        written |= {f"~/{m}" for m in re.findall(r">>? ~/([\w.\-/]+)", cmd)}
        written |= {f"~/{m}" for m in re.findall(r"(?:\$HOME|~)/(mlflow\.\w+)", cmd)}
        written |= set(re.findall(r"(?:mkdir -p|-m venv) (~/[\w.\-/]+)", cmd))
    written |= {path.split("/", 2)[0] + "/" + path.split("/")[1] for path in config["file_mounts"]}
    written |= {"~/ray_bootstrap_config.yaml", "~/ray_bootstrap_key.pem",  # ray up's
                f"~/{os.path.basename('search/run.py')}"}              # ray submit's
    stays = {str(DEFAULT_DATA_DIR).replace(str(Path.home()), "~")}
    assert written - listed <= stays, written - listed
    kept = " ".join(header(LOCAL).split())
    assert "What stays on purpose: the datasets in ~/.cache/oneprune" in kept


def test_ray_records_no_host_keys_so_the_header_does():
    """`ray up` connects with StrictHostKeyChecking=no and UserKnownHostsFile=/dev/null
    (Ray's SSHOptions), so nothing records the nodes' keys; the header's ssh-keyscan line
    records those of exactly the machines the removal loop visits."""
    from ray.autoscaler._private.command_runner import SSHOptions

    options = SSHOptions("~/.ssh/id_ed25519").arg_dict
    assert options["StrictHostKeyChecking"] == "no"
    assert options["UserKnownHostsFile"] == os.devnull
    (scan,) = [ln.strip() for ln in header(LOCAL).splitlines()
               if ln.strip().startswith("ssh-keyscan ")]
    argv = shlex.split(scan)
    assert argv[:2] == ["ssh-keyscan", "-H"] and argv[-2:] == [">>", "~/.ssh/known_hosts"]
    assert argv[2:-2] == removal_loop()[0]


@pytest.mark.slow
def test_the_removal_command_leaves_only_what_stays_on_purpose(tmp_path):
    """The removal command's remote part, run by bash as ssh runs it on a node, in a
    scratch HOME holding every listed leftover; its /tmp and /dev/shm paths point at
    scratch folders (the only change). The data, the user's own ~/.bashrc line and an
    unrelated folder in shared memory stay."""
    _, remote = removal_loop()
    root = tmp_path / "node"
    home, tmp, shm = root / "home", root / "tmp", root / "shm"
    local = remote.replace("/tmp/", f"{tmp}/").replace("/dev/shm/", f"{shm}/")
    assert local.count(f"{tmp}/") == remote.count("/tmp/")
    assert local.count(f"{shm}/") == remote.count("/dev/shm/")
    outside = local.replace(f"{tmp}/", "").replace(f"{shm}/", "")
    assert not re.search(r"/tmp\b|/dev/shm\b", outside), local   # nothing of this machine's
    user = getpass.getuser()
    session = tmp / "ray" / "session_2026-01-01_00-00-00_000000_1"
    files = [home / "venv/bin/pip", home / "oneprune/pyproject.toml", home / ".ray/auth_token",
             home / "run.py", home / "mlflow.db", home / "mlflow.log", home / "mlflow.pid",
             home / "optuna.db", home / ".oneprune_head.sh", home / ".config/mlflow/telemetry.json",
             home / "ray_bootstrap_config.yaml", home / "ray_bootstrap_key.pem",
             session / "logs/raylet.out", tmp / "ray/cluster-oneprune-onprem.state",
             tmp / "ray/cluster-oneprune-onprem.lock", tmp / f"torchinductor_{user}/x/y",
             shm / "tmpab12cd34/periodic_tasks.mlflow-huey-store",
             shm / "tmpab12cd34/periodic_tasks.mlflow-huey-store-wal"]
    data = home / ".cache/oneprune/data/cifar-10-batches-py/data_batch_1"
    other = shm / "tmpzz99other/not-mlflow"
    for path in [*files, data, other]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    (tmp / "ray/session_latest").symlink_to(session)
    mine = "export ONEPRUNE_TORCH_CPU_INDEX=https://mirror.example/torch-cpu/simple"
    (home / ".bashrc").write_text("export RAY_AUTH_MODE=token\nsource ~/venv/bin/activate\n"
                                  f"{mine}\nsource ~/.oneprune_head.sh\n")
    done = subprocess.run(["bash", "-c", local], cwd=home, timeout=60, capture_output=True,
                          text=True, env={"HOME": str(home), "USER": user,
                                          "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    for path in files:
        assert not path.exists(), path
    assert not (tmp / "ray").exists() and not (shm / "tmpab12cd34").exists()
    assert data.read_text() == "x" and other.read_text() == "x"
    assert (home / ".bashrc").read_text() == mine + "\n"


# -- the rest a node needs --------------------------------------------------------------------


def test_tmux_is_required_where_the_guide_runs_ray_with_tmux():
    guide = (ROOT / "docs" / "guide" / "cluster.md").read_text()
    assert "ray submit --tmux cluster-local.yaml" in guide  # else drop what follows
    needs = " ".join(header(LOCAL).split())
    assert re.search(r"the head also needs [^.]*\btmux\b", needs)
    assert any(c.startswith("command -v tmux > /dev/null || (sudo apt-get")
               for c in load(AWS)["head_setup_commands"])


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_the_header_explains_ray_autoscalers_placement_group_warning(path):
    from ray.autoscaler.v2 import event_logger

    words = "No available node types can fulfill placement group requests"
    source = re.sub(r'"\s+"', "", inspect.getsource(event_logger))  # joined literals
    assert words in source                                 # Ray's own words
    assert "No available node types can fulfill placement group requests" in \
        " ".join(header(path).split())
