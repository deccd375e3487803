"""The run store and run sharing: identical requests train once, finished runs are served at once, and a student's
runs survive a reload (a new session with the same id) and a server restart (a new manager on the same file)."""

from __future__ import annotations

import os
import sqlite3
import threading

import pytest
import torch
from conftest import wait_until
from test_jobs import FAKE_PARAMS, FakeRunner, cfg, wait_batches, wait_status

from drill.backends import ThreadBackend
from drill.jobs import JobManager, config_key
from drill.model import build_model
from drill.presets import BY_NAME
from drill.run_record import ACTIVE, Epoch, RunRecord, Status
from drill.store import (
    DEFAULT_MAX_RUNS,
    RunRow,
    RunStore,
    StoreInUse,
    TicketRow,
    default_max_runs,
    pack_weights,
    unpack_weights,
)
from drill.train import train


@pytest.fixture
def managers(tmp_path):
    """Managers on one store file (a server and, later, the same server restarted); all shut down afterwards."""
    made = []

    def make(runner=None, **kwargs) -> JobManager:
        kwargs.setdefault("data", lambda: "data")
        manager = JobManager(runner=runner or FakeRunner(), store=RunStore(tmp_path / "runs.sqlite"), **kwargs)
        made.append(manager)
        return manager

    yield make
    for manager in made:
        manager.shutdown(timeout=60)


def test_a_class_asking_for_the_same_run_trains_it_once_and_everyone_streams_it(managers):
    runner = FakeRunner()
    manager = managers(runner, max_running=2)
    tickets = [manager.submit(f"student-{n}", cfg(1), label="step 5") for n in range(30)]
    wait_batches(manager, tickets[-1])
    assert runner.started == [1]
    assert len({t.run.id for t in tickets}) == 1 and len({t.id for t in tickets}) == 30
    views = [manager.snapshot(t.id) for t in tickets]
    assert {(v.status, v.watchers, v.reused) for v in views} == {("running", 30, False)}
    assert all(v.batch_losses for v in views)
    runner.release(1)
    for ticket in tickets:
        wait_status(manager, ticket, "finished")
    assert {tuple(e.test_acc for e in manager.snapshot(t.id).epochs) for t in tickets} == {(91.0,)}
    # A different config (here another seed) is a run of its own.
    other = manager.submit("student-0", cfg(2))
    wait_until(lambda: runner.started == [1, 2], what="the second config to start")
    assert other.run is not tickets[0].run


def test_thirty_students_submitting_at_the_same_moment_still_share_one_run(managers):
    runner = FakeRunner()
    manager = managers(runner, max_running=2)
    start = threading.Barrier(30)
    tickets = [None] * 30

    def click(n: int) -> None:
        start.wait()
        tickets[n] = manager.submit(f"student-{n}", cfg(7))

    clicks = [threading.Thread(target=click, args=(n,)) for n in range(30)]
    for thread in clicks:
        thread.start()
    for thread in clicks:
        thread.join(60)
    assert len({t.run.id for t in tickets}) == 1
    runner.release(7)
    wait_status(manager, tickets[0], "finished")
    assert runner.started == [7]


def test_a_finished_run_is_served_from_the_store_at_once_even_after_a_restart(managers):
    runner = FakeRunner()
    first = managers(runner, max_running=1)
    trained = first.submit("ann", cfg(3))
    runner.release(3)
    wait_status(first, trained, "finished")
    again = first.submit("bob", cfg(3))
    view = first.snapshot(again.id)
    assert (view.status, view.reused, view.epochs) == ("finished", True, first.snapshot(trained.id).epochs)
    assert runner.started == [3]
    first.shutdown()

    fresh_runner = FakeRunner()
    restarted = managers(fresh_runner, max_running=1)
    served = restarted.submit("cy", cfg(3).replace(train={"threads": 2}))  # the thread count is not the run's math
    view = restarted.snapshot(served.id)
    assert (view.status, view.reused, view.params) == ("finished", True, FAKE_PARAMS)
    assert fresh_runner.started == []


