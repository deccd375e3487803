"""Tests for drill.jobs: the queue and its turns, stopping, orphan reaping, failures, shutdown, snapshots, imports."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections import defaultdict

import pytest
import torch
from conftest import drill_threads, wait_until

from drill.checkpoint import Checkpoint
from drill.config import RunConfig
from drill.data import DataUnavailable
from drill.jobs import MAX_BATCH_POINTS, JobManager, Run, Ticket
from drill.presets import get_preset
from drill.run_record import EPOCH_KEYS, Epoch, RecordError, RunRecord, Status
from drill.train import RunResult, train

FAKE_PARAMS = 4321


def cfg(seed: int) -> RunConfig:
    """A config told apart by its seed (the fake runner keys everything on it)."""
    return RunConfig().replace(train={"seed": seed, "epochs": 1})


class FakeRunner:
    """Stands in for train(): reports a batch every few milliseconds until released, stopped or told to fail."""

    def __init__(self):
        self.lock = threading.Lock()
        self.started: list[int] = []
        self.threads: list[int | None] = []
        self.gates: dict[int, threading.Event] = defaultdict(threading.Event)
        self.failures: dict[int, Exception] = {}
        self.results: dict[int, tuple[str, str]] = {}  # seed -> (status, reason) to end with when released

    def release(self, seed: int) -> None:
        with self.lock:
            gate = self.gates[seed]
        gate.set()

    def __call__(self, config, data, callback, stop, threads=None, pause=None, resume=None, checkpoints=False):
        seed = config.train.seed
        with self.lock:
            self.started.append(seed)
            self.threads.append(threads)
            gate = self.gates[seed]
        if seed in self.failures:
            raise self.failures[seed]
        callback("start", {"params": FAKE_PARAMS, "epochs": 1, "batches": 10**6, "images": 128 * 10**6})
        batch = 0
        while True:
            if stop.is_set():
                return RunResult(
                    config=config,
                    status=Status.STOPPED,
                    reason="stopped during epoch 1",
                    params=FAKE_PARAMS,
                    seconds=0.25,
                )
            if gate.is_set():
                epoch = Epoch(
                    epoch=1, train_loss=0.5, train_acc=90.0, test_loss=0.4, test_acc=91.0, lr=0.01, seconds=1.5
                )
                callback("epoch", epoch.to_dict())
                status, reason = self.results.get(seed, (Status.FINISHED, ""))
                return RunResult(
                    config=config, status=Status(status), reason=reason, params=FAKE_PARAMS, epochs=[epoch], seconds=1.5
                )
            batch += 1
            callback(
                "batch",
                {"epoch": 1, "batch": batch, "batches": 10**6, "loss": 1.0 / batch, "lr": 0.01, "images_per_s": 1280.0},
            )
            stop.wait(0.005)  # a little "work", cut short by a stop


@pytest.fixture
def make_manager():
    """Build managers for a test; afterwards shut them down and check that no job thread outlives them."""
    managers = []

    def make(runner=None, **kwargs) -> JobManager:
        kwargs.setdefault("data", lambda: "data")
        manager = JobManager(runner=runner or FakeRunner(), **kwargs)
        managers.append(manager)
        return manager

    yield make
    for manager in managers:
        runner = manager.backend._runner
        if isinstance(runner, FakeRunner):
            for seed in list(runner.gates):
                runner.release(seed)
        manager.shutdown(timeout=60)
    wait_until(lambda: not drill_threads(), what="every drill-* thread to end")


def status(manager: JobManager, job: Ticket) -> str:
    return manager.snapshot(job.id).status


def wait_status(manager: JobManager, job: Ticket, wanted: str, timeout: float = 60.0):
    wait_until(lambda: status(manager, job) == wanted, timeout, what=f"{job.id} to be {wanted}")
    return manager.snapshot(job.id)


def wait_batches(manager: JobManager, job: Ticket, count: int = 1):
    wait_until(lambda: manager.snapshot(job.id).progress.get("batch", 0) >= count, what=f"{job.id} to train")


# ---------------------------------------------------------------------------------------------------------------
# The queue
# ---------------------------------------------------------------------------------------------------------------


def test_jobs_beyond_max_running_wait_in_the_queue(make_manager):
    runner = FakeRunner()
    manager = make_manager(runner, max_running=1)
    first = manager.submit("ann", cfg(1), label="first")
    second = manager.submit("ann", cfg(2), label="second")
    wait_batches(manager, first)
    one, two = manager.snapshot(first.id), manager.snapshot(second.id)
    assert (one.status, one.queue_position, one.label, one.params) == ("running", None, "first", FAKE_PARAMS)
    assert (two.status, two.queue_position, two.label) == ("queued", 1, "second")
    assert manager.running_count() == 1
    assert [(s.ticket_id, s.queue_position) for s in manager.snapshots("ann")] == [(first.id, None), (second.id, 1)]
    assert runner.started == [1]

    runner.release(1)
    done = wait_status(manager, first, "finished")
    assert (done.reason, done.seconds, len(done.epochs)) == ("", 1.5, 1)
    running = wait_status(manager, second, "running")
    assert running.queue_position is None
    # The manager marks a run running just before its thread calls the runner.
    wait_until(lambda: runner.started == [1, 2], what="the second job to reach the runner")
    runner.release(2)
    wait_status(manager, second, "finished")
    assert manager.running_count() == 0
    # Each job is given the cores this process may use, divided among the running slots.
    assert manager.threads_per_job == len(os.sched_getaffinity(0))
    assert runner.threads == [manager.threads_per_job] * 2


def test_one_click_run_twice_at_once_starts_one_run_for_the_student(make_manager):
    # In a 30-tab load one student got two tickets 26 ms apart: Streamlit ran Start's callback twice at once, and
    # both passed a check made before submitting. The check is now part of submit, under the manager's lock.
    manager = make_manager(max_running=1)
    first = manager.submit("ann", cfg(1), one_at_a_time=True)
    barrier = threading.Barrier(8)
    tickets = []

    def click() -> None:
        barrier.wait()
        tickets.append(manager.submit("bob", cfg(2), one_at_a_time=True).id)

    threads = [threading.Thread(target=click) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(tickets)) == 1 and [s.ticket_id for s in manager.snapshots("bob")] == tickets[:1]
    # A later click, or one with other settings, still gets the run that is going.
    assert manager.submit("ann", cfg(3), one_at_a_time=True).id == first.id
    assert len(manager.snapshots("ann")) == 1
    manager.stop(first.id)
    wait_status(manager, first, "stopped")
    assert manager.submit("ann", cfg(3), one_at_a_time=True).id != first.id  # once it ended, a new one starts


def test_asking_again_for_a_run_one_follows_gives_the_same_ticket(make_manager):
    # In a load test of 4 students on one config, one got two tickets for the same finished run: their click's
    # callback ran twice (Streamlit replays a click whose rerun was cut short) after the shared run had finished.
    runner = FakeRunner()
    manager = make_manager(runner, max_running=1)
    first = manager.submit("ann", cfg(1), one_at_a_time=True)
    runner.release(1)
    wait_status(manager, first, "finished")
    again = [manager.submit("ann", cfg(1), one_at_a_time=True).id for _ in range(3)]
    assert again == [first.id] * 3 and len(manager.snapshots("ann")) == 1
    classmate = manager.submit("bob", cfg(1))
    assert classmate.id != first.id and manager.snapshot(classmate.id).reused
    # A student who left a run early and asks for it again follows it anew.
    shared = manager.submit("cat", cfg(2))
    manager.submit("dan", cfg(2))
    manager.stop(shared.id)
    assert manager.submit("cat", cfg(2)).id != shared.id


def test_the_queue_is_first_in_first_out(make_manager):
    runner = FakeRunner()
    manager = make_manager(runner, max_running=2)
    jobs = [manager.submit(f"owner{i % 2}", cfg(seed)) for i, seed in enumerate((1, 2, 3, 4, 5))]
    wait_until(lambda: sorted(runner.started) == [1, 2], what="two jobs to start")
    assert [manager.snapshot(j.id).queue_position for j in jobs] == [None, None, 1, 2, 3]
    assert [s.queue_position for s in manager.snapshots("owner0")] == [None, 1, 3]  # jobs 1, 3 and 5
    assert manager.running_count() == 2
    # Whichever slot frees up, the oldest queued job takes it.
    runner.release(2)
    wait_until(lambda: len(runner.started) == 3)
    assert runner.started[2] == 3
    assert [manager.snapshot(j.id).queue_position for j in jobs[3:]] == [1, 2]
    for seed in (1, 3, 4, 5):
        wait_until(lambda seed=seed: seed in runner.started, what=f"job {seed} to start")
        runner.release(seed)
    for job in jobs:
        wait_status(manager, job, "finished")
    assert runner.started[:2] in ([1, 2], [2, 1]) and runner.started[2:] == [3, 4, 5]


def test_stopping_a_running_job_ends_it_within_a_batch_and_frees_its_slot(make_manager):
    runner = FakeRunner()
    manager = make_manager(runner, max_running=1)
    first, second = manager.submit("ann", cfg(1)), manager.submit("ann", cfg(2))
    wait_batches(manager, first, 3)
    manager.stop(first.id)
    stopped = wait_status(manager, first, "stopped")
    assert stopped.reason == "stopped by the student"
    assert stopped.epochs == ()
    wait_status(manager, second, "running")
    manager.stop(second.id, reason="cleared by the teacher")
    assert wait_status(manager, second, "stopped").reason == "cleared by the teacher"


def test_stopping_a_queued_job_takes_it_out_of_the_queue(make_manager):
    runner = FakeRunner()
    manager = make_manager(runner, max_running=1)
    first, second, third = (manager.submit("ann", cfg(seed)) for seed in (1, 2, 3))
    wait_batches(manager, first)
    manager.stop(second.id)
    snap = manager.snapshot(second.id)
    assert (snap.status, snap.queue_position) == ("stopped", None)
    assert snap.reason == "stopped by the student before it started"
    assert manager.snapshot(third.id).queue_position == 1
    manager.stop("run-404")  # unknown ids are ignored
    runner.release(1)
    wait_status(manager, first, "finished")
    wait_status(manager, third, "running")
    runner.release(3)
    wait_status(manager, third, "finished")
    assert runner.started == [1, 3], "a stopped queued job never starts"
    assert status(manager, second) == "stopped"


# ---------------------------------------------------------------------------------------------------------------
# Orphans, failures, shutdown
# ---------------------------------------------------------------------------------------------------------------


def test_a_running_job_whose_page_stops_polling_is_stopped(make_manager):
    runner = FakeRunner()
    manager = make_manager(runner, max_running=2, grace_s=1.5)
    kept = manager.submit("alive", cfg(1))
    orphan = manager.submit("gone", cfg(2))
    wait_until(lambda: manager.touch("alive") or status(manager, orphan) == "stopped", what="the orphan to stop")
    snap = manager.snapshot(orphan.id)
    assert "page stopped polling" in snap.reason and "tab closed" in snap.reason
    assert status(manager, kept) == "running", "an owner who keeps touching keeps their run"
    manager.touch("alive")
    runner.release(1)
    assert wait_status(manager, kept, "finished").reason == ""


def test_a_queued_job_of_a_gone_owner_is_dropped_when_its_turn_comes(make_manager):
    runner = FakeRunner()
    manager = make_manager(runner, max_running=1, grace_s=1.0)
    manager.submit("alive", cfg(1))
    orphan = manager.submit("gone", cfg(2))
    later = manager.submit("alive", cfg(3))
    assert status(manager, orphan) == "queued"
    past_grace = time.monotonic() + 1.5
    wait_until(lambda: manager.touch("alive") or time.monotonic() > past_grace, what="the grace period to pass")
    runner.release(1)
    dropped = wait_status(manager, orphan, "stopped")
    assert dropped.reason == "the page was closed before it started"
    wait_until(lambda: manager.touch("alive") or status(manager, later) == "running", what="the next job to start")
    runner.release(3)
    wait_status(manager, later, "finished")
    assert runner.started == [1, 3]


def test_a_failing_job_is_kept_as_failed_and_the_queue_moves_on(make_manager):
    runner = FakeRunner()
    runner.failures[1] = RuntimeError("boom")
    runner.results[3] = ("failed", "the loss became nan in epoch 1, batch 3: the learning rate (1) is too high")
    manager = make_manager(runner, max_running=1)
    broken, after, diverged = (manager.submit("ann", cfg(seed)) for seed in (1, 2, 3))
    failed = wait_status(manager, broken, "failed")
    assert failed.reason == "RuntimeError: boom"
    wait_status(manager, after, "running")
    runner.release(2)
    wait_status(manager, after, "finished")
    runner.release(3)
    snap = wait_status(manager, diverged, "failed")
    assert snap.reason.startswith("the loss became nan") and "learning rate" in snap.reason
    assert [s.status for s in manager.snapshots("ann")] == ["failed", "finished", "failed"]


def test_a_job_fails_with_the_reason_when_the_data_cannot_be_loaded(make_manager):
    def no_data():
        raise DataUnavailable("Could not load MNIST; every source failed")

    manager = make_manager(max_running=1, data=no_data)
    job = manager.submit("ann", cfg(1))
    snap = wait_status(manager, job, "failed")
    assert snap.reason == "DataUnavailable: Could not load MNIST; every source failed"


def test_no_job_thread_outlives_its_job(make_manager):
    runner = FakeRunner()
    manager = make_manager(runner, max_running=2)
    jobs = [manager.submit("ann", cfg(seed)) for seed in range(1, 5)]
    wait_until(lambda: len(drill_threads()) == 2, what="two job threads")
    assert {t.name for t in drill_threads()} == {f"drill-{jobs[0].run.id}", f"drill-{jobs[1].run.id}"}
    manager.stop(jobs[0].id)
    for seed in range(2, 5):
        wait_until(lambda seed=seed: seed in runner.started, what=f"job {seed} to start")
        runner.release(seed)
    for job in jobs:
        wait_until(lambda job=job: status(manager, job) in ("stopped", "finished"), what=f"{job.id} to end")
    wait_until(lambda: not drill_threads(), what="every job thread to end")
    assert all(job.run.handle is None for job in jobs)


def test_shutdown_stops_training_and_leaves_every_run_going_for_the_next_server(make_manager):
    runner = FakeRunner()
    manager = make_manager(runner, max_running=1)
    running, queued = manager.submit("ann", cfg(1)), manager.submit("bob", cfg(2))
    wait_batches(manager, running)
    manager.shutdown(timeout=60)
    assert not drill_threads()
    assert running.run.handle is None and not queued.run.started
    # Both stay queued, to resume when a server opens the store again (test_resume.py).
    assert [manager.snapshot(t.id).status for t in (running, queued)] == ["queued", "queued"]
    assert runner.started == [1]


# ---------------------------------------------------------------------------------------------------------------
# Snapshots and records
# ---------------------------------------------------------------------------------------------------------------


def test_snapshots_are_copies_that_do_not_write_back(make_manager):
    runner = FakeRunner()
    manager = make_manager(runner, max_running=1)
    job = manager.submit("ann", cfg(1))
    wait_batches(manager, job, 2)
    runner.release(1)
    snap = wait_status(manager, job, "finished")
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.status = "running"
    assert isinstance(snap.epochs, tuple) and isinstance(snap.batch_losses, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.epochs[0].test_acc = -1.0
    expected_epoch = snap.epochs[0]
    expected_progress = dict(snap.progress)
    snap.progress["batch"] = -5
    snap.progress.clear()
    again = manager.snapshot(job.id)
    assert again.epochs[0] == expected_epoch
    assert again.progress == expected_progress
    assert job.run.epochs[0].test_acc == 91.0


def test_job_records_progress_eta_and_thins_batch_losses():
    job = Run("run-1", RunConfig().replace(train={"batch_size": 128, "epochs": 2}))
    job.on_event("start", {"params": 10, "epochs": 2, "batches": 10, "images": 1280})
    assert job.params == 10 and job.progress == {"epoch": 1, "batch": 0, "batches": 10, "epochs": 2}
    job.on_event("batch", {"epoch": 1, "batch": 5, "batches": 10, "loss": 0.7, "lr": 0.05, "images_per_s": 640.0})
    # 640 images/s in batches of 128 is 5 batches/s; 20 - 5 = 15 batches to go: 3 s.
    assert job.progress["eta_s"] == pytest.approx(3.0)
    assert (job.progress["epoch"], job.progress["batch"], job.progress["lr"]) == (1, 5, 0.05)
    assert job.batch_losses == [(0.5, 0.7)]
    job.on_event("batch", {"epoch": 2, "batch": 5, "batches": 10, "loss": 0.3, "lr": 0.05, "images_per_s": 0.0})
    assert job.batch_losses[-1] == (1.5, 0.3) and job.progress["eta_s"] is None
    for i in range(MAX_BATCH_POINTS + 10):
        job.on_event(
            "batch", {"epoch": 1, "batch": 1, "batches": 10, "loss": float(i), "lr": 0.05, "images_per_s": 100.0}
        )
    assert len(job.batch_losses) <= MAX_BATCH_POINTS
    assert job.batch_losses[-1][1] >= MAX_BATCH_POINTS  # the newest points survive the thinning
    epoch = Epoch(epoch=1, train_loss=0.5, train_acc=90.0, test_loss=0.4, test_acc=91.0, lr=0.05, seconds=2.0)
    job.on_event("epoch", epoch.to_dict())
    assert job.epochs == [epoch]


def test_add_finished_registers_an_imported_record(make_manager):
    runner = FakeRunner()
    manager = make_manager(runner, max_running=1)
    config = get_preset("final").config
    epochs = [
        Epoch(epoch=e, train_loss=0.1, train_acc=99.0, test_loss=0.02, test_acc=99.4 + e / 100, lr=0.1, seconds=20.0)
        for e in (1, 2)
    ]
    record = RunRecord(
        config=config,
        status=Status.FINISHED,
        params=7570,
        seconds=41.5,
        epochs=tuple(epochs),
        label="imported",
    )
    job = manager.add_finished("ann", record)
    snap = manager.snapshot(job.id)
    assert (snap.status, snap.reason, snap.params, snap.seconds, snap.label) == ("finished", "", 7570, 41.5, "imported")
    assert snap.config == config and list(snap.epochs) == epochs and snap.queue_position is None
    assert snap.record() == record
    assert not job.run.started and runner.started == [] and manager.running_count() == 0
    # The run holds its own list of the record's epochs: a run that goes on appends to it, never to the record.
    job.run.epochs.append(epochs[0])
    assert record.epochs == tuple(epochs)

    stopped = manager.add_finished(
        "ann",
        RunRecord.from_dict(
            {"config": config.to_dict(), "epochs": [], "status": "stopped", "reason": "stopped during epoch 1"}
        ),
    )
    assert (stopped.run.status, stopped.run.reason, stopped.run.params) == ("stopped", "stopped during epoch 1", 7570)
    minimal = manager.add_finished("ann", RunRecord.from_dict({"config": {}, "epochs": [], "status": "stopped"}))
    assert (minimal.run.status, minimal.run.config, minimal.run.seconds) == ("stopped", RunConfig(), 0.0)
    assert [s.ticket_id for s in manager.snapshots("ann")] == [job.id, stopped.id, minimal.id]
    # A new job gets an id of its own, after the imported ones.
    new = manager.submit("ann", cfg(1))
    assert new.id not in {job.id, stopped.id, minimal.id}

    with pytest.raises(RecordError, match="train.epochs"):
        RunRecord.from_dict({"config": {"train": {"epochs": 0}}, "epochs": []})
    assert len(manager.snapshots("ann")) == 4


# ---------------------------------------------------------------------------------------------------------------
# Real training through the manager
# ---------------------------------------------------------------------------------------------------------------


def test_real_tiny_runs_finish_and_stop_through_the_manager(make_manager, small_mnist):
    lean = get_preset("lean").config
    long_cfg = lean.replace(train={"subset": 4096, "batch_size": 64, "epochs": 1, "seed": 2})
    stop_sent = threading.Event()

    def held_at_batch_2(config, data, callback, stop, **kwargs):
        # The long run waits at its second batch until Stop is sent, so it is stopped mid-epoch on any machine.
        def hold(event, payload):
            callback(event, payload)
            if config is long_cfg and event == "batch" and payload["batch"] == 2:
                stop_sent.wait(60)

        return train(config, data, hold, stop, **kwargs)

    manager = make_manager(held_at_batch_2, max_running=2, data=lambda: small_mnist)  # a torch thread per job
    short = manager.submit("ann", lean.replace(train={"subset": 256, "batch_size": 64, "epochs": 1}))
    long = manager.submit("ann", long_cfg)
    wait_batches(manager, long, 2)
    manager.stop(long.id)
    stop_sent.set()
    stopped = wait_status(manager, long, "stopped", timeout=120)
    assert stopped.reason == "stopped by the student"
    assert stopped.progress["batch"] == 2 and stopped.epochs == ()

    done = wait_status(manager, short, "finished", timeout=120)
    assert done.params == 6_520 and len(done.epochs) == 1 and set(done.epochs[0].to_dict()) == set(EPOCH_KEYS)
    assert [round(p, 2) for p, _ in done.batch_losses] == [0.25, 0.5, 0.75, 1.0]
    assert done.progress["batches"] == 4 and done.progress["batch"] == 4
    assert 0 <= done.epochs[0].test_acc <= 100 and done.seconds > 0
    assert short.run.model is not None and short.run.status == "finished"
    wait_until(lambda: not drill_threads(), what="the real jobs' threads to end")


def test_a_closed_tabs_queued_run_leaves_the_queue_at_the_next_heartbeat(make_manager):
    # It used to wait for its turn at the front, meanwhile counting as "ahead" of every student behind it.
    runner = FakeRunner()
    manager = make_manager(runner, max_running=1, grace_s=1.0)
    manager.submit("alive", cfg(1))
    orphan = manager.submit("gone", cfg(2))
    behind = manager.submit("alive", cfg(3))
    assert manager.snapshot(behind.id).queue_position == 2
    past_grace = time.monotonic() + 1.5
    wait_until(lambda: manager.touch("alive") or time.monotonic() > past_grace, what="the grace period to pass")
    assert status(manager, orphan) == "stopped"
    assert manager.snapshot(behind.id).queue_position == 1
    assert manager.active_count("alive") == 2 and manager.active_count("gone") == 0
    runner.release(1)
    runner.release(3)
    wait_status(manager, behind, "finished")


def test_ended_runs_of_owners_gone_for_an_hour_leave_memory_but_come_back_from_the_store(make_manager, monkeypatch):
    runner = FakeRunner()
    manager = make_manager(runner, max_running=1)
    old = manager.submit("left", cfg(1))
    runner.release(1)
    wait_status(manager, old, "finished")
    manager.touch("left")
    monkeypatch.setattr("drill.jobs.FORGET_AFTER_S", 0.5)
    past = time.monotonic() + 1.0
    wait_until(lambda: manager.touch("here") or time.monotonic() > past, what="an hour, scaled down, to pass")
    assert manager.get(old.id) is None and old.run.id not in manager._runs
    # The student comes back (a reload, the next day): the run is read back from the store, history and all.
    [back] = manager.snapshots("left")
    assert (back.ticket_id, back.status, back.params, back.epochs[0].test_acc) == (
        old.id,
        "finished",
        FAKE_PARAMS,
        91.0,
    )


@pytest.mark.parametrize("text", ["0", "-1", "two", "1.5"])
def test_a_bad_drill_max_jobs_says_what_is_allowed(monkeypatch, text):
    monkeypatch.setenv("DRILL_MAX_JOBS", text)
    with pytest.raises(ValueError, match=f"DRILL_MAX_JOBS='{text}' is not allowed: a whole number of runs, 1 or more"):
        JobManager()


def test_the_schedulers_thread_count_wins_over_the_configs(small_mnist):
    # A shared link with threads=8 must not oversubscribe the server: the job manager's one thread per run stands.
    seen = []
    cfg8 = get_preset("lean").config.replace(train={"threads": 8, "subset": 256, "epochs": 1, "batch_size": 128})

    def record(event, payload):
        if event == "start":
            seen.append(torch.get_num_threads())

    worker = threading.Thread(target=train, args=(cfg8, small_mnist, record), kwargs={"threads": 1})
    worker.start()
    worker.join()
    assert seen == [1]


# ---------------------------------------------------------------------------------------------------------------
# Taking turns: a class starting at once sees first points after about one epoch per run ahead, not whole runs
# ---------------------------------------------------------------------------------------------------------------


class EpochRunner:
    """Stands in for train() with whole epochs: each reported at once, except that a held seed waits (until released
    or stopped) before its first epoch. Logs (seed, epoch) in the order the epochs were trained."""

    def __init__(self, held: tuple[int, ...] = ()):
        self.lock = threading.Lock()
        self.log: list[tuple[int, int]] = []
        self.held = {seed: threading.Event() for seed in held}

    def __call__(self, config, data, callback, stop, threads=None, pause=None, resume=None, checkpoints=False):
        seed, epochs = config.train.seed, list(resume.epochs) if resume else []
        callback("start", {"params": FAKE_PARAMS, "epochs": config.train.epochs, "batches": 1, "images": 128})
        gate = self.held.get(seed) if resume is None else None
        while gate is not None and not gate.wait(0.005) and not stop.is_set():
            pass
        for epoch in range(len(epochs) + 1, config.train.epochs + 1):
            if stop.is_set():
                return RunResult(
                    config=config,
                    status=Status.STOPPED,
                    reason=f"stopped during epoch {epoch}",
                    params=FAKE_PARAMS,
                    epochs=epochs,
                    seconds=0.1,
                )
            stats = Epoch(
                epoch=epoch, train_loss=0.5, train_acc=90.0, test_loss=0.4, test_acc=91.0, lr=0.01, seconds=0.1
            )
            with self.lock:
                self.log.append((seed, epoch))
            epochs.append(stats)
            callback("epoch", stats.to_dict())
            if epoch < config.train.epochs and pause():
                return RunResult(
                    config=config,
                    status=Status.PAUSED,
                    params=FAKE_PARAMS,
                    epochs=epochs,
                    seconds=0.1,
                    checkpoint=Checkpoint(epochs=tuple(epochs), seconds=0.1),
                )
        return RunResult(config=config, status=Status.FINISHED, params=FAKE_PARAMS, epochs=epochs, seconds=0.3)


def epochs_cfg(seed: int, epochs: int = 3) -> RunConfig:
    return RunConfig().replace(train={"seed": seed, "epochs": epochs})


def test_a_run_gives_its_slot_up_after_an_epoch_while_a_new_run_waits(make_manager):
    runner = EpochRunner(held=(1,))
    manager = make_manager(runner, max_running=1)
    tickets = [manager.submit(name, epochs_cfg(seed)) for seed, name in ((1, "ann"), (2, "bob"), (3, "cid"))]
    assert [manager.snapshot(t.id).queue_position for t in tickets] == [None, 1, 2]
    runner.held[1].set()
    for ticket in tickets:
        snap = wait_status(manager, ticket, "finished")
        assert [e.epoch for e in snap.epochs] == [1, 2, 3]
    # Every student's first epoch before anyone's second; the last new run goes on, then the paused ones in turn.
    assert runner.log == [(1, 1), (2, 1), (3, 1), (3, 2), (3, 3), (1, 2), (1, 3), (2, 2), (2, 3)]


def paused_pair(manager: JobManager, runner: EpochRunner) -> tuple[Ticket, Ticket]:
    """ann's run paused after its first epoch, for bob's new run, which is running (held before its first epoch)."""
    first = manager.submit("ann", epochs_cfg(1))
    second = manager.submit("bob", epochs_cfg(2))
    runner.held[1].set()
    wait_until(
        lambda: manager.snapshot(first.id).status == "queued" and manager.snapshot(first.id).epochs,
        what="the first run to pause after its epoch 1",
    )
    wait_status(manager, second, "running")
    return first, second


def test_a_paused_run_shows_its_epochs_and_place_and_can_be_stopped(make_manager):
    runner = EpochRunner(held=(1, 2))
    manager = make_manager(runner, max_running=1)
    first, second = paused_pair(manager, runner)
    paused = manager.snapshot(first.id)
    assert (paused.queue_position, [e.epoch for e in paused.epochs]) == (1, [1])
    manager.stop(first.id)
    stopped = wait_status(manager, first, "stopped")
    assert (stopped.reason, len(stopped.epochs)) == ("stopped by the student", 1)  # what it trained is kept
    runner.held[2].set()
    assert [e.epoch for e in wait_status(manager, second, "finished").epochs] == [1, 2, 3]


def test_the_server_stopping_keeps_a_paused_run_with_its_epochs(make_manager):
    runner = EpochRunner(held=(1, 2))
    manager = make_manager(runner, max_running=1)
    first, second = paused_pair(manager, runner)
    manager.shutdown(timeout=60)
    one, two = manager.snapshot(first.id), manager.snapshot(second.id)
    assert (one.status, one.reason, len(one.epochs)) == ("queued", "", 1)
    assert (two.status, two.reason, len(two.epochs)) == ("queued", "", 0)
    assert not drill_threads()


def test_taking_turns_changes_nothing_a_run_computes(small_mnist):
    # Real training, with the first run made to pause after its first epoch while a new run trains.
    data = small_mnist
    small = get_preset("quick").config.replace(train={"subset": 1024, "epochs": 2})
    one, two = small, small.replace(train={"seed": 2, "epochs": 1})
    log, second_in = [], threading.Event()

    def runner(config, data, callback, stop, threads=None, pause=None, resume=None, checkpoints=False):
        def logged(event, payload):
            if event == "epoch":
                if config is one and payload["epoch"] == 1:
                    second_in.wait(60)  # the new run is in the queue by the time this epoch ends
                log.append((config.train.seed, payload["epoch"]))
            callback(event, payload)

        return train(config, data, logged, stop, threads, pause=pause, resume=resume, checkpoints=checkpoints)

    manager = JobManager(max_running=1, runner=runner, data=lambda: data)
    try:
        first = manager.submit("ann", one)
        second = manager.submit("bob", two)
        second_in.set()
        wait_status(manager, second, "finished", timeout=300)
        taken = wait_status(manager, first, "finished", timeout=300)
    finally:
        manager.shutdown(timeout=60)
    assert log == [(1, 1), (2, 1), (1, 2)]
    before = torch.get_num_threads()
    try:
        alone = train(one, data, threads=manager.threads_per_job)  # the thread count the job had: the same sums
    finally:
        torch.set_num_threads(before)
    assert [e.test_acc for e in taken.epochs] == [e.test_acc for e in alone.epochs]
    assert [e.train_loss for e in taken.epochs] == pytest.approx([e.train_loss for e in alone.epochs], rel=1e-6)


def test_the_sharing_key_holds_the_device_type_a_run_trains_on(make_manager):
    from drill.jobs import config_key

    config = cfg(1)
    assert config_key(config, "cpu") != config_key(config, "cuda")
    # Here auto means the CPU, so asking for auto or for the CPU is one training, shared.
    manager = make_manager(max_running=1)
    auto, cpu = manager.submit("ann", config), manager.submit("bob", config.replace(train={"device": "cpu"}))
    assert auto.run is cpu.run or torch.cuda.is_available()


def test_a_paused_run_its_student_stops_keeps_the_model_it_trained(small_mnist):
    small = get_preset("quick").config.replace(train={"subset": 512, "epochs": 3, "seed": 41})
    manager = JobManager(max_running=1, data=lambda: small_mnist)
    try:
        first = manager.submit("ann", small)
        wait_until(lambda: manager.snapshot(first.id).progress.get("batch"), 300, what="the first run to train")
        manager.submit("bob", small.replace(train={"seed": 42}))  # ann's run pauses after its epoch for bob's
        wait_until(
            lambda: manager.snapshot(first.id).status == "queued" and manager.snapshot(first.id).epochs,
            300,
            what="ann's run to pause",
        )
        manager.stop(first.id)
        stopped = manager.snapshot(first.id)
        assert (stopped.status, len(stopped.epochs)) == ("stopped", 1)
        model = manager.model(first.id)
        assert model is not None and sum(p.numel() for p in model.parameters()) == stopped.params
        assert manager.store.weights(first.run.id) is not None  # Inspect finds it after a restart too
    finally:
        manager.shutdown(timeout=60)


# ---------------------------------------------------------------------------------------------------------------
# Proofs over seeds
# ---------------------------------------------------------------------------------------------------------------


def test_a_proof_queues_as_one_new_run_and_its_other_seeds_wait_behind_classmates(make_manager):
    runner = FakeRunner()
    manager = make_manager(runner, max_running=1)
    seeds = manager.prove("ann", cfg(1), label="Final", seeds=3)
    classmate = manager.submit("bob", cfg(7))  # asked after the proof, but a new run: it goes before seeds 2 and 3
    assert [t.run.config.train.seed for t in seeds] == [1, 2, 3]
    assert len({t.proof for t in seeds}) == 1 and seeds[0].proof.startswith("proof-")
    wait_batches(manager, seeds[0])
    assert [manager.snapshot(t.id).queue_position for t in [classmate, *seeds[1:]]] == [1, 2, 3]
    # The proof is the student's one run: asking again (either button) gives its tickets back.
    assert [t.id for t in manager.prove("ann", cfg(1), seeds=3)] == [t.id for t in seeds]
    assert manager.submit("ann", cfg(5), one_at_a_time=True).id == seeds[-1].id
    # When its first seed ends, the classmate's new run takes the slot, then the proof's other seeds.
    runner.release(1)
    wait_until(lambda: runner.started[:2] == [1, 7], what="the classmate's run to start second")
    for seed in (7, 2, 3):
        wait_until(lambda seed=seed: seed in runner.started, what=f"seed {seed} to start")
        runner.release(seed)
    assert runner.started == [1, 7, 2, 3]
    for ticket in seeds:
        wait_status(manager, ticket, "finished")
    assert [s.proof for s in manager.snapshots("ann")] == [seeds[0].proof] * 3


def test_a_proof_shares_seeds_trained_before_and_stop_stops_every_seed(make_manager):
    runner = FakeRunner()
    manager = make_manager(runner, max_running=1)
    earlier = manager.submit("bob", cfg(1))
    runner.release(1)
    wait_status(manager, earlier, "finished")
    seeds = manager.prove("ann", cfg(1), seeds=2)
    assert manager.snapshot(seeds[0].id).reused and manager.snapshot(seeds[0].id).status == "finished"
    wait_batches(manager, seeds[1])
    for run in manager.snapshots("ann"):  # the Train page's Stop
        if run.status in ("queued", "running"):
            manager.stop(run.ticket_id)
    assert wait_status(manager, seeds[1], "stopped").reason == "stopped by the student"
    assert runner.started == [1, 2], "the seed trained before was not trained again"


def test_a_proof_survives_a_restart_and_proof_of_reads_finished_seeds(make_manager, tmp_path):
    from drill.store import RunStore

    path = tmp_path / "runs.sqlite"
    runner = FakeRunner()
    manager = make_manager(runner, store=RunStore(path))
    assert manager.proof_of(cfg(1), 2) is None
    seeds = manager.prove("ann", cfg(1), seeds=2)
    assert manager.proof_of(cfg(1), 2) is None, "no verdict while a seed trains"
    for seed in (1, 2):
        runner.release(seed)
    for ticket in seeds:
        wait_status(manager, ticket, "finished")
    proof = manager.proof_of(cfg(1), 2)
    assert [s.seed for s in proof.seeds] == [1, 2] and not proof.proven  # the fake runner's 91% test
    manager.shutdown()
    again = make_manager(FakeRunner(), store=RunStore(path))
    assert [s.proof for s in again.snapshots("ann")] == [seeds[0].proof] * 2
    assert [s.seed for s in again.proof_of(cfg(1), 2).seeds] == [1, 2]


@pytest.mark.parametrize("count", [1, 6, 0, True, 2.5])
def test_a_proof_of_a_wrong_number_of_seeds_is_refused_with_what_is_allowed(make_manager, count):
    with pytest.raises(ValueError, match=r"Seeds .* is not allowed: a proof trains 2 to 5 seeds"):
        make_manager().prove("ann", cfg(1), seeds=count)
