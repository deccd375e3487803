"""The job manager: a process-wide registry of runs and the students' tickets to them, with a fair queue, sharing
of identical runs, the store, and an orphan reaper. Where runs train is a backend's business (drill.backends).

Nothing here touches the UI: each run writes only to its own lock-protected state, which pages read through
snapshots. Sessions prove they are alive by calling touch(); a run whose watchers stop touching (tabs closed) is
stopped after a grace period.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from torch import nn

from drill import cost
from drill.backends import BACKENDS, Handle, Job, Outcome, ProcessBackend, ThreadBackend, Unavailable
from drill.checkpoint import Checkpoint
from drill.config import RunConfig
from drill.data import Mnist, load_mnist
from drill.model import build_model
from drill.pack import Shelf
from drill.presence import Presence
from drill.proof import DEFAULT_SEEDS, Proof
from drill.proof import seeds as proof_seeds
from drill.run_record import ACTIVE, Epoch, RunRecord, Status
from drill.store import RunRow, RunStore, TicketRow
from drill.train import RunResult, train
from drill.turns import FairQueue

log = logging.getLogger(__name__)

FORGET_AFTER_S = 3600.0  # an owner silent this long has left: their ended runs are freed
MAX_BATCH_POINTS = 2000  # batch-loss points kept per job; older ones are thinned so long runs stay light
# A run whose worker or machine is lost goes on from its checkpoint elsewhere, but only so often: a config that
# kills every worker it lands on (out of memory, say) must end failed rather than take the class's slots forever.
MAX_LOSSES = 2


@dataclass(frozen=True)
class Snapshot:
    """A consistent copy of what one student sees of a run, safe to read from any thread."""

    ticket_id: str  # the student's ticket (run_id is the training's)
    owner: str
    label: str
    config: RunConfig
    status: Status
    reason: str
    params: int | None
    epochs: tuple[Epoch, ...]
    batch_losses: tuple[tuple[float, float], ...]  # (epoch as a fraction, e.g. 2.5, loss)
    progress: dict  # epoch, batch, batches, images_per_s, eta_s, lr
    queue_position: int | None  # 1-based place in the queue while queued
    created: float
    seconds: float
    watchers: int = 1  # students following this very run (a class starting the same step shares one)
    reused: bool = False  # served from an identical run trained earlier, not trained for this student
    run_id: str = ""  # the training behind the ticket, shared by every student following it
    note: str = ""  # what happened to the run that its numbers do not show ("resumed after epoch 6 ...")
    recorded: str = ""  # for a run of the recorded-runs pack: where and when it was recorded (drill.pack)
    proof: str = ""  # the proof over seeds (drill.proof) this run is one seed of, for this student

    def record(self) -> RunRecord:
        """The run as this student saw it, under their label (what Compare exports)."""
        return RunRecord.of(self, self.label)


@dataclass
class Run:
    """One training and everything the pages show about it; students follow it through tickets."""

    id: str
    config: RunConfig
    key: str = ""
    # "trained" here; "imported" from a student's file, never served to anyone else; or "recorded": the pack's
    source: str = "trained"
    created: float = field(default_factory=time.time)
    status: Status = Status.QUEUED
    reason: str = ""
    params: int | None = None
    epochs: list[Epoch] = field(default_factory=list)
    batch_losses: list[tuple[float, float]] = field(default_factory=list)
    progress: dict = field(default_factory=dict)
    seconds: float = 0.0
    model: nn.Module | None = None  # the trained network, once it ended (or rebuilt from the store's weights)
    lock: threading.Lock = field(default_factory=threading.Lock)
    handle: Handle | None = None  # while its backend trains it
    checkpoint: Checkpoint | None = None  # while it waits for its next turn, paused between epochs
    started: bool = False  # it has trained (a queued run that started is paused)
    note: str = ""  # shown beside its status: how it came back after a restart or a lost worker
    losses: int = 0  # workers or machines lost under it
    recorded: str = ""  # a recorded run's provenance (drill.pack)

    def __post_init__(self):
        self.key = self.key or config_key(self.config)

    def on_event(self, event: str, payload: dict) -> None:
        """The training callback: record what happened under the lock."""
        with self.lock:
            if event == "start":
                self.params = payload["params"]
                epoch = payload.get("resumed", 0) + 1
                self.progress = {"epoch": epoch, "batch": 0, "batches": payload["batches"], "epochs": payload["epochs"]}
            elif event == "batch":
                self._record_batch(payload)
            elif event == "epoch":
                self.epochs.append(Epoch(**payload))

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
            record = RunRecord(
                config=self.config,
                status=self.status,
                reason=self.reason,
                params=self.params,
                seconds=self.seconds,
                epochs=tuple(self.epochs),
            )
            return RunRow(
                id=self.id,
                key=self.key,
                source=self.source,
                record=record,
                batch_losses=list(self.batch_losses),
                created=self.created,
            )

    @classmethod
    def from_record(cls, record: RunRecord, **fields) -> Run:
        """A run of a record, in memory; `fields` are those the record does not hold (id, key, source, ...)."""
        return cls(
            config=record.config,
            status=record.status,
            reason=record.reason,
            params=record.params,
            epochs=list(record.epochs),
            seconds=record.seconds,
            **fields,
        )

    @classmethod
    def from_row(cls, row: RunRow, recorded: str = "") -> Run:
        """A stored run, back in memory (its model is rebuilt from the stored weights when asked for)."""
        return cls.from_record(
            row.record,
            id=row.id,
            key=row.key,
            source=row.source,
            created=row.created,
            batch_losses=list(row.batch_losses),
            recorded=recorded,
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
    proof: str = ""  # the proof over seeds it is one seed of

    def snapshot(self, queue_position: int | None = None, watchers: int = 1) -> Snapshot:
        """A consistent copy of this student's view of the run."""
        run = self.run
        with run.lock:
            status, reason, epochs, losses = run.status, run.reason, run.epochs, run.batch_losses
            progress, seconds = dict(run.progress), run.seconds
            if self.cut is not None:
                seen, position, reason = self.cut
                status, epochs, progress = Status.STOPPED, epochs[:seen], {}
                losses = [point for point in losses if point[0] <= position]
                queue_position = None
            return Snapshot(
                ticket_id=self.id,
                owner=self.owner,
                label=self.label,
                config=run.config,
                status=status,
                reason=reason,
                params=run.params,
                epochs=tuple(epochs),
                batch_losses=tuple(losses),
                progress=progress,
                queue_position=queue_position,
                created=self.created,
                seconds=seconds,
                watchers=watchers,
                reused=self.reused,
                run_id=run.id,
                note=run.note,
                recorded=run.recorded,
                proof=self.proof,
            )

    def row(self) -> TicketRow:
        """This ticket as the store keeps it."""
        return TicketRow(
            id=self.id,
            owner=self.owner,
            run_id=self.run.id,
            label=self.label,
            created=self.created,
            cut=self.cut,
            proof=self.proof,
        )


