"""Where runs train, behind one small interface, so the job manager's queue, turns, sharing and store behave the
same whichever is chosen ($DRILL_BACKEND):

- `threads`: in the server's own process, one thread per run. Nothing to start, but every op of a training step
  needs the GIL back, so a class's page reruns take their share of training time.
- `processes`: a worker process per training slot, started by the server; events come back over a pipe to a thread
  that records them. Training never shares a GIL with Streamlit's threads.
- `ray`: an actor per slot on a Ray cluster (drill.raybackend), for a class that outgrows one server.

A backend calls on_event and on_end from threads of its own, never from start(), so the manager may hold its lock
while starting a job.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from drill.checkpoint import Checkpoint
from drill.config import RunConfig
from drill.data import Mnist, load_mnist
from drill.model import build_model
from drill.run_record import Status
from drill.store import pack_weights, unpack_weights
from drill.train import RunResult, device_type, train

log = logging.getLogger(__name__)

BACKENDS = ("threads", "processes", "ray")
OnEvent = Callable[[str, dict], None]


@dataclass(frozen=True)
class Job:
    """One run to train (or to go on with from its checkpoint)."""

    run_id: str
    config: RunConfig
    threads: int
    resume: Checkpoint | None = None
    pause_now: bool = False  # a new run waits already: give the slot up after the next epoch
    checkpoints: bool = False  # report a "checkpoint" event after every epoch but the last (a store keeps them)


@dataclass
class Outcome:
    """How a job ended on its backend."""

    status: Status  # finished, stopped, failed, or paused (checkpoint set)
    reason: str = ""
    seconds: float = 0.0
    model: nn.Module | None = None
    checkpoint: Checkpoint | None = None
    lost: str = ""  # set when the worker or machine under the run went away: what happened, for the student

    @classmethod
    def of_lost_run(cls, what: str) -> Outcome:
        """A run whose worker or machine went away (what: how, in the student's words)."""
        return cls(status=Status.FAILED, reason=f"{what}; start it again", lost=what)

    @classmethod
    def of_error(cls, error: Exception) -> Outcome:
        """A job that raised before training could report its end (a worker that could not start, say)."""
        return cls(status=Status.FAILED, reason=f"{type(error).__name__}: {error}")

    @classmethod
    def from_result(cls, result: RunResult) -> Outcome:
        """A training result as an outcome (its model only if it trained at least an epoch)."""
        model = result.model if result.epochs else None
        return cls(
            status=result.status,
            reason=result.reason,
            seconds=result.seconds,
            model=model,
            checkpoint=result.checkpoint,
        )

    def to_wire(self) -> dict:
        """Plain data for another process or machine: numbers, strings and raw bytes."""
        return {
            "status": str(self.status),
            "reason": self.reason,
            "seconds": self.seconds,
            "weights": pack_weights(self.model.state_dict()) if self.model is not None else None,
            "checkpoint": self.checkpoint.to_bytes() if self.checkpoint is not None else None,
        }

    @classmethod
    def from_wire(cls, wire: dict, config: RunConfig) -> Outcome:
        """The inverse of to_wire; the model is rebuilt here from the raw weights."""
        model = None
        if wire["weights"] is not None:
            model = build_model(config.model)
            model.load_state_dict(unpack_weights(wire["weights"]))
            model.eval()
        checkpoint = Checkpoint.from_bytes(wire["checkpoint"]) if wire["checkpoint"] is not None else None
        return cls(
            status=Status(wire["status"]),
            reason=wire["reason"],
            seconds=wire["seconds"],
            model=model,
            checkpoint=checkpoint,
        )


def job_to_wire(job: Job) -> dict:
    """A job as plain data: the validated config as a dict, the checkpoint as bytes (nothing to unpickle but these)."""
    return {
        "run_id": job.run_id,
        "config": job.config.to_dict(),
        "threads": job.threads,
        "resume": job.resume.to_bytes() if job.resume is not None else None,
        "pause_now": job.pause_now,
        "checkpoints": job.checkpoints,
    }


def train_wire_job(wire: dict, data: Mnist, on_event: OnEvent, stop: threading.Event, pause: threading.Event) -> dict:
    """Train a job sent as plain data, where it lands (a worker process, a Ray actor); its outcome as plain data.

    The config is validated again here: what crossed a wire is checked before it is used.
    """
    config = RunConfig.from_dict(wire["config"])
    resume = Checkpoint.from_bytes(wire["resume"]) if wire["resume"] is not None else None
    result = train(
        config,
        data,
        on_event,
        stop,
        wire["threads"],
        pause=pause.is_set,
        resume=resume,
        checkpoints=wire["checkpoints"],
    )
    return Outcome.from_result(result).to_wire()


class Handle:
    """A job being trained: stop it (within a batch), or ask it to pause after its next epoch."""

    def __init__(self, pause_now: bool = False):
        self.stop_event = threading.Event()
        self.pause_event = threading.Event()
        if pause_now:
            self.pause_event.set()

    def stop(self) -> None:
        """Stop the job within a batch."""
        self.stop_event.set()
        self._relay("stop", True)

    def want_pause(self, wanted: bool) -> None:
        """Ask the job to pause after its next epoch (or not any more)."""
        if wanted == self.pause_event.is_set():
            return
        (self.pause_event.set if wanted else self.pause_event.clear)()
        self._relay("pause", wanted)

    def _relay(self, command: str, value: bool) -> None:
        """Pass a command on to where the job trains (nothing to do in this process)."""


class Followers:
    """The threads that follow a backend's jobs, one a job, named for its run (no thread may outlive its job)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()

    def start(self, run_id: str, follow: Callable[..., None], *args) -> threading.Thread:
        """Run follow(*args) in a new thread."""

        def run() -> None:
            try:
                follow(*args)
            finally:
                with self._lock:
                    self._threads.discard(threading.current_thread())

        thread = threading.Thread(target=run, name=f"drill-{run_id}", daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()
        return thread

    def join(self, timeout: float) -> None:
        """Wait for every thread following a job (the manager has stopped the jobs)."""
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)


def local_device_type(config: RunConfig) -> str:
    """The device type a run of config trains on in this machine's processes."""
    return device_type(config.train.device)


class Unavailable:
    """Stands in for a backend that could not be set up: every page says why, and runs fail with it."""

    name = "unavailable"
    threads_per_job = 1

    def __init__(self, problem: str):
        self._problem = problem

    def problem(self) -> str:
        return self._problem

    def slots(self) -> int:
        return 0

    device_type = staticmethod(local_device_type)

    def start(self, job: Job, on_event: OnEvent, on_end: Callable[[Outcome], None]) -> Handle:
        raise RuntimeError(self._problem)  # never called: the manager starts nothing on a backend with a problem

    def shutdown(self, timeout: float) -> None:
        """Nothing to stop."""


def default_slots() -> int:
    """How many runs train at once: $DRILL_MAX_JOBS, else one per CPU this process may use."""
    text = os.environ.get("DRILL_MAX_JOBS", "")
    if not text:
        return usable_cpus()
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"DRILL_MAX_JOBS={text!r} is not allowed: a whole number of runs, 1 or more")
    return int(text)