def test_a_students_runs_survive_a_server_restart_and_a_run_going_trains_on(managers):
    runner = FakeRunner()
    manager = managers(runner, max_running=1)
    finished = manager.submit("ann", cfg(1), label="step 5")
    runner.release(1)
    wait_status(manager, finished, "finished")
    running = manager.submit("ann", cfg(2), label="custom")
    wait_batches(manager, running)
    manager.shutdown(timeout=60)

    fresh = FakeRunner()
    restarted = managers(fresh, max_running=1)
    views = restarted.snapshots("ann")
    assert [(v.ticket_id, v.label) for v in views] == [(finished.id, "step 5"), (running.id, "custom")]
    assert views[0].status == "finished" and views[0].epochs[0].test_acc == 91.0
    # The fake reports no checkpoints, so the run that was going starts over, saying why, without a click.
    assert views[1].note == "Started over from epoch 1: the server restarted before its first epoch ended."
    wait_until(lambda: fresh.started == [2], what="the run to train again")
    fresh.release(2)
    assert wait_status(restarted, running, "finished").epochs
    assert restarted.snapshots("bob") == []


def test_a_second_server_on_the_same_file_is_refused_until_the_first_is_gone(tmp_path):
    first = RunStore(tmp_path / "runs.sqlite")
    with pytest.raises(StoreInUse, match=rf"in use by another server \(pid {os.getpid()}\); two servers on one"):
        RunStore(tmp_path / "runs.sqlite")
    first.close()
    RunStore(tmp_path / "runs.sqlite").close()  # the lock went with the first


def test_a_store_that_cannot_be_written_keeps_the_class_going_and_says_so(tmp_path):
    RunStore(tmp_path / "runs.sqlite").close()
    store = RunStore(tmp_path / "runs.sqlite", read_only=True)  # SQLite's own read-only mode: every write fails
    manager = JobManager(backend=ThreadBackend(1, lambda: "data", FakeRunner()), store=store)
    try:
        ticket = manager.submit("ann", cfg(1))
        manager.backend._runner.release(1)
        done = wait_status(manager, ticket, "finished")
        assert done.epochs and manager.warning() == (
            "The run store can't be written (attempt to write a readonly database): runs go on in memory, but they "
            "will not survive a restart of the server."
        )
    finally:
        manager.shutdown()


