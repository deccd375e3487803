"""Background runner: a process-wide job manager that trains in threads, with a FIFO queue and an orphan reaper.

Threads here never touch the UI: each job writes only to its own lock-protected state, which pages read through
snapshots. Sessions prove they are alive by calling touch(); a job whose owner stops touching (tab closed) is
stopped after a grace period by its own thread, so no thread outlives its job or its student.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from drill.config import RunConfig
from drill.data import Mnist, load_mnist
from drill.train import RunResult, train

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running")
FORGET_AFTER_S = 3600.0  # an owner silent this long has left: their ended runs are freed
MAX_BATCH_POINTS = 2000  # batch-loss points kept per job; older ones are thinned so long runs stay light


@dataclass(frozen=True)
class Snapshot:
    """A consistent copy of a job's state, safe to read from any thread."""

    id: str
    owner: str
    label: str
    config: RunConfig
    status: str  # queued, running, finished, stopped, failed
    reason: str
    params: int | None
    epochs: tuple[dict, ...]
    batch_losses: tuple[tuple[float, float], ...]  # (epoch as a fraction, e.g. 2.5, loss)
    progress: dict  # epoch, batch, batches, images_per_s, eta_s, lr
    queue_position: int | None  # 1-based place in the queue while queued
    created: float
    seconds: float


@dataclass
class Job:
    """One training run and everything the pages show about it."""

    id: str
    owner: str
    label: str
    config: RunConfig
    created: float = field(default_factory=time.time)
    status: str = "queued"
    reason: str = ""
    params: int | None = None
    epochs: list[dict] = field(default_factory=list)
    batch_losses: list[tuple[float, float]] = field(default_factory=list)
    progress: dict = field(default_factory=dict)
    seconds: float = 0.0
    result: RunResult | None = None
    stop_event: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None

    def on_event(self, event: str, payload: dict) -> None:
        """The training callback: record what happened under the lock."""
        with self.lock:
            if event == "start":
                self.params = payload["params"]
                self.progress = {"epoch": 1, "batch": 0, "batches": payload["batches"], "epochs": payload["epochs"]}
            elif event == "batch":
                self._record_batch(payload)
            elif event == "epoch":
                self.epochs.append(payload)

    def _record_batch(self, payload: dict) -> None:
        position = payload["epoch"] - 1 + payload["batch"] / payload["batches"]
        self.batch_losses.append((position, payload["loss"]))
        if len(self.batch_losses) > MAX_BATCH_POINTS:
            self.batch_losses = self.batch_losses[::2]
        done = (payload["epoch"] - 1) * payload["batches"] + payload["batch"]
        total = self.progress["epochs"] * payload["batches"]
        rate = payload["images_per_s"] / self.config.train.batch_size  # batches per second
        self.progress.update(
            epoch=payload["epoch"],
            batch=payload["batch"],
            images_per_s=payload["images_per_s"],
            lr=payload["lr"],
            eta_s=(total - done) / rate if rate else None,
        )

    def snapshot(self, queue_position: int | None = None) -> Snapshot:
        """A consistent copy of this job's state."""
        with self.lock:
            return Snapshot(
                self.id,
                self.owner,
                self.label,
                self.config,
                self.status,
                self.reason,
                self.params,
                tuple(dict(e) for e in self.epochs),
                tuple(self.batch_losses),
                dict(self.progress),
                queue_position,
                self.created,
                self.seconds,
            )


def default_max_running() -> int:
    """How many runs train at once: $DRILL_MAX_JOBS, else one per CPU core."""
    text = os.environ.get("DRILL_MAX_JOBS", "")
    if not text:
        return os.cpu_count() or 1
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"DRILL_MAX_JOBS={text!r} is not allowed: a whole number of runs, 1 or more")
    return int(text)


