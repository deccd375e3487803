"""The job manager's behaviour on each backend, with real training: threads, worker processes, and a real Ray
cluster (two simulated nodes, started here, only inside a loopback-only network namespace: scripts/test.sh runs the
`ray` tests that way). What is the same everywhere: finished epochs, Stop, the queue's order and positions, turns,
sharing identical runs; and what each backend does when the machine under a run goes away."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket

import pytest
import torch
from conftest import loopback_only, need, need_module, trained_here, wait_until

from drill.backends import ProcessBackend, ThreadBackend
from drill.jobs import MAX_LOSSES, JobManager, Ticket
from drill.presets import get_preset
from drill.run_record import ACTIVE, Epoch
from drill.store import RunStore

SMALL = get_preset("quick").config.replace(train={"subset": 512, "epochs": 2, "seed": 5})
# Minutes of work on these cores (all 60,000 images): the run is still training whenever the test acts on it.
LONG = get_preset("quick").config.replace(train={"subset": 0, "epochs": 3, "seed": 6})
KINDS = ["threads", "processes", pytest.param("ray", marks=pytest.mark.ray)]
RUN_LIMIT_S = 600  # generous: a run of SMALL takes seconds; an actor's cold start a few more


def make_backend(kind: str, request):
    if kind == "threads":
        return ThreadBackend(max_running=2)
    if kind == "processes":
        return ProcessBackend(max_running=2)
    from drill.raybackend import RayBackend

    cluster, _ = request.getfixturevalue("ray_cluster")
    return RayBackend(cluster.address)


@pytest.fixture(params=KINDS)
def manager(request):
    """A job manager on one backend with two slots, and its own store; shut down afterwards."""
    made = JobManager(backend=make_backend(request.param, request), store=RunStore())
    made.kind = request.param
    yield made
    made.shutdown(timeout=120)


def wait_status(manager: JobManager, ticket: Ticket, wanted: str | tuple[str, ...], timeout: float = RUN_LIMIT_S):
    wanted = (wanted,) if isinstance(wanted, str) else wanted

    def reached():
        manager.touch(ticket.owner)
        return manager.snapshot(ticket.id).status in wanted

    wait_until(reached, timeout, interval=0.05, what=f"{ticket.id} to be {' or '.join(wanted)}")
    return manager.snapshot(ticket.id)


def wait_batches(manager: JobManager, ticket: Ticket, count: int = 2) -> None:
    def trained():
        manager.touch(ticket.owner)
        return manager.snapshot(ticket.id).progress.get("batch", 0) >= count

    wait_until(trained, RUN_LIMIT_S, interval=0.05, what=f"{ticket.id} to train {count} batches")


def untimed(epochs) -> list[Epoch]:
    return [dataclasses.replace(e, seconds=0.0) for e in epochs]


def test_a_run_gives_the_same_epochs_as_training_it_here(manager, mnist):
    ticket = manager.submit("ann", SMALL)
    done = wait_status(manager, ticket, "finished")
    alone = trained_here(SMALL, mnist, manager.threads_per_job)
    assert untimed(done.epochs) == untimed(alone.epochs)
    assert done.params == alone.params and done.progress["batch"] == done.progress["batches"] == 8
    model = manager.model(ticket.id)
    for mine, theirs in zip(model.state_dict().values(), alone.model.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs)


def test_stop_ends_a_training_run_and_keeps_it_as_stopped(manager):
    ticket = manager.submit("ann", LONG)
    wait_batches(manager, ticket)
    manager.stop(ticket.id)
    stopped = wait_status(manager, ticket, "stopped")
    assert stopped.reason == "stopped by the student" and len(stopped.epochs) < LONG.train.epochs
    assert manager.running_count() == 0


def test_runs_beyond_the_slots_queue_in_order_and_take_turns(manager):
    # Two slots, four runs of two epochs each: the last two wait with their places, and turns give every run its
    # first epoch before any run's second.
    configs = [SMALL.replace(train={"seed": seed}) for seed in (11, 12, 13, 14)]
    tickets = [manager.submit(name, c) for name, c in zip(("ann", "bob", "cid", "dee"), configs, strict=True)]
    waiting = [manager.snapshot(t.id) for t in tickets[2:]]
    assert [(s.status, s.queue_position) for s in waiting] == [("queued", 1), ("queued", 2)]
    firsts, seconds_at = {}, {}

    def all_done():
        for t in tickets:
            manager.touch(t.owner)
            snap = manager.snapshot(t.id)
            if len(snap.epochs) >= 1:
                firsts.setdefault(t.id, len(firsts))
            if len(snap.epochs) >= 2:
                seconds_at.setdefault(t.id, len(firsts))
        return all(manager.snapshot(t.id).status not in ACTIVE for t in tickets)

    wait_until(all_done, RUN_LIMIT_S, interval=0.02, what="all four runs to end")
    assert [manager.snapshot(t.id).status for t in tickets] == ["finished"] * 4
    # When any run had its second epoch, every run already had its first... or was the last one to start.
    assert min(seconds_at.values()) >= 3, (firsts, seconds_at)


def test_identical_runs_are_trained_once_and_served_to_both(manager):
    config = SMALL.replace(train={"seed": 21})
    first, second = manager.submit("ann", config), manager.submit("bob", config)
    assert first.run is second.run and manager.snapshot(second.id).watchers == 2
    wait_status(manager, first, "finished")
    later = manager.submit("cid", config)
    served = manager.snapshot(later.id)
    assert (served.status, served.reused, served.run_id) == ("finished", True, first.run.id)


# A thread cannot die apart from the server: the threads backend has no worker to lose.
@pytest.mark.parametrize("manager", KINDS[1:], indirect=True)
def test_a_run_whose_worker_dies_goes_on_elsewhere_and_fails_saying_why_when_it_keeps_dying(manager):
    ticket = manager.submit("ann", LONG)
    lost = {"processes": "the worker process training it died", "ray": "the machine training it was lost"}
    for losses in range(1, MAX_LOSSES + 2):
        wait_batches(manager, ticket)
        pid = worker_pid(manager, ticket)
        os.kill(pid, signal.SIGKILL)
        if losses <= MAX_LOSSES:
            # Back in the queue at once, from epoch 1: it had no checkpoint yet. A new worker takes it.
            wait_until(
                lambda pid=pid: manager.touch("ann") or worker_pid(manager, ticket, wait=False) not in (pid, None),
                RUN_LIMIT_S,
                what="a new worker to take the run",
            )
            again = manager.snapshot(ticket.id)
            assert again.note.startswith(f"Started over from epoch 1: {lost[manager.kind]}"), again.note
            assert again.note.endswith("before its first epoch ended.")
    failed = wait_status(manager, ticket, "failed")
    assert failed.reason.startswith(lost[manager.kind]), failed.reason
    assert failed.reason.endswith(
        f", {MAX_LOSSES + 1} times in all: this run may need more memory than a worker has; "
        "try a smaller network or fewer training images"
    ), failed.reason
    after = manager.submit("ann", SMALL.replace(train={"seed": 31}))
    assert wait_status(manager, after, "finished").epochs


def worker_pid(manager: JobManager, ticket: Ticket, wait: bool = True) -> int | None:
    """The process id of the worker training a ticket's run (None while it has none, unless told to wait)."""
    if wait:
        wait_until(lambda: worker_pid(manager, ticket, wait=False), RUN_LIMIT_S, what="the run's worker")
    handle = ticket.run.handle
    if handle is None:
        return None
    if manager.kind == "processes":
        return handle.worker.process.pid
    import ray

    try:
        return ray.get(handle.actor.where.remote())[0] if handle.actor is not None else None
    except ray.exceptions.RayActorError:  # the actor just killed, not yet seen lost by the backend
        return None