def usable_cpus() -> int:
    """CPUs this process may run on (a container's limit, unlike os.cpu_count())."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class ThreadBackend:
    """Runs train in threads of this process: at most max_running at once."""

    name = "threads"

    def __init__(
        self,
        max_running: int | None = None,
        data: Callable[[], Mnist] = load_mnist,
        runner: Callable[..., RunResult] = train,
    ):
        self.max_running = max_running or default_slots()
        self.threads_per_job = max(1, usable_cpus() // self.max_running)
        self._data = data
        self._runner = runner
        self._followers = Followers()

    def problem(self) -> str | None:
        """Why runs cannot train here, if they cannot."""
        return None

    def slots(self) -> int:
        """Runs that may train at once now."""
        return self.max_running

    device_type = staticmethod(local_device_type)  # the device type a run of a config trains on here

    def start(self, job: Job, on_event: OnEvent, on_end: Callable[[Outcome], None]) -> Handle:
        """Train the job in a new thread."""
        handle = Handle(job.pause_now)
        self._followers.start(job.run_id, self._work, job, handle, on_event, on_end)
        return handle

    def _work(self, job: Job, handle: Handle, on_event: OnEvent, on_end: Callable[[Outcome], None]) -> None:
        try:
            result = self._runner(
                job.config,
                self._data(),
                on_event,
                handle.stop_event,
                threads=job.threads,
                pause=handle.pause_event.is_set,
                resume=job.resume,
                checkpoints=job.checkpoints,
            )
            outcome = Outcome.from_result(result)
        except Exception as error:  # data missing or a bug: the student still sees the run, failed, with why
            log.exception("run %s failed", job.run_id)
            outcome = Outcome.of_error(error)
        on_end(outcome)

    def shutdown(self, timeout: float) -> None:
        """Wait for the jobs' threads (the manager has stopped them)."""
        self._followers.join(timeout)


class _ProcessHandle(Handle):
    """A job in a worker process: commands go down the worker's pipe."""

    def __init__(self, worker: _Worker, pause_now: bool):
        super().__init__(pause_now)
        self.worker = worker

    def _relay(self, command: str, value: bool) -> None:
        worker = self.worker
        if worker is not None:  # None once the run left it: its next run is someone else's
            worker.send((command, value))


class _Worker:
    """One worker process and the pipe to it."""

    def __init__(self, context):
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child,), name="drill-worker", daemon=True)
        self.process.start()
        child.close()
        self._send_lock = threading.Lock()

    def send(self, message) -> None:
        with self._send_lock:
            try:
                self.conn.send(message)
            except (OSError, ValueError):  # the worker is gone; its driver thread reports that
                pass

    def alive(self) -> bool:
        return self.process.is_alive()