class JobManager:
    """Runs trainings in threads: at most max_running at once, the rest in a FIFO queue."""

    def __init__(
        self,
        max_running: int | None = None,
        # Browsers throttle a hidden tab's timers to about one tick a minute after five minutes, so a student
        # reading another tab must not lose a run; a closed tab is still noticed within minutes.
        grace_s: float = 300.0,
        data: Callable[[], Mnist] = load_mnist,
        runner: Callable[..., RunResult] = train,
    ):
        self.max_running = max_running or default_max_running()
        self.threads_per_job = max(1, (os.cpu_count() or 1) // self.max_running)
        self.grace_s = grace_s
        self._data = data
        self._runner = runner
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._queue: deque[str] = deque()
        self._seen: dict[str, float] = {}  # owner -> last heartbeat (monotonic seconds)
        self._ids = itertools.count(1)
        _MANAGERS.add(self)

    # -- what sessions call -----------------------------------------------------------------------------------
    def submit(self, owner: str, config: RunConfig, label: str = "") -> Job:
        """Queue a run for an owner; it starts as soon as a slot is free."""
        with self._lock:
            job = Job(f"run-{next(self._ids)}", owner, label, config)
            self._jobs[job.id] = job
            self._queue.append(job.id)
            self._seen[owner] = time.monotonic()
        self._dispatch()
        return job

    def add_finished(self, owner: str, record: dict, label: str = "") -> Job:
        """Register a run finished elsewhere (an imported record), so it shows beside this session's runs."""
        config = RunConfig.from_dict(record["config"])
        with self._lock:
            job = Job(
                f"run-{next(self._ids)}",
                owner,
                label,
                config,
                status=record.get("status", "finished"),
                reason=record.get("reason", ""),
                params=record.get("params"),
                epochs=[dict(e) for e in record["epochs"]],
                seconds=record.get("seconds", 0.0),
            )
            self._jobs[job.id] = job
        return job

    def touch(self, owner: str) -> None:
        """Heartbeat: the owner's page is still open; also the moment to clear out what closed tabs left."""
        with self._lock:
            self._seen[owner] = time.monotonic()
            self._sweep()

    def _sweep(self) -> None:
        """Drop queued runs of closed tabs (so the queue positions others see are true) and forget long-gone owners.

        Called with the manager's lock held.
        """
        now = time.monotonic()
        for job_id in [j for j in self._queue if not self._alive(self._jobs[j].owner)]:
            self._queue.remove(job_id)
            job = self._jobs[job_id]
            with job.lock:
                job.status, job.reason = "stopped", "the page was closed before the run started"
        # A finished run keeps its model in memory; a class server running all day must let go of them.
        gone = {owner for owner, seen in self._seen.items() if now - seen > FORGET_AFTER_S}
        for job_id in [j.id for j in self._jobs.values() if j.owner in gone and j.status not in ACTIVE]:
            del self._jobs[job_id]
        for owner in gone - {j.owner for j in self._jobs.values()}:
            del self._seen[owner]

    def stop(self, job_id: str, reason: str = "stopped by the student") -> None:
        """Stop a running job within a batch, or take a queued one out of the queue."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return
            if job.id in self._queue:
                self._queue.remove(job.id)
                with job.lock:
                    job.status, job.reason = "stopped", reason + " before it started"
                return
        with job.lock:
            if job.status == "running" and not job.reason:
                job.reason = reason
        job.stop_event.set()

    def get(self, job_id: str) -> Job | None:
        """The job with this id, if any."""
        with self._lock:
            return self._jobs.get(job_id)

    def snapshots(self, owner: str) -> list[Snapshot]:
        """Snapshots of an owner's jobs, oldest first, with queue positions."""
        with self._lock:
            jobs = [job for job in self._jobs.values() if job.owner == owner]
            positions = self._queue_positions()
        return [job.snapshot(positions.get(job.id)) for job in jobs]

    def snapshot(self, job_id: str) -> Snapshot | None:
        """A snapshot of one job, with its queue position."""
        with self._lock:
            job = self._jobs.get(job_id)
            position = self._queue_positions().get(job_id)
        return job.snapshot(position) if job else None

    def _queue_positions(self) -> dict[str, int]:
        """Job id -> 1-based place in the queue; called with the manager's lock held."""
        return {job_id: place for place, job_id in enumerate(self._queue, start=1)}

    def active_count(self, owner: str) -> int:
        """How many of an owner's runs are queued or running (cheap: no snapshots)."""
        with self._lock:
            return sum(job.owner == owner and job.status in ACTIVE for job in self._jobs.values())

    def running_count(self) -> int:
        """Jobs training right now."""
        with self._lock:
            return sum(job.status == "running" for job in self._jobs.values())

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop every job and wait for their threads (server shutdown)."""
        with self._lock:
            jobs = list(self._jobs.values())
            self._queue.clear()
        for job in jobs:
            with job.lock:
                if job.status == "queued":
                    job.status, job.reason = "stopped", "the server stopped before it started"
                elif job.status == "running" and not job.reason:
                    job.reason = "the server stopped"
            job.stop_event.set()
        for job in jobs:
            if job.thread is not None:
                job.thread.join(timeout)

    # -- internals ---------------------------------------------------------------------------------------------
    def _alive(self, owner: str) -> bool:
        return time.monotonic() - self._seen.get(owner, 0.0) <= self.grace_s

    def _dispatch(self) -> None:
        """Start queued jobs while slots are free, after dropping those of owners gone quiet."""
        with self._lock:
            self._sweep()
            while self._queue and sum(j.status == "running" for j in self._jobs.values()) < self.max_running:
                job = self._jobs[self._queue.popleft()]
                with job.lock:
                    job.status = "running"
                job.thread = threading.Thread(target=self._work, args=(job,), name=f"drill-{job.id}", daemon=True)
                job.thread.start()

    def _work(self, job: Job) -> None:
        """A job's thread: train, watching the owner's heartbeat, then hand the slot on."""

        def callback(event: str, payload: dict) -> None:
            job.on_event(event, payload)
            if event == "batch" and not self._alive(job.owner):
                with job.lock:
                    job.reason = job.reason or f"the page stopped polling for {self.grace_s:.0f} s (tab closed?)"
                job.stop_event.set()

        try:
            result = self._runner(job.config, self._data(), callback, job.stop_event, threads=self.threads_per_job)
            with job.lock:
                job.result = result
                job.status = result.status
                job.reason = job.reason if result.status == "stopped" and job.reason else result.reason
                job.seconds = result.seconds
        except Exception as error:  # data missing or a bug: the student still sees the run, failed, with why
            log.exception("job %s failed", job.id)
            with job.lock:
                job.status, job.reason = "failed", f"{type(error).__name__}: {error}"
        finally:
            self._dispatch()


_MANAGERS: weakref.WeakSet[JobManager] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    """Stop every manager's jobs when the process exits, so the server stops promptly."""
    for manager in list(_MANAGERS):
        manager.shutdown(timeout=5.0)
