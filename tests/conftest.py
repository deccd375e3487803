"""Shared fixtures: the real MNIST data (loaded once per session) and a lighter view of it for short runs; `need`,
which skips a test that lacks a part on a developer's machine and fails it in CI; a summary of the skips."""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from drill.data import Mnist, load_mnist

REPO_ROOT = Path(__file__).resolve().parent.parent
# The app's recorded-runs pack would serve some of the lesson's configs without training; tests that want a pack
# make their own (tests/test_pack.py), so every other test trains what it starts. Servers the tests start inherit it.
os.environ["DRILL_PACK"] = "off"
# The app's run store, for this test session only (servers the tests start inherit it): runs trained by one test
# are served to later identical requests, as in class, but never from or into a developer's own store.
os.environ["DRILL_RUNS_DB"] = str(Path(tempfile.mkdtemp(prefix="drill-test-store-")) / "runs.sqlite")
SMALL_TEST_SET = 1000
# CI must run every test: there a missing browser or package is a broken set-up, not a reason to skip.
IN_CI = os.environ.get("CI") == "true"


def need(condition: object, why: str) -> None:
    """Go on if condition holds; else skip the test (a developer's machine) or fail it (CI=true)."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{why} (CI=true: every test must run)", pytrace=False)
    pytest.skip(why)


def need_module(name: str, why: str):
    """The imported module, or need() refused: skipped on a developer's machine, failed in CI."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        need(False, f"{why} ({error})")


def pytest_terminal_summary(terminalreporter) -> None:
    """One line with how many tests were skipped, then each reason with its count, so a CI log shows what did not
    run even when every other test passed."""
    skipped = [report for report in terminalreporter.stats.get("skipped", []) if not hasattr(report, "wasxfail")]
    reasons = Counter(r.longrepr[2] if isinstance(r.longrepr, tuple) else str(r.longrepr) for r in skipped)
    ran = sum(len(terminalreporter.stats.get(key, [])) for key in ("passed", "failed", "error"))
    terminalreporter.write_line(f"skipped: {len(skipped)} of {ran + len(skipped)} tests")
    for reason, count in reasons.most_common():
        terminalreporter.write_line(f"  {count} x {reason.removeprefix('Skipped: ')}")


@pytest.fixture(scope="session")
def mnist() -> Mnist:
    """Real MNIST from the default data directory ($DRILL_DATA_DIR, prepared by CI)."""
    return load_mnist()


@pytest.fixture(scope="session")
def small_mnist(mnist: Mnist) -> Mnist:
    """Real MNIST with the test set cut to its first images: every epoch's test pass stays cheap."""
    return Mnist(
        mnist.train_images, mnist.train_labels, mnist.test_images[:SMALL_TEST_SET], mnist.test_labels[:SMALL_TEST_SET]
    )


@pytest.fixture(scope="module")
def one_torch_thread():
    """Train on one intra-op thread: on a shared, busy 2-core machine OpenMP's spinning threads make two threads
    several times slower than one. (Set per thread: job threads pick their own count.)"""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def wait_until(predicate, timeout: float = 60.0, interval: float = 0.01, what: str = "condition"):
    """Poll predicate until it returns something truthy (returned), failing the test after a generous deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def drill_threads() -> list[threading.Thread]:
    """The job threads of drill.jobs still alive."""
    return [t for t in threading.enumerate() if t.name.startswith("drill-") and t.is_alive()]


def config_params(at) -> dict[str, str]:
    """An AppTest's URL query without the student's id: the config it links to."""
    return {key: value for key, value in at.query_params.items() if key != "me"}


def loopback_only() -> bool:
    """Whether this process is in a network namespace with nothing but loopback (where Ray may be started)."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


@contextlib.contextmanager
def simulated_cluster(nodes: int):
    """A real Ray cluster of `nodes` simulated one-CPU nodes and a head with no CPUs (so every actor is on a node
    that may be removed), shut down at the end; never `ray stop`, which would kill every Ray process on the machine.
    Its processes run on the cores of the process that starts it. Yields (cluster, nodes).

    Only in a loopback-only network namespace (scripts/test.sh runs pytest under `unshare -n` with lo up): outside
    one, Ray binds every interface and probes a public DNS address."""
    from ray import cluster_utils

    if not loopback_only():
        raise RuntimeError("Ray is started only in a loopback-only network namespace: run under `unshare -n`")
    # The cluster's processes inherit this: they find the repo's packages the way this process does.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    memory = {"object_store_memory": 100 * 2**20}
    cluster = cluster_utils.Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False, **memory}
    )
    try:
        added = [cluster.add_node(num_cpus=1, **memory) for _ in range(nodes)]
        cluster.wait_for_nodes()
        yield cluster, added
    finally:
        cluster.shutdown()


@pytest.fixture(scope="session")
def ray_cluster():
    """Two simulated nodes (simulated_cluster), for the whole session."""
    need(loopback_only(), "Ray is started only in a loopback-only network namespace: run scripts/test.sh")
    need_module("ray.cluster_utils", "ray is not installed (requirements-ray.txt)")
    with simulated_cluster(2) as cluster:
        yield cluster


@pytest.fixture
def fresh_app_manager():
    """The app's process-wide job manager (st.cache_resource) made anew for one test, and again after it. The one
    before is shut down first: it holds the run store's file, which a second manager on it would be refused."""
    from views import common

    def renew() -> None:
        common.manager().shutdown()
        common.manager.clear()

    renew()
    yield
    renew()


def trained_here(config, data: Mnist, threads: int):
    """A run of config trained start to end in this process with `threads` torch threads (restored afterwards):
    what a backend's run must equal, given the same thread count."""
    from drill.train import train

    before = torch.get_num_threads()
    try:
        return train(config, data, threads=threads)
    finally:
        torch.set_num_threads(before)
