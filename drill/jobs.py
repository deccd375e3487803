"""Background runner: a process-wide job manager that trains in threads, with a fair queue and an orphan reaper.

Threads here never touch the UI: each job writes only to its own lock-protected state, which pages read through
snapshots. Sessions prove they are alive by calling touch(); a job whose owner stops touching (tab closed) is
stopped after a grace period by its own thread, so no thread outlives its job or its student.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import secrets
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from drill.config import RunConfig
from drill.data import Mnist, load_mnist
from drill.model import build_model
from drill.store import RunRow, RunStore, TicketRow
from drill.train import RunResult, train

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running")
FORGET_AFTER_S = 3600.0  # an owner silent this long has left: their ended runs are freed
MAX_BATCH_POINTS = 2000  # batch-loss points kept per job; older ones are thinned so long runs stay light


@dataclass(frozen=True)
class Snapshot:
    """A consistent copy of what one student sees of a run, safe to read from any thread."""

    id: str  # the student's ticket
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
    watchers: int = 1  # students following this very run (a class starting the same step shares one)
    reused: bool = False  # served from an identical run trained earlier, not trained for this student
    run_id: str = ""  # the training behind the ticket, shared by every student following it


@dataclass
class Run:
    """One training and everything the pages show about it; students follow it through tickets."""

    id: str
    config: RunConfig
    key: str = ""
    source: str = "trained"  # or "imported": a student's file, never served to anyone else
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
    thread: threading.Thread | None = None  # set once it has started: a queued run with a thread is paused
    wake: threading.Event = field(default_factory=threading.Event)  # a paused run's turn has come (or its end)
    paused_s: float = 0.0  # time spent paused, left out of the run's seconds

    def __post_init__(self):
        self.key = self.key or config_key(self.config)

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

    def row(self) -> RunRow:
        """This run as the store keeps it."""
        with self.lock:
            return RunRow(
                self.id,
                self.key,
                self.source,
                self.config.to_dict(),
                self.status,
                self.reason,
                self.params,
                [dict(e) for e in self.epochs],
                list(self.batch_losses),
                self.seconds,
                self.created,
            )

    @classmethod
    def from_row(cls, row: RunRow) -> Run:
        """A stored run, back in memory (its model is rebuilt from the stored weights when asked for)."""
        return cls(
            row.id,
            RunConfig.from_dict(row.config),
            key=row.key,
            source=row.source,
            created=row.created,
            status=row.status,
            reason=row.reason,
            params=row.params,
            epochs=row.epochs,
            batch_losses=row.batch_losses,
            seconds=row.seconds,
        )


@dataclass
class Ticket:
    """One student's claim on a run. Leaving a shared run early cuts the ticket: it keeps what was seen so far."""

    id: str
    owner: str
    label: str
    run: Run
    created: float = field(default_factory=time.time)
    reused: bool = False
    cut: tuple[int, float, str] | None = None  # (epochs seen, batch position, reason) when the student left

    def snapshot(self, queue_position: int | None = None, watchers: int = 1) -> Snapshot:
        """A consistent copy of this student's view of the run."""
        run = self.run
        with run.lock:
            status, reason, epochs, losses = run.status, run.reason, run.epochs, run.batch_losses
            progress, seconds = dict(run.progress), run.seconds
            if self.cut is not None:
                seen, position, reason = self.cut
                status, epochs, progress = "stopped", epochs[:seen], {}
                losses = [point for point in losses if point[0] <= position]
                queue_position = None
            return Snapshot(
                self.id,
                self.owner,
                self.label,
                run.config,
                status,
                reason,
                run.params,
                tuple(dict(e) for e in epochs),
                tuple(losses),
                progress,
                queue_position,
                self.created,
                seconds,
                watchers,
                self.reused,
                run.id,
            )

    def row(self) -> TicketRow:
        """This ticket as the store keeps it."""
        return TicketRow(self.id, self.owner, self.run.id, self.label, self.created, self.cut)