@pytest.mark.ray
def test_a_node_removed_mid_run_resumes_the_run_on_another_node_with_nothing_lost(ray_cluster, mnist):
    import ray

    from drill.raybackend import RayBackend

    cluster, nodes = ray_cluster
    medium = SMALL.replace(train={"subset": 4000, "epochs": 3, "seed": 8})
    manager = JobManager(backend=RayBackend(cluster.address), store=RunStore())
    manager.kind = "ray"
    try:
        ticket = manager.submit("ann", medium)
        wait_until(
            lambda: manager.touch("ann") or manager.store.checkpoint(ticket.run.id),
            RUN_LIMIT_S,
            0.05,
            what="the run's checkpoint after epoch 1",
        )
        pid, node_id = ray.get(ticket.run.handle.actor.where.remote())
        [node] = [n for n in nodes if n.node_id == node_id]
        cluster.remove_node(node)
        nodes.remove(node)
        wait_until(lambda: worker_pid(manager, ticket, wait=False) not in (None, pid), RUN_LIMIT_S, 0.05, "a new actor")
        _, second_node = ray.get(ticket.run.handle.actor.where.remote())
        assert second_node != node_id
        done = wait_status(manager, ticket, "finished")
        assert done.note.startswith("Resumed after epoch 1: the machine training it was lost"), done.note
        alone = trained_here(medium, mnist, manager.threads_per_job)
        assert untimed(done.epochs) == untimed(alone.epochs)
        wait_until(lambda: manager.backend.slots() == 1, RUN_LIMIT_S, 0.5, what="the cluster to count one node")
    finally:
        manager.shutdown(timeout=120)
        nodes.append(cluster.add_node(num_cpus=1, object_store_memory=100 * 2**20))
        cluster.wait_for_nodes()


# ---------------------------------------------------------------------------------------------------------------
# A backend setting that cannot be used: said on every page and in each run's reason, never a silent fallback
# ---------------------------------------------------------------------------------------------------------------


def refused_connection(*args, **kwargs):
    raise AssertionError("no connection may be tried to a cluster this app refuses to use")