def config_key(config: RunConfig, device: str = "cpu") -> str:
    """What makes two runs the same training: the whole config, seed included, and the device type it trains on
    (a GPU's sums differ from a CPU's); the thread count only sets speed."""
    return hashlib.sha256(config.replace(train={"threads": 0, "device": device}).to_json().encode()).hexdigest()


def new_id(prefix: str) -> str:
    """A short random id, unique across server restarts (the store outlives the process)."""
    return f"{prefix}-{secrets.token_hex(6)}"


def make_backend(name: str | None = None):
    """The backend $DRILL_BACKEND names (threads by default). A setting that cannot be used gives a backend that
    trains nothing and says why on every page: the app never falls back silently to training somewhere else."""
    name = name or os.environ.get("DRILL_BACKEND", "") or "threads"
    try:
        if name == "threads":
            return ThreadBackend()
        if name == "processes":
            return ProcessBackend()
        if name == "ray":
            try:
                from drill.raybackend import RayBackend
            except ImportError as error:
                raise ValueError(
                    f"DRILL_BACKEND=ray needs the ray package ({error}): pip install -r requirements-ray.txt"
                ) from error
            return RayBackend.from_environment()
        raise ValueError(f"DRILL_BACKEND={name!r} is not allowed: one of {', '.join(BACKENDS)}")
    except ValueError as error:
        log.error("%s", error)
        return Unavailable(str(error))


class Refused(ValueError):
    """A run this server will not train (its estimated epoch passes the server's limit); the message says so and what
    to change."""