def config_key(config: RunConfig) -> str:
    """What makes two runs the same training: the whole config, seed included; the thread count only sets speed."""
    return hashlib.sha256(config.replace(train={"threads": 0}).to_json().encode()).hexdigest()


def new_id(prefix: str) -> str:
    """A short random id, unique across server restarts (the store outlives the process)."""
    return f"{prefix}-{secrets.token_hex(6)}"


def default_max_running() -> int:
    """How many runs train at once: $DRILL_MAX_JOBS, else one per CPU core."""
    text = os.environ.get("DRILL_MAX_JOBS", "")
    if not text:
        return os.cpu_count() or 1
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"DRILL_MAX_JOBS={text!r} is not allowed: a whole number of runs, 1 or more")
    return int(text)


def _is_active(ticket: Ticket) -> bool:
    """Whether a ticket's run is queued or running for its owner (who has not left it)."""
    return ticket.cut is None and ticket.run.status in ACTIVE


class JobManager:
    """Runs trainings in threads: at most max_running at once, the rest in a queue.

    The queue is fair to a class that starts at once: a running run that ends an epoch while a run that has not
    started waits gives up its slot and waits in turn, so every student sees a first curve point after about one
    epoch per run ahead of theirs, not after whole runs. New runs go first, then paused ones, each in the order
    they came; a run never pauses after its last epoch, and pausing changes nothing it computes.

    Identical requests share one run: a run already going gains a watcher, and a finished one is served from the
    store at once, since training is deterministic for a config and its seed. Everything is written to the store as
    it happens, so a student's runs survive a page reload and a server restart.
    """

    def __init__(
        self,
        max_running: int | None = None,
        # Browsers throttle a hidden tab's timers to about one tick a minute after five minutes, so a student
        # reading another tab must not lose a run; a closed tab is still noticed within minutes.
        grace_s: float = 300.0,
        data: Callable[[], Mnist] = load_mnist,
        runner: Callable[..., RunResult] = train,
        store: RunStore | None = None,
    ):
        self.max_running = max_running or default_max_running()
        self.threads_per_job = max(1, (os.cpu_count() or 1) // self.max_running)
        self.grace_s = grace_s
        self.store = store or RunStore()
        self._data = data
        self._runner = runner
        self._lock = threading.Lock()
        self._runs: dict[str, Run] = {}
        self._tickets: dict[str, Ticket] = {}
        self._queue: deque[str] = deque()  # run ids
        self._seen: dict[str, float] = {}  # owner -> last heartbeat (monotonic seconds)
        self._loaded: set[str] = set()  # owners whose stored tickets are in memory
        _MANAGERS.add(self)

    # -- what sessions call -----------------------------------------------------------------------------------
    def submit(self, owner: str, config: RunConfig, label: str = "", one_at_a_time: bool = False) -> Ticket:
        """A run of config for an owner: the identical run if one is going or finished, else a new one, queued.

        With one_at_a_time, an owner who already has a run going gets its ticket back instead, checked under the
        same lock: Streamlit can run one click's callback twice at once (it replays a click whose rerun was cut
        short), and a check made before submitting let one student of 30 start twice in a load test.
        """
        key = config_key(config)
        with self._lock:
            self._load(owner)
            self._seen[owner] = time.monotonic()
            if one_at_a_time and (going := [t for t in self._tickets.values() if t.owner == owner and _is_active(t)]):
                return max(going, key=lambda t: t.created)
            run = self._shared_run(key)
            reused = run is not None and run.status == "finished"
            if run is None and (row := self.store.finished_run(key)) is not None:
                run, reused = self._runs.setdefault(row.id, Run.from_row(row)), True
            if run is None:
                run = Run(new_id("run"), config, key=key)
                self._runs[run.id] = run
                self._queue.append(run.id)
                self.store.save_run(run.row())
            ticket = Ticket(new_id("ticket"), owner, label, run, reused=reused)
            self._tickets[ticket.id] = ticket
            self.store.save_ticket(ticket.row())
        self._dispatch()
        return ticket

    def add_finished(self, owner: str, record: dict, label: str = "") -> Ticket:
        """Register a run finished elsewhere (an imported record), so it shows beside this session's runs."""
        run = Run(
            new_id("run"),
            RunConfig.from_dict(record["config"]),
            source="imported",
            status=record.get("status", "finished"),
            reason=record.get("reason", ""),
            params=record.get("params"),
            epochs=[dict(e) for e in record["epochs"]],
            seconds=record.get("seconds", 0.0),
        )
        self.store.save_run(run.row())
        with self._lock:
            self._load(owner)
            self._runs[run.id] = run
            ticket = Ticket(new_id("ticket"), owner, label, run)
            self._tickets[ticket.id] = ticket
            self.store.save_ticket(ticket.row())
        return ticket

    def touch(self, owner: str) -> None:
        """Heartbeat: the owner's page is still open; also the moment to clear out what closed tabs left."""
        with self._lock:
            self._load(owner)
            self._seen[owner] = time.monotonic()
            self._sweep()

    def stop(self, ticket_id: str, reason: str = "stopped by the student") -> None:
        """Stop following a run. A run nobody else follows stops within a batch (or leaves the queue); a shared one
        goes on for the others, and this student keeps what they saw so far."""
        with self._lock:
            ticket = self._tickets.get(ticket_id)
            if ticket is None or ticket.cut is not None or ticket.run.status not in ACTIVE:
                return
            run = ticket.run
            if self._watchers(run, alive_only=True) - {ticket.id}:
                with run.lock:
                    position = run.batch_losses[-1][0] if run.batch_losses else 0.0
                    ticket.cut = (
                        len(run.epochs),
                        position,
                        f"{reason} (the run goes on for the classmates sharing it)",
                    )
                self.store.save_ticket(ticket.row())
                return
            if run.id in self._queue:
                self._drop_queued(run, reason)
                return
        with run.lock:
            if run.status == "running" and not run.reason:
                run.reason = reason
        run.stop_event.set()

    def get(self, ticket_id: str) -> Ticket | None:
        """The ticket with this id, if any."""
        with self._lock:
            return self._tickets.get(ticket_id)

    def model(self, ticket_id: str) -> nn.Module | None:
        """The trained model behind a ticket: the one in memory, or rebuilt from the stored weights.

        None for a run with no weights (imported, or ended before training) and for a ticket cut from a shared run,
        whose model trained on past what its student saw.
        """
        ticket = self.get(ticket_id)
        if ticket is None or ticket.cut is not None or ticket.run.status in ACTIVE:
            return None
        run = ticket.run
        if run.result is not None and run.result.model is not None:
            return run.result.model
        try:
            state = self.store.weights(run.id)
            if state is None:
                return None
            model = build_model(run.config.model)
            model.load_state_dict(state)
        except (ValueError, KeyError, RuntimeError):  # a damaged file: the numbers stay, the model is not offered
            log.exception("the stored weights of run %s cannot be read", run.id)
            return None
        model.eval()
        with run.lock:
            run.result = RunResult(run.config, run.status, run.reason, run.params or 0, run.epochs, run.seconds, model)
        return model

    def snapshots(self, owner: str) -> list[Snapshot]:
        """Snapshots of an owner's runs, oldest first, with queue positions."""
        with self._lock:
            self._load(owner)
            tickets = sorted((t for t in self._tickets.values() if t.owner == owner), key=lambda t: t.created)
            positions = self._queue_positions()
            views = [(t, positions.get(t.run.id), len(self._watchers(t.run))) for t in tickets]
        return [ticket.snapshot(position, watchers) for ticket, position, watchers in views]

    def snapshot(self, ticket_id: str) -> Snapshot | None:
        """A snapshot of one ticket's run, with its queue position."""
        with self._lock:
            ticket = self._tickets.get(ticket_id)
            if ticket is None:
                return None
            position = self._queue_positions().get(ticket.run.id)
            watchers = len(self._watchers(ticket.run))
        return ticket.snapshot(position, watchers)

    def active_count(self, owner: str) -> int:
        """How many of an owner's runs are queued or running (cheap: no snapshots)."""
        with self._lock:
            return sum(t.owner == owner and _is_active(t) for t in self._tickets.values())

    def online_count(self, within_s: float = 15.0) -> int:
        """Students whose page sent a heartbeat in the last within_s seconds."""
        now = time.monotonic()
        with self._lock:
            return sum(now - seen <= within_s for seen in self._seen.values())

    def running_count(self) -> int:
        """Runs training right now."""
        with self._lock:
            return sum(run.status == "running" for run in self._runs.values())

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop every run and wait for their threads (server shutdown); the store records how each ended."""
        with self._lock:
            runs = list(self._runs.values())
            queued = [self._runs[run_id] for run_id in self._queue if self._runs[run_id].thread is None]
            self._queue.clear()
        for run in runs:
            with run.lock:
                if run.status == "queued" and run.thread is None:
                    run.status, run.reason = "stopped", "the server stopped before it started"
                elif run.status in ACTIVE and not run.reason:
                    run.reason = "the server stopped"
            run.stop_event.set()
            run.wake.set()
        for run in queued:
            self.store.save_run(run.row())
        for run in runs:
            if run.thread is not None:
                run.thread.join(timeout)

    # -- internals (the underscored ones expect the manager's lock held) ----------------------------------------
    def _load(self, owner: str) -> None:
        """Bring an owner's stored tickets (and their runs) into memory, once: after a reload or a restart."""
        if owner in self._loaded:
            return
        self._loaded.add(owner)
        for row in self.store.tickets(owner):
            if row.id in self._tickets:
                continue
            run = self._runs.get(row.run_id)
            if run is None:
                stored = self.store.run(row.run_id)
                if stored is None:
                    continue
                run = self._runs.setdefault(stored.id, Run.from_row(stored))
            self._tickets[row.id] = Ticket(row.id, row.owner, row.label, run, row.created, cut=row.cut)

    def _shared_run(self, key: str) -> Run | None:
        """A run in memory that a new request for this key may follow: one going, or one trained to the end."""
        for run in self._runs.values():
            if run.key == key and run.source == "trained" and (run.status in ACTIVE or run.status == "finished"):
                return run
        return None

    def _alive(self, owner: str) -> bool:
        return time.monotonic() - self._seen.get(owner, 0.0) <= self.grace_s

    def _watchers(self, run: Run, alive_only: bool = False) -> set[str]:
        """Ids of the tickets still following a run (not cut), optionally only those whose page is open."""
        return {
            t.id
            for t in self._tickets.values()
            if t.run is run and t.cut is None and (not alive_only or self._alive(t.owner))
        }

    def _queue_order(self) -> list[str]:
        """The queue's run ids in the order they will get a slot: runs not yet started, then paused ones."""
        fresh = [run_id for run_id in self._queue if self._runs[run_id].thread is None]
        return fresh + [run_id for run_id in self._queue if self._runs[run_id].thread is not None]

    def _queue_positions(self) -> dict[str, int]:
        """Run id -> 1-based place in the queue."""
        return {run_id: place for place, run_id in enumerate(self._queue_order(), start=1)}

    def _drop_queued(self, run: Run, reason: str) -> None:
        """Take a run out of the queue for good: one not started is stopped here, a paused one is woken to end."""
        self._queue.remove(run.id)
        if run.thread is None:
            with run.lock:
                run.status, run.reason = "stopped", reason + " before it started"
            self.store.save_run(run.row())
            return
        with run.lock:
            run.reason = run.reason or reason
        run.stop_event.set()
        run.wake.set()

    def _sweep(self) -> None:
        """Drop queued runs nobody watches any more (so the queue positions others see are true) and forget
        owners gone for an hour: their runs stay in the store, not in memory."""
        for run_id in [r for r in self._queue if not self._watchers(self._runs[r], alive_only=True)]:
            self._drop_queued(self._runs[run_id], "the page was closed")
        now = time.monotonic()
        gone = {owner for owner, seen in self._seen.items() if now - seen > FORGET_AFTER_S}
        if not gone:
            return
        for ticket_id in [t.id for t in self._tickets.values() if t.owner in gone and t.run.status not in ACTIVE]:
            del self._tickets[ticket_id]
        followed = {t.run.id for t in self._tickets.values()}
        for run_id in [r.id for r in self._runs.values() if r.id not in followed and r.status not in ACTIVE]:
            del self._runs[run_id]
        for owner in gone - {t.owner for t in self._tickets.values()}:
            del self._seen[owner]
            self._loaded.discard(owner)

    def _dispatch(self) -> None:
        """Start (or resume) queued runs while slots are free, after dropping those nobody watches."""
        with self._lock:
            self._sweep()
            while self._queue and sum(r.status == "running" for r in self._runs.values()) < self.max_running:
                run = self._runs[self._queue_order()[0]]
                self._queue.remove(run.id)
                with run.lock:
                    run.status = "running"
                if run.thread is not None:
                    run.wake.set()
                    continue
                run.thread = threading.Thread(target=self._work, args=(run,), name=f"drill-{run.id}", daemon=True)
                run.thread.start()

    def _take_turns(self, run: Run) -> None:
        """At the end of an epoch, in the run's thread: give the slot up while a run that has not started waits."""
        with self._lock:
            last_epoch = len(run.epochs) >= run.config.train.epochs
            if last_epoch or run.stop_event.is_set() or all(self._runs[r].thread for r in self._queue):
                return
            with run.lock:
                run.status = "queued"
            run.wake.clear()
            self._queue.append(run.id)
        paused = time.monotonic()
        self._dispatch()
        run.wake.wait()
        with run.lock:
            run.paused_s += time.monotonic() - paused

    def _work(self, run: Run) -> None:
        """A run's thread: train, stopping when no watcher's page polls any more, then hand the slot on."""

        def callback(event: str, payload: dict) -> None:
            run.on_event(event, payload)
            if event == "epoch":
                self.store.save_run(run.row())  # a crash mid-run still leaves the epochs done
                self._take_turns(run)
            elif event == "batch":
                with self._lock:
                    watched = bool(self._watchers(run, alive_only=True))
                if not watched:
                    with run.lock:
                        run.reason = run.reason or f"the page stopped polling for {self.grace_s:.0f} s (tab closed?)"
                    run.stop_event.set()

        weights = None
        try:
            self.store.save_run(run.row())
            result = self._runner(run.config, self._data(), callback, run.stop_event, threads=self.threads_per_job)
            with run.lock:
                run.result = result
                run.status = result.status
                run.reason = run.reason if result.status == "stopped" and run.reason else result.reason
                run.seconds = result.seconds - run.paused_s
            if result.model is not None and result.epochs:
                weights = result.model.state_dict()
        except Exception as error:  # data missing or a bug: the student still sees the run, failed, with why
            log.exception("run %s failed", run.id)
            with run.lock:
                run.status, run.reason = "failed", f"{type(error).__name__}: {error}"
        finally:
            self.store.save_run(run.row(), weights)
            self._dispatch()


_MANAGERS: weakref.WeakSet[JobManager] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    """Stop every manager's jobs when the process exits, so the server stops promptly."""
    for manager in list(_MANAGERS):
        manager.shutdown(timeout=5.0)