def test_reopening_the_file_with_a_cap_drops_the_runs_asked_for_longest_ago_and_their_tickets(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    config = cfg(1)
    for n in range(5):
        record = RunRecord(config=config, status=Status.STOPPED, reason="stopped before it started", seconds=1.0)
        row = RunRow(id=f"run-{n}", key=config_key(config), source="trained", record=record, batch_losses=[], created=n)
        store.save_run(row, {"w": torch.full((2,), float(n))})
        owner = "ann" if n % 2 else "bob"
        store.save_ticket(
            TicketRow(id=f"ticket-{n}", owner=owner, run_id=f"run-{n}", label="custom", created=n, cut=None)
        )
    # The oldest run is shared: a classmate asked for it last of all, so it is as new as that ticket.
    store.save_ticket(TicketRow(id="ticket-late", owner="cy", run_id="run-0", label="custom", created=9, cut=None))
    store.close()
    capped = RunStore(tmp_path / "runs.sqlite", max_runs=3)
    assert [capped.run(f"run-{n}") is not None for n in range(5)] == [True, False, False, True, True]
    assert [t.run_id for t in capped.tickets("ann")] == ["run-3"]
    assert [t.run_id for t in capped.tickets("bob")] == ["run-0", "run-4"]
    assert [t.run_id for t in capped.tickets("cy")] == ["run-0"]
    assert capped.weights("run-4")["w"].tolist() == [4.0, 4.0]
    capped.close()
    assert RunStore(tmp_path / "runs.sqlite", max_runs=10).run("run-3") is not None  # a larger cap drops nothing


@pytest.mark.parametrize(("text", "expected"), [("", DEFAULT_MAX_RUNS), ("40", 40)])
def test_the_run_cap_comes_from_the_environment(monkeypatch, text, expected):
    monkeypatch.setenv("DRILL_MAX_RUNS", text)
    assert default_max_runs() == expected


@pytest.mark.parametrize("text", ["0", "-3", "many", "2.5"])
def test_a_run_cap_that_is_not_a_positive_whole_number_is_refused_with_what_is_allowed(monkeypatch, text):
    monkeypatch.setenv("DRILL_MAX_RUNS", text)
    with pytest.raises(ValueError, match="a whole number of runs, 1 or more"):
        default_max_runs()


def test_leaving_a_shared_run_keeps_what_was_seen_and_the_others_go_on(managers):
    runner = FakeRunner()
    manager = managers(runner, max_running=1)
    ann, bob = manager.submit("ann", cfg(1)), manager.submit("bob", cfg(1))
    wait_batches(manager, ann, 5)
    manager.stop(ann.id)
    left = manager.snapshot(ann.id)
    assert left.status == "stopped" and "goes on for the classmates sharing it" in left.reason
    assert manager.active_count("ann") == 0 and manager.active_count("bob") == 1
    seen = len(left.batch_losses)
    wait_until(lambda: len(manager.snapshot(bob.id).batch_losses) > seen + 5, what="bob's run to go on")
    assert len(manager.snapshot(ann.id).batch_losses) == seen  # ann's view stays where she left it
    assert manager.snapshot(bob.id).status == "running" and manager.model(ann.id) is None
    manager.stop(bob.id)  # the last watcher stopping stops the run
    wait_status(manager, bob, "stopped")
    assert runner.started == [1]


def test_stopped_failed_and_imported_runs_are_never_served_to_others(managers):
    runner = FakeRunner()
    manager = managers(runner, max_running=1)
    stopped = manager.submit("ann", cfg(1))
    wait_batches(manager, stopped)
    manager.stop(stopped.id)
    wait_status(manager, stopped, "stopped")
    runner.failures[2] = RuntimeError("boom")
    failed = manager.submit("ann", cfg(2))
    wait_status(manager, failed, "failed")
    epoch = Epoch(epoch=1, train_loss=0.1, train_acc=99.9, test_loss=0.01, test_acc=99.9, lr=0.01, seconds=1.0)
    manager.add_finished("ann", RunRecord(config=cfg(3), status=Status.FINISHED, epochs=(epoch,), label="imported"))
    del runner.failures[2]
    for seed in (1, 2, 3):
        retry = manager.submit("bob", cfg(seed))
        wait_until(lambda seed=seed: runner.started.count(seed) == (2 if seed < 3 else 1), what=f"seed {seed} to train")
        runner.release(seed)
        wait_status(manager, retry, "finished")
        assert not manager.snapshot(retry.id).reused


def test_weights_round_trip_exactly_and_a_stored_model_predicts_as_the_trained_one(managers, small_mnist):
    tiny = BY_NAME["quick"].config.replace(train={"subset": 640, "batch_size": 64, "epochs": 1})
    manager = managers(train, max_running=1, data=lambda: small_mnist)
    ticket = manager.submit("ann", tiny)
    wait_until(lambda: manager.snapshot(ticket.id).status not in ACTIVE, timeout=300, what="the tiny run")
    trained = manager.model(ticket.id)
    state = trained.state_dict()
    restored = unpack_weights(pack_weights(state))
    assert state.keys() == restored.keys() and all(torch.equal(state[k], restored[k]) for k in state)
    manager.shutdown()

    restarted = managers(FakeRunner(), max_running=1)
    [view] = restarted.snapshots("ann")
    rebuilt = restarted.model(view.ticket_id)
    images = torch.rand(8, 1, 28, 28)
    torch.testing.assert_close(rebuilt(images), trained.eval()(images), rtol=0, atol=0)


def test_damaged_stored_weights_give_no_model_and_no_crash(managers, tmp_path):
    runner = FakeRunner()
    manager = managers(runner, max_running=1)
    ticket = manager.submit("ann", cfg(1))
    runner.release(1)
    wait_status(manager, ticket, "finished")
    manager.store.save_run(ticket.run.row(), build_model(cfg(1).model).state_dict())
    with sqlite3.connect(tmp_path / "runs.sqlite") as db:
        db.execute("UPDATE runs SET weights = substr(weights, 1, 100)")
    manager.shutdown()
    restarted = managers(FakeRunner(), max_running=1)
    [view] = restarted.snapshots("ann")
    assert view.status == "finished" and restarted.model(view.ticket_id) is None
    with pytest.raises(ValueError, match="cut short"):
        unpack_weights(pack_weights({"w": torch.ones(10)})[:-4])


def test_a_restart_gives_each_student_the_very_runs_it_resumes_whatever_their_order(managers):
    # ann left bob's run (which goes on) and started her own: her tickets point at two runs going. The restart must
    # give both tickets the runs it put back in the queue, not copies of them that never train.
    runner = FakeRunner()
    first = managers(runner, max_running=1)
    shared = first.submit("bob", cfg(1))
    first.submit("ann", cfg(1))
    wait_batches(first, shared)
    first.stop(first.snapshots("ann")[0].ticket_id)
    own = first.submit("ann", cfg(2))
    first.shutdown(timeout=60)
    fresh = FakeRunner()
    restarted = managers(fresh, max_running=1)
    for ticket_id, run_id in ((shared.id, shared.run.id), (own.id, own.run.id)):
        assert restarted.get(ticket_id).run is restarted._runs[run_id]
    wait_until(lambda: restarted.touch("ann") or restarted.touch("bob") or fresh.started == [1], what="bob's run")
    fresh.release(1)
    wait_until(lambda: restarted.touch("ann") or fresh.started == [1, 2], what="ann's own run to train again")
    fresh.release(2)
    assert wait_status(restarted, own, "finished").epochs


def test_a_run_its_student_stopped_stays_stopped_when_the_server_stops_right_after(managers):
    runner = FakeRunner()
    manager = managers(runner, max_running=1)
    ticket = manager.submit("ann", cfg(1))
    wait_batches(manager, ticket)
    manager.stop(ticket.id)
    manager.shutdown(timeout=60)  # the run's end may land while the server is stopping
    restarted = managers(FakeRunner(), max_running=1)
    [view] = restarted.snapshots("ann")
    assert (view.status, view.reason) == ("stopped", "stopped by the student")


def test_a_run_whose_worker_cannot_start_fails_saying_why(managers):
    class Broken(ThreadBackend):
        def start(self, job, on_event, on_end):
            raise OSError("Cannot allocate memory")

    manager = JobManager(backend=Broken(1, lambda: "data", FakeRunner()), store=RunStore())
    try:
        ticket = manager.submit("ann", cfg(1))
        failed = manager.snapshot(ticket.id)
        assert (failed.status, failed.reason) == ("failed", "it could not start (OSError: Cannot allocate memory)")
        assert manager.running_count() == 0
    finally:
        manager.shutdown()


def test_a_store_that_cannot_be_opened_keeps_the_class_going_in_memory_and_says_so(
    tmp_path, monkeypatch, fresh_app_manager
):
    from conftest import REPO_ROOT
    from streamlit.testing.v1 import AppTest

    from views import common

    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("DRILL_RUNS_DB", str(tmp_path / "a-file" / "runs.sqlite"))  # its folder can't be made
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    warnings = [w.value for w in at.warning]
    assert any(w.startswith("The run store can't be opened (") and "not survive a restart" in w for w in warnings)
    assert common.manager().problem() is None  # runs still train
