"""Fixtures of the search service's tests: a real two-node Ray cluster for the session, and
Tune's result files. A test that uses the cluster is marked `cluster` and `slow`."""

import json

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "ray_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def ray_cluster():
    """A Ray cluster of two nodes (a head and a worker raylet) of 1 CPU each, started on
    this machine for the session and joined by this process: trials, Train workers and
    objects really cross nodes. Token auth is off so that another driver process can join
    by the address, which is yielded. (Never a bare `ray.init()`: it attaches to any
    cluster already running.)"""
    import os

    import ray
    from ray.cluster_utils import Cluster

    previous = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster.address
    finally:
        ray.shutdown()
        cluster.shutdown()
        if previous is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = previous


@pytest.fixture
def tune_results():
    """`tune_results(folder)`: every trial's reported rows (with its config) under a Tuner's
    folder, by trial folder."""
    def read(folder):
        return {path.parent.name: [json.loads(line) for line in path.read_text().splitlines()]
                for path in folder.glob("*/result.json")}
    return read