def _is_active(ticket: Ticket) -> bool:
    """Whether a ticket's run is queued or running for its owner (who has not left it)."""
    return ticket.cut is None and ticket.run.status in ACTIVE


class JobManager:
    """Keeps every run and ticket, trains runs on a backend (at most its slots at once), the rest in a fair queue.

    Turns (drill.turns): while a run that has not trained yet waits, running runs pause after their next epoch and
    wait in turn, their state kept in a checkpoint; pausing changes nothing a run computes.

    Identical requests share one run: a run already going gains a watcher, and a finished one is served from the
    store at once, since training is deterministic for a config and its seed. Everything is written to the store as
    it happens, so a student's runs survive a page reload and a server restart.

    A new run whose estimated epoch (drill.cost) passes the server's limit is refused; one that would be followed or
    served from the store is not, since nothing trains for it.
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
        backend=None,
        pack: Path | None = None,
        # None reads $DRILL_MAX_EPOCH_S at every submission, so a server's setting (or a test's) needs no restart.
        max_epoch_s: float | None = None,
    ):
        self.backend = backend or ThreadBackend(max_running, data, runner)
        self.max_epoch_s = max_epoch_s
        self.grace_s = grace_s
        self.store = store or RunStore()
        # The recorded-runs pack (drill.pack), when given: its checked runs are served like runs trained here.
        self.shelf = Shelf(pack, data, self.store, partial(config_key, device="cpu")) if pack else None
        self._lock = threading.Lock()
        self._runs: dict[str, Run] = {}
        self._tickets: dict[str, Ticket] = {}
        self._queue = FairQueue()
        self._presence = Presence(grace_s)
        self._loaded: set[str] = set()  # owners whose stored tickets are in memory
        self._closing = False
        _MANAGERS.add(self)
        with self._lock:
            self._resume()

    @property
    def threads_per_job(self) -> int:
        """Torch threads each run gets: the backend's share of the cores."""
        return self.backend.threads_per_job

    def problem(self) -> str | None:
        """Why runs cannot train now (a cluster out of reach), to show on every page; None when they can."""
        return self.backend.problem()

    def warning(self) -> str | None:
        """What students should know although runs train (a store that can't be written), else None."""
        return self.store.problem

    # -- what sessions call -----------------------------------------------------------------------------------
    def submit(
        self, owner: str, config: RunConfig, label: str = "", one_at_a_time: bool = False, fresh: bool = False
    ) -> Ticket:
        """A run of config for an owner: the identical run if one is going or finished (or recorded in the pack),
        else a new one, queued. With fresh, a recorded run is passed over: the student trains it themselves.

        With one_at_a_time, an owner who already has a run going gets its ticket back instead, checked under the
        same lock: Streamlit can run one click's callback twice at once (it replays a click whose rerun was cut
        short), and a check made before submitting let one student of 30 start twice in a load test.

        Refused when the run would have to train and its estimated epoch passes the server's limit.
        """
        too_long = cost.refusal(config, self.max_epoch_s)  # outside the lock: a model's first summary takes a while
        with self._lock:
            self._load(owner)
            self._presence.beat(owner)
            if one_at_a_time and (going := self._going(owner)):
                return going[-1]
            if too_long and self._must_train([config], fresh):
                raise Refused(too_long)
            # A student already following this very run keeps the one ticket: a replayed click, or Start pressed
            # again on a run that finished, must not list the same run twice.
            ticket = self._new_ticket(owner, config, label, fresh, reuse=True)
            self._dispatch()
        return ticket

    def prove(self, owner: str, config: RunConfig, label: str = "", seeds: int = DEFAULT_SEEDS) -> list[Ticket]:
        """A proof of config over seeds 1 to `seeds` (drill.proof): one ticket per seed, sharing one proof id. Each
        seed is an ordinary run: a run of it going, finished or recorded is followed or served at once.

        It counts as the student's one run at a time: one who has runs going gets those tickets back. For the class's
        fairness it weighs as one new run: its first seed waits with the new runs, the others with the runs that
        already had a turn, so a proof never pushes a classmate's first epoch further back than one run does.

        Refused, as a whole, when a seed would have to train and the estimated epoch passes the server's limit.
        """
        wanted = proof_seeds(seeds)
        too_long = cost.refusal(config, self.max_epoch_s)
        with self._lock:
            self._load(owner)
            self._presence.beat(owner)
            if going := self._going(owner):
                proof = going[-1].proof
                return [t for t in going if t.proof == proof] if proof else going[-1:]
            if too_long and self._must_train([config.replace(train={"seed": seed}) for seed in wanted], False):
                raise Refused(too_long)
            proof = new_id("proof")
            tickets = [
                self._new_ticket(owner, config.replace(train={"seed": seed}), label, proof=proof, behind=place > 0)
                for place, seed in enumerate(wanted)
            ]
            self._dispatch()
        return tickets

    def refusal(self, config: RunConfig, fresh: bool = False, seeds: int = 0) -> str | None:
        """What submit (with seeds, prove over that many) would refuse config with now, for a page to say beside a
        Start it disables; None when it would be accepted."""
        too_long = cost.refusal(config, self.max_epoch_s)
        if too_long is None:
            return None
        configs = [config.replace(train={"seed": seed}) for seed in proof_seeds(seeds)] if seeds else [config]
        with self._lock:
            return too_long if self._must_train(configs, fresh and not seeds) else None

    def add_finished(self, owner: str, record: RunRecord) -> Ticket:
        """Register a run ended elsewhere (an imported record), under its label, so it shows beside this session's
        runs."""
        run = Run.from_record(record, id=new_id("run"), source="imported")
        self.store.save_run(run.row())
        with self._lock:
            self._load(owner)
            self._runs[run.id] = run
            ticket = Ticket(id=new_id("ticket"), owner=owner, label=record.label, run=run)
            self._tickets[ticket.id] = ticket
            self.store.save_ticket(ticket.row())
        return ticket

    def touch(self, owner: str) -> None:
        """Heartbeat: the owner's page is still open; also the moment to clear out what closed tabs left, and to
        start queued runs on capacity that came (a cluster node that joined)."""
        with self._lock:
            self._load(owner)
            self._presence.beat(owner)
            self._dispatch()

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
                self._dispatch()
                return
            self._stop_running(run, reason)

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
        if run.model is not None:
            return run.model
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
            run.model = model
        return model

    def snapshots(self, owner: str) -> list[Snapshot]:
        """Snapshots of an owner's runs, oldest first, with queue positions."""
        with self._lock:
            self._load(owner)
            tickets = sorted((t for t in self._tickets.values() if t.owner == owner), key=lambda t: t.created)
            positions = self._queue.positions()
            views = [(t, positions.get(t.run.id), len(self._watchers(t.run))) for t in tickets]
        return [ticket.snapshot(position, watchers) for ticket, position, watchers in views]

    def snapshot(self, ticket_id: str) -> Snapshot | None:
        """A snapshot of one ticket's run, with its queue position."""
        with self._lock:
            ticket = self._tickets.get(ticket_id)
            if ticket is None:
                return None
            position = self._queue.positions().get(ticket.run.id)
            watchers = len(self._watchers(ticket.run))
        return ticket.snapshot(position, watchers)

    def proof_of(self, config: RunConfig, count: int = DEFAULT_SEEDS) -> Proof | None:
        """The proof over seeds 1 to count that finished runs of config (trained here, by anyone, or recorded)
        already make; None while a seed has no finished run. Nothing is queued: it is what the Drill-down page shows
        a step "proven" by."""
        runs = []
        with self._lock:
            for seed in proof_seeds(count):
                key = self._key(config.replace(train={"seed": seed}))
                run = self._shared_run(key)
                if run is None or run.status != Status.FINISHED:
                    row = self._stored_row(key)
                    run = None if row is None else self._runs.get(row.id) or Run.from_row(row)
                if run is None:
                    return None
                runs.append(run)
        return Proof.of(runs)

    def active_count(self, owner: str) -> int:
        """How many of an owner's runs are queued or running (cheap: no snapshots)."""
        with self._lock:
            return sum(t.owner == owner and _is_active(t) for t in self._tickets.values())

    def online_count(self, within_s: float = 15.0) -> int:
        """Students whose page sent a heartbeat in the last within_s seconds."""
        with self._lock:
            return self._presence.online(within_s)

    def running_count(self) -> int:
        """Runs training right now."""
        with self._lock:
            return self._running()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop training and wait for the backend (server shutdown). Runs going stay queued in the store with their
        checkpoints, and the next server on the same store resumes them; then the store is closed."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            for run in self._runs.values():
                if run.status == Status.RUNNING and run.handle is not None:
                    run.handle.stop()
        self.backend.shutdown(timeout)
        if self.shelf is not None:
            self.shelf.close(timeout)
        self.store.close()

    # -- what backends call, from their own threads -------------------------------------------------------------
    def _on_event(self, run: Run, event: str, payload: dict) -> None:
        """Record a training event; stop a run whose watchers' pages all stopped polling."""
        if event == "checkpoint":
            self.store.save_checkpoint(run.id, payload["epoch"], payload["blob"])
            return
        run.on_event(event, payload)
        if event == "epoch":
            self.store.save_run(run.row())  # a crash mid-run still leaves the epochs done
        elif event == "batch":
            with self._lock:
                if not self._watchers(run, alive_only=True):
                    self._stop_running(run, f"the page stopped polling for {self.grace_s:.0f} s (tab closed?)")

    def _on_end(self, run: Run, outcome: Outcome) -> None:
        """A run left its slot: paused for a turn (back in the queue), suspended by the server stopping (left in the
        store as queued, to resume from its checkpoint at the next start), or ended; then the slot goes on."""
        weights = None
        with self._lock:
            with run.lock:
                stopping = run.handle is not None and run.handle.stop_event.is_set()
                run.handle = None
                # A server stopping leaves its runs to resume, unless a student (or the reaper) had stopped one.
                suspended = (
                    self._closing
                    and not run.reason
                    and (outcome.lost or outcome.status in (Status.PAUSED, Status.STOPPED))
                )
                run.losses += bool(outcome.lost)
                if outcome.lost and not stopping and not self._closing and run.losses <= MAX_LOSSES:
                    run.status, run.note = Status.QUEUED, self._restore(run, outcome.lost)
                    self._queue.add(run.id, started=run.started)
                    log.warning("run %s: %s", run.id, run.note)
                elif suspended or (outcome.status == Status.PAUSED and not stopping):
                    run.status, run.checkpoint = Status.QUEUED, outcome.checkpoint
                    run.reason = ""
                    if not suspended:
                        self._queue.add(run.id, started=True)
                else:
                    status = Status.STOPPED if outcome.status == Status.PAUSED else outcome.status
                    run.status = status
                    run.reason = run.reason if status == Status.STOPPED and run.reason else outcome.reason
                    if outcome.lost:  # lost more than MAX_LOSSES times: starting it again is no help
                        run.reason = (
                            f"{outcome.lost}, {run.losses} times in all: this run may need more memory than a worker "
                            "has; try a smaller network or fewer training images"
                        )
                    run.seconds, run.model = outcome.seconds, outcome.model
                    if outcome.model is not None:
                        weights = outcome.model.state_dict()
            self.store.save_run(run.row(), weights)
            if run.status not in ACTIVE:
                self.store.drop_checkpoint(run.id)
            self._dispatch()

    # -- internals (they expect the manager's lock held) ----------------------------------------------------------
    def _going(self, owner: str) -> list[Ticket]:
        """An owner's tickets to runs queued or running, oldest first."""
        return sorted(
            (t for t in self._tickets.values() if t.owner == owner and _is_active(t)), key=lambda t: t.created
        )

    def _new_ticket(
        self,
        owner: str,
        config: RunConfig,
        label: str,
        fresh: bool = False,
        reuse: bool = False,
        proof: str = "",
        behind: bool = False,
    ) -> Ticket:
        """A ticket of owner's to the run of config: the identical run going or finished (unless fresh, a recorded
        one too), else a new run, queued (behind: with the runs that had a turn). With reuse, a ticket the owner
        already holds to that very run is given back instead."""
        key = self._key(config)
        run = self._shared_run(key) or self._stored_run(key, fresh)
        held = [t for t in self._tickets.values() if t.owner == owner and t.run is run and t.cut is None]
        if reuse and run is not None and held:
            return held[0]
        reused = run is not None and run.status == Status.FINISHED
        if run is None:
            run = Run(id=new_id("run"), config=config, key=key)
            self._runs[run.id] = run
            self._queue.add(run.id, started=behind)
            self.store.save_run(run.row())
        ticket = Ticket(id=new_id("ticket"), owner=owner, label=label, run=run, reused=reused, proof=proof)
        self._tickets[ticket.id] = ticket
        self.store.save_ticket(ticket.row())
        return ticket

    def _must_train(self, configs: list[RunConfig], fresh: bool) -> bool:
        """Whether any of these runs would train here: none going or finished to follow, nor (unless fresh) recorded."""
        return any(
            self._shared_run(key) is None and self._stored_row(key, fresh) is None for key in map(self._key, configs)
        )

    def _key(self, config: RunConfig) -> str:
        return config_key(config, self.backend.device_type(config))

    def _resume(self) -> None:
        """Put back in the queue the runs the store says are going (a server stopped or killed under them), in their
        order: each from its last checkpoint, or from epoch 1 when it has none that can be read. Their students get
        the grace period to come back before a run nobody watches is dropped."""
        resumed = []
        for row in self.store.active_runs():
            run = Run.from_row(row)
            run.started = row.record.status == Status.RUNNING or bool(row.record.epochs or row.batch_losses)
            run.status, run.reason, run.note = Status.QUEUED, "", self._restore(run, "the server restarted")
            self._runs[run.id] = run
            self._queue.add(run.id, started=run.started)
            resumed.append(run.id)
            log.info("run %s: %s", run.id, run.note)
        # Only now the students' tickets, so each finds its run among those just restored, whichever came first.
        for run_id in resumed:
            for ticket in self.store.tickets_of(run_id):
                self._load(ticket.owner)
                self._presence.beat(ticket.owner)
        self._dispatch()

    def _restore(self, run: Run, cause: str) -> str:
        """Give a run back its last checkpoint, after `cause` (what interrupted it); what the student is told."""
        blob = self.store.checkpoint(run.id)
        why = f"{cause} before its first epoch ended"
        if blob is not None:
            try:
                checkpoint = Checkpoint.from_bytes(blob)
                if self._key(RunConfig.from_dict(checkpoint.config)) != run.key:
                    raise ValueError("it is of another config")
                if not 0 < len(checkpoint.epochs) < run.config.train.epochs:
                    raise ValueError(f"it holds {len(checkpoint.epochs)} epochs of {run.config.train.epochs}")
            except ValueError as error:
                log.warning("the checkpoint of run %s is refused: %s", run.id, error)
                self.store.drop_checkpoint(run.id)
                why = f"its checkpoint could not be used ({error})"
            else:
                done = len(checkpoint.epochs)
                run.checkpoint, run.started, run.progress = checkpoint, True, {}
                run.epochs = list(checkpoint.epochs)
                run.batch_losses = [point for point in run.batch_losses if point[0] <= done]
                return f"Resumed after epoch {done}: {cause}, and nothing trained before is lost."
        if not run.started:
            return ""  # it had not trained: it just keeps its place
        run.epochs, run.batch_losses, run.progress, run.started = [], [], {}, False
        return f"Started over from epoch 1: {why}."

    def _running(self) -> int:
        return sum(run.status == Status.RUNNING for run in self._runs.values())

    def _stop_running(self, run: Run, reason: str) -> None:
        """Stop a run its backend is training, within a batch, saying why."""
        with run.lock:
            if run.status == Status.RUNNING and not run.reason:
                run.reason = reason
            handle = run.handle
        if handle is not None:
            handle.stop()

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
                run = self._runs.setdefault(stored.id, self._from_row(stored))
            self._tickets[row.id] = Ticket(
                id=row.id, owner=row.owner, label=row.label, run=run, created=row.created, cut=row.cut, proof=row.proof
            )

    def _stored_run(self, key: str, fresh: bool) -> Run | None:
        """A finished run for this key that only the store holds: one trained here, else (unless fresh) the pack's."""
        row = self._stored_row(key, fresh)
        return None if row is None else self._runs.setdefault(row.id, self._from_row(row))

    def _stored_row(self, key: str, fresh: bool = False) -> RunRow | None:
        row = self.store.finished_run(key)
        if row is None and not fresh and self.shelf is not None and (recorded := self.shelf.served(key)):
            row = self.store.run(recorded)
        return row

    def _from_row(self, row: RunRow) -> Run:
        """A stored run in memory, with its provenance when it is one of the pack's."""
        provenance = self.shelf.provenance.get(row.id, "") if self.shelf is not None else ""
        if row.source == "recorded" and not provenance:
            provenance = "recorded by an earlier version of the app, and not checked against this one"
        return Run.from_row(row, provenance)

    def _shared_run(self, key: str) -> Run | None:
        """A run in memory that a new request for this key may follow: one going, or one trained to the end."""
        for run in self._runs.values():
            if run.key == key and run.source == "trained" and (run.status in ACTIVE or run.status == Status.FINISHED):
                return run
        return None

    def _watchers(self, run: Run, alive_only: bool = False) -> set[str]:
        """Ids of the tickets still following a run (not cut), optionally only those whose page is open."""
        return {
            t.id
            for t in self._tickets.values()
            if t.run is run and t.cut is None and (not alive_only or self._presence.alive(t.owner))
        }

    def _drop_queued(self, run: Run, reason: str) -> None:
        """Take a run out of the queue for good: it ends stopped, with the epochs (and the model) it trained before
        its pause."""
        self._queue.remove(run.id)
        weights = None
        with run.lock:
            run.status = Status.STOPPED
            run.reason = reason if run.started else reason + " before it started"
            weights = run.checkpoint.state.get("model") if run.checkpoint is not None else None
            if weights is not None:
                run.model = build_model(run.config.model)
                run.model.load_state_dict(weights)
                run.model.eval()
            run.checkpoint = None
        self.store.save_run(run.row(), weights)
        self.store.drop_checkpoint(run.id)

    def _sweep(self) -> None:
        """Drop queued runs nobody watches any more (so the queue positions others see are true) and forget
        owners gone for an hour: their runs stay in the store, not in memory."""
        for run_id in [r for r in self._queue.order() if not self._watchers(self._runs[r], alive_only=True)]:
            self._drop_queued(self._runs[run_id], "the page was closed")
        gone = self._presence.silent_for(FORGET_AFTER_S)
        if not gone:
            return
        for ticket_id in [t.id for t in self._tickets.values() if t.owner in gone and t.run.status not in ACTIVE]:
            del self._tickets[ticket_id]
        followed = {t.run.id for t in self._tickets.values()}
        for run_id in [r.id for r in self._runs.values() if r.id not in followed and r.status not in ACTIVE]:
            del self._runs[run_id]
        for owner in gone - {t.owner for t in self._tickets.values()}:
            self._presence.forget(owner)
            self._loaded.discard(owner)

    def _dispatch(self) -> None:
        """Start (or resume) queued runs while the backend has free slots, after dropping those nobody watches;
        then tell every running run whether to pause after its epoch."""
        if self._closing:
            return
        self._sweep()
        if len(self._queue) and (problem := self.backend.problem()):
            # Not a silent wait behind a cluster out of reach: each new run ends failed, saying why (every page says
            # it too). Runs that trained before keep their place and checkpoint, to go on when it answers.
            for run_id in [r for r in self._queue.order() if not self._runs[r].started]:
                run = self._runs[run_id]
                self._queue.remove(run_id)
                with run.lock:
                    run.status, run.reason = Status.FAILED, problem
                self.store.save_run(run.row())
            return
        while len(self._queue) and self._running() < self.backend.slots():
            run = self._runs[self._queue.pop_next()]
            with run.lock:
                run.status, run.started = Status.RUNNING, True
                job = Job(
                    run_id=run.id,
                    config=run.config,
                    threads=self.threads_per_job,
                    resume=run.checkpoint,
                    pause_now=self._queue.wants_turns(),
                    checkpoints=True,
                )
                run.checkpoint = None
            try:
                run.handle = self.backend.start(job, partial(self._on_event, run), partial(self._on_end, run))
            except Exception as error:  # a worker that could not start: the run ends failed, saying why
                log.exception("run %s could not start", run.id)
                with run.lock:
                    run.status, run.reason = Status.FAILED, f"it could not start ({type(error).__name__}: {error})"
                self.store.save_run(run.row())
                self.store.drop_checkpoint(run.id)
        # The training loop never pauses after a run's last epoch, so the flag is the queue's alone.
        turns = self._queue.wants_turns()
        for run in self._runs.values():
            if run.handle is not None and run.status == Status.RUNNING:
                run.handle.want_pause(turns)


_MANAGERS: weakref.WeakSet[JobManager] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    """Stop every manager's jobs when the process exits, so the server stops promptly."""
    for manager in list(_MANAGERS):
        manager.shutdown(timeout=5.0)