@pytest.mark.parametrize(
    "env, says",
    [
        ({"DRILL_BACKEND": "bogus"}, "DRILL_BACKEND='bogus' is not allowed: one of threads, processes, ray"),
        ({"DRILL_BACKEND": "ray"}, "DRILL_BACKEND=ray needs RAY_ADDRESS: the head node's host:port"),
        ({"DRILL_BACKEND": "ray", "RAY_ADDRESS": "head"}, "RAY_ADDRESS='head' is not allowed: host:port"),
        ({"DRILL_BACKEND": "ray", "DRILL_RAY_CPUS": "lots"}, "DRILL_RAY_CPUS='lots' is not allowed: a number from"),
        (
            {"DRILL_BACKEND": "ray", "RAY_ADDRESS": "10.1.2.3:6379"},  # refused before any packet is sent to it
            "is on another machine, and Ray runs any code for anyone who reaches it: this app uses such a cluster "
            "only with token authentication. Start every node and this server with RAY_AUTH_MODE=token",
        ),
    ],
)
def test_a_backend_that_cannot_be_used_says_why_and_its_runs_fail_with_it(monkeypatch, env, says):
    need_module("ray", "ray is not installed (requirements-ray.txt)")
    from drill.jobs import make_backend

    for name in ("DRILL_BACKEND", "RAY_ADDRESS", "RAY_AUTH_MODE", "DRILL_RAY_CPUS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(socket, "create_connection", refused_connection)
    manager = JobManager(backend=make_backend(), store=RunStore())
    try:
        assert says in manager.problem()
        ticket = manager.submit("ann", SMALL)
        failed = manager.snapshot(ticket.id)
        assert (failed.status, failed.reason) == ("failed", manager.problem())
    finally:
        manager.shutdown()


def test_a_cluster_out_of_reach_is_named_with_what_to_do(monkeypatch):
    need_module("ray", "ray is not installed (requirements-ray.txt)")
    from streamlit_server import free_port

    from drill.raybackend import RayBackend

    address = f"127.0.0.1:{free_port()}"  # nobody listens there: refused at once, without starting Ray
    problem = RayBackend(address).problem()
    assert problem.startswith(f"The Ray cluster at {address} (RAY_ADDRESS) can't be reached: ")
    assert problem.endswith("start its head node (see the README), or unset DRILL_BACKEND to train on this server.")


def test_every_page_shows_a_backend_problem(monkeypatch, fresh_app_manager):
    from conftest import REPO_ROOT
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("DRILL_BACKEND", "bogus")  # read when the app's manager is made, in the first page's run
    for page in ("views/drilldown.py", "views/train.py", "views/compare.py"):
        at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=60)
        at.run()
        at.switch_page(page).run()
        assert not at.exception, at.exception
        assert [e.value for e in at.error][:1] == [
            "Runs can't train right now. DRILL_BACKEND='bogus' is not allowed: one of threads, processes, ray"
        ], page


TOKEN_HEAD = """
import sys
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                         "object_store_memory": 100 * 2**20})
print(cluster.address, flush=True)
sys.stdin.read()  # until the test closes it
cluster.shutdown()
"""
TOKEN_CLIENT = "import sys\nfrom drill.raybackend import RayBackend\nprint(RayBackend(sys.argv[1], warm=0).problem())"


@pytest.mark.ray
def test_a_cluster_with_token_authentication_refuses_a_wrong_token_and_takes_the_right_one(tmp_path):
    import subprocess
    import sys

    need(loopback_only(), "Ray is started only in a loopback-only network namespace: run scripts/test.sh")
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0123456789abcdef" * 2}
    env = {**os.environ, **token, "PYTHONPATH": os.getcwd()}
    head = subprocess.Popen(
        [sys.executable, "-c", TOKEN_HEAD], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        address = head.stdout.readline().strip()
        assert address.startswith("127.0.0.1:"), address

        def problem_with(**changes) -> str:
            client_env = {**env, **changes}
            done = subprocess.run(
                [sys.executable, "-c", TOKEN_CLIENT, address], env=client_env, capture_output=True, text=True
            )
            assert done.returncode == 0, done.stderr[-2000:]
            return done.stdout.strip().splitlines()[-1]

        wrong = problem_with(RAY_AUTH_TOKEN="f" * 32)
        assert wrong.startswith(f"The Ray cluster at {address} refused this app"), wrong
        assert "Check that RAY_AUTH_MODE and the token match the cluster's" in wrong
        assert problem_with() == "None"
    finally:
        head.stdin.close()
        head.wait(timeout=120)


def test_a_ray_run_asking_for_a_gpu_share_trains_on_cuda_and_is_not_shared_with_cpu_runs():
    need_module("ray", "ray is not installed (requirements-ray.txt)")
    from drill.raybackend import RayBackend

    address = "127.0.0.1:1"  # refused at once: the device rule needs no cluster
    with_gpu, without = RayBackend(address, gpus_per_run=0.1), RayBackend(address)
    auto = SMALL
    assert (with_gpu.device_type(auto), without.device_type(auto)) == ("cuda", "cpu")
    assert without.device_type(auto.replace(train={"device": "cuda"})) == "cuda"