class ProcessBackend:
    """Runs train in worker processes, one per slot, started when first needed and kept warm for the next run.

    Why: a run in a thread of the server must take the GIL back after each of its many small torch calls, from
    whichever of the class's script runs holds it. A worker has a GIL of its own. Measured with the server on one
    core and 30 polling tabs on the other (results/load-threads-pinned.*, load-processes-pinned.*), neither backend
    slowed a run's epoch (4.5 s alone, 4.4 s under the load on threads) and the core was 99% busy while runs waited,
    so on today's pages `threads` loses nothing and stays the default. py-spy over that load with the queue full
    (results/load-threads-py-spy.*): the GIL was held 12% of the time, so a run and the pages share the core's time
    rather than queue for the GIL. 30 busy Python threads beside a run slow it
    about alike in a thread and in a worker (results/contention.md). The worker is for servers whose pages cost
    more than those, at the price of a second copy of torch in memory.
    """

    name = "processes"

    def __init__(self, max_running: int | None = None):
        self.max_running = max_running or default_slots()
        self.threads_per_job = max(1, usable_cpus() // self.max_running)
        # spawn, not fork: a forked copy of a server with live OpenMP and Streamlit threads can deadlock.
        self._context = multiprocessing.get_context("spawn")
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._followers = Followers()
        self._lock = threading.Lock()
        self._closed = False

    def problem(self) -> str | None:
        return None

    def slots(self) -> int:
        return self.max_running

    device_type = staticmethod(local_device_type)

    def start(self, job: Job, on_event: OnEvent, on_end: Callable[[Outcome], None]) -> Handle:
        """Send the job to an idle worker (starting one if none is), and follow it from a thread."""
        with self._lock:
            while self._idle and not self._idle[-1].alive():
                self._idle.pop()
            worker = self._idle.pop() if self._idle else _Worker(self._context)
            self._busy.add(worker)
        handle = _ProcessHandle(worker, job.pause_now)
        self._followers.start(job.run_id, self._follow, worker, job, handle, on_event, on_end)
        return handle

    def _follow(self, worker: _Worker, job: Job, handle: Handle, on_event: OnEvent, on_end) -> None:
        """Pass the worker's events on until the job ends, or the worker dies."""
        outcome, ended = None, False
        try:
            worker.send(("job", job_to_wire(job)))
            # What the manager asked since the job was made (the job carries the pause flag of that moment).
            worker.send(("pause", handle.pause_event.is_set()))
            if handle.stop_event.is_set():
                worker.send(("stop", True))
            while outcome is None:
                message = worker.conn.recv()
                if message[0] == "event":
                    on_event(message[1], message[2])
                else:
                    outcome, ended = Outcome.from_wire(message[1], job.config), True
        except (EOFError, OSError):
            worker.process.join(5)
            code = worker.process.exitcode
            log.error("the worker process training run %s died (exit code %s)", job.run_id, code)
            outcome = Outcome.of_lost_run(f"the worker process training it died (exit code {code})")
        except Exception as error:
            log.exception("run %s failed", job.run_id)
            outcome = Outcome.of_error(error)
        finally:
            handle.worker = None
            with self._lock:
                self._busy.discard(worker)
                if ended and worker.alive() and not self._closed:
                    self._idle.append(worker)
                else:  # lost, closing, or still training a run nobody follows any more
                    worker.process.kill()
        on_end(outcome)

    def shutdown(self, timeout: float) -> None:
        """Wait for the followed jobs (the manager has stopped them), then end the workers."""
        with self._lock:
            self._closed = True
        self._followers.join(timeout)
        with self._lock:
            workers, self._idle = self._idle + list(self._busy), []
        for worker in workers:
            worker.send(("quit", True))
        deadline = time.monotonic() + timeout
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.alive():
                worker.process.kill()


def _worker_main(conn) -> None:
    """A worker process: train the jobs it is sent, one at a time, listening for stop and pause meanwhile."""
    import signal

    import torch

    # Ctrl-C or a service manager's SIGTERM reach the whole process group: the server stops its runs (leaving them
    # to resume), and a worker killed first would turn each into a lost run.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    torch.set_num_threads(1)
    data: Mnist | None = None
    jobs: list[dict] = []
    stop, pause, ready = threading.Event(), threading.Event(), threading.Event()
    send_lock = threading.Lock()

    def send(message) -> None:
        with send_lock:
            conn.send(message)

    def listen() -> None:
        while True:
            try:
                command, value = conn.recv()
            except (EOFError, OSError):
                command, value = "quit", True
            if command == "job":
                stop.clear()
                (pause.set if value["pause_now"] else pause.clear)()
                jobs.append(value)
                ready.set()
            elif command == "stop":
                stop.set()
            elif command == "pause":
                (pause.set if value else pause.clear)()
            elif command == "quit":
                stop.set()
                jobs.append(None)
                ready.set()
                return

    threading.Thread(target=listen, daemon=True).start()
    while True:
        ready.wait()
        ready.clear()
        while jobs:
            job = jobs.pop(0)
            if job is None:
                return
            try:
                data = data or load_mnist()
                outcome = train_wire_job(job, data, lambda e, p: send(("event", e, p)), stop, pause)
            except Exception as error:
                outcome = Outcome.of_error(error).to_wire()
            send(("end", outcome))
