"""Runs on disk: an embedded SQLite file in the data directory, so runs survive a page reload and a server restart.

Two tables: `runs` (one per training, with its history and trained weights) and `tickets` (one per student who
asked for a run; several tickets share a run when a class starts the same step); `proofs` groups the tickets of a
proof over seeds, and `checkpoints` holds the state of runs still going. `members` says which student (owner) is in
which class and under what display name, and `pins` which runs the class's teacher pinned (drill.classroom).
Weights are stored as raw tensor bytes behind a JSON header: nothing read back is unpickled.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import sqlite3
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from drill.data import data_dir
from drill.run_record import MAX_REASON_CHARS, STORED, RunRecord, Status

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL,            -- the config's identity (seed included, thread count excluded)
    source TEXT NOT NULL,         -- 'trained' here, or 'imported' from a student's file (never shared)
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL,
    params INTEGER,
    epochs TEXT NOT NULL,
    batch_losses TEXT NOT NULL,
    seconds REAL NOT NULL,
    created REAL NOT NULL,
    weights BLOB
);
CREATE INDEX IF NOT EXISTS runs_by_key ON runs (key, status, source);
CREATE TABLE IF NOT EXISTS tickets (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    run_id TEXT NOT NULL,
    label TEXT NOT NULL,
    created REAL NOT NULL,
    cut TEXT                      -- JSON [epochs, batch position, reason] once the student left a shared run
);
CREATE INDEX IF NOT EXISTS tickets_by_owner ON tickets (owner, created);
CREATE INDEX IF NOT EXISTS tickets_by_run ON tickets (run_id);
-- A ticket that is one seed of a student's "Prove it over seeds" (drill.proof): its tickets share the proof's id.
CREATE TABLE IF NOT EXISTS proofs (
    ticket_id TEXT PRIMARY KEY,
    proof TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id TEXT PRIMARY KEY,      -- a run still going: its state after its last finished epoch (drill.checkpoint)
    epoch INTEGER NOT NULL,
    blob BLOB NOT NULL
);
-- A student in a class (drill.classroom): the runs they start from `joined` on are the class's.
CREATE TABLE IF NOT EXISTS members (
    class TEXT NOT NULL,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,           -- the display name classmates see (the owner id is never shown)
    name_key TEXT NOT NULL,       -- the name folded, so "Ana" and "ana " can't both be in one class
    joined REAL NOT NULL,
    PRIMARY KEY (class, owner),
    UNIQUE (class, name_key)
);
CREATE TABLE IF NOT EXISTS pins (
    class TEXT NOT NULL,
    ticket_id TEXT NOT NULL,
    PRIMARY KEY (class, ticket_id)
);
"""
# A run of the lesson's small networks takes about 50 KB on disk (its weights are most of it; the 138,762-parameter
# skeleton's take 555 KB), so the default cap keeps the file near 250 MB: a class of thirty can start 160 runs each
# before the oldest go.
DEFAULT_MAX_RUNS = 5000


def default_path() -> Path:
    """$DRILL_RUNS_DB, else runs.sqlite in the data directory."""
    return Path(os.environ.get("DRILL_RUNS_DB") or data_dir() / "runs.sqlite")


def default_max_runs() -> int:
    """How many runs the file keeps across restarts: $DRILL_MAX_RUNS, else DEFAULT_MAX_RUNS."""
    text = os.environ.get("DRILL_MAX_RUNS", "")
    if not text:
        return DEFAULT_MAX_RUNS
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"DRILL_MAX_RUNS={text!r} is not allowed: a whole number of runs, 1 or more")
    return int(text)


@dataclass(frozen=True)
class MemberRow:
    """A student in a class, as stored."""

    class_code: str
    owner: str
    name: str
    joined: float


class NameTaken(ValueError):
    """Another student of the class has this display name."""


@dataclass(frozen=True)
class RunRow:
    """A run as stored: its record (with no label: labels are the tickets') and what the store adds to it."""

    id: str
    key: str
    source: str  # 'trained', 'imported' or 'recorded' (drill.jobs.Run)
    record: RunRecord
    batch_losses: list[tuple[float, float]]
    created: float


@dataclass(frozen=True)
class TicketRow:
    """A student's claim on a run, as stored."""

    id: str
    owner: str
    run_id: str
    label: str
    created: float
    cut: tuple[int, float, str] | None
    proof: str = ""  # the proof over seeds this ticket is one seed of


class StoreInUse(RuntimeError):
    """Another server has the runs file open."""


class RunStore:
    """Thread-safe access to the runs file; ":memory:" keeps everything in this process only (tests, benches).

    One server at a time: the server that opens the file resumes the runs it says are going, so a second server on
    the same file would train them twice. It is refused (StoreInUse) while the first holds the file's lock, which
    the system frees when that process ends, however it ends (kill -9 included).

    A file that cannot be written (disk full, read-only) does not stop the class: writes are skipped and `problem`
    says so, and runs go on in memory.

    With max_runs, opening the file keeps that many runs, those last asked for, and deletes the rest with their
    tickets, so a server that runs for a term does not fill its disk.
    """

    def __init__(self, path: Path | str = ":memory:", max_runs: int | None = None, read_only: bool = False):
        self.path = str(path)
        self.problem: str | None = None
        self._lock = threading.Lock()
        self._lock_file = None
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._hold(Path(self.path + ".lock"))
        # One connection shared under a lock: writes are a few per epoch, far from SQLite's limits.
        target = f"file:{self.path}?mode=ro" if read_only else self.path
        self._db = sqlite3.connect(target, check_same_thread=False, isolation_level=None, uri=read_only)
        with self._lock:
            if read_only:
                return
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)
            if max_runs is not None:
                self._prune(max_runs)

    def _hold(self, lock_path: Path) -> None:
        """Take the file's lock for this process's life, or refuse when another server holds it."""
        self._lock_file = open(lock_path, "a+")  # held until close()
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.seek(0)
            holder = self._lock_file.read().strip() or "another process"
            self._lock_file.close()
            raise StoreInUse(
                f"the run store {self.path} is in use by another server ({holder}); two servers on one store would "
                "train its runs twice. Stop the other server, or give this one its own DRILL_RUNS_DB."
            ) from None
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(f"pid {os.getpid()}")
        self._lock_file.flush()

    def _write(self, sql: str, args: tuple = ()) -> None:
        """One write; a file that refuses it (full, read-only) turns into `problem`, not an error."""
        with self._lock:
            try:
                self._db.execute(sql, args)
            except sqlite3.OperationalError as error:
                if self.problem is None:
                    log.error("the run store %s cannot be written: %s", self.path, error)
                self.problem = (
                    f"The run store can't be written ({error}): runs go on in memory, but they will not survive a "
                    "restart of the server."
                )

    def _prune(self, max_runs: int) -> None:
        """Keep the max_runs runs last asked for and delete the rest with their tickets (caller holds the lock).

        A run counts as new as its newest ticket: a class's shared runs are the oldest trained, and the ones most
        asked for. Nothing is going when the file is opened, so no run a thread still writes to can go.
        """
        self._db.execute("BEGIN")
        try:
            self._db.execute(
                "CREATE TEMP TABLE gone AS SELECT runs.id FROM runs LEFT JOIN tickets ON tickets.run_id = runs.id "
                "GROUP BY runs.id ORDER BY max(coalesce(tickets.created, runs.created)) DESC LIMIT -1 OFFSET ?",
                (max_runs,),
            )
            self._db.execute(
                "DELETE FROM proofs WHERE ticket_id IN (SELECT id FROM tickets WHERE run_id IN (SELECT id FROM gone))"
            )
            self._db.execute("DELETE FROM tickets WHERE run_id IN (SELECT id FROM gone)")
            self._db.execute("DELETE FROM checkpoints WHERE run_id IN (SELECT id FROM gone)")
            self._db.execute("DELETE FROM runs WHERE id IN (SELECT id FROM gone)")
            self._db.execute("DROP TABLE gone")
        except sqlite3.Error:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        """Close the file and let another server have it (closing twice is harmless)."""
        with self._lock:
            self._db.close()
            if self._lock_file is not None and not self._lock_file.closed:
                self._lock_file.close()

    def save_run(self, row: RunRow, weights: dict[str, torch.Tensor] | None = None) -> None:
        """Insert or update a run (its weights too, when given)."""
        record = row.record
        values = (
            row.id,
            row.key,
            row.source,
            json.dumps(record.config.to_dict()),
            str(record.status),
            record.reason[:MAX_REASON_CHARS],  # an error's text can be a remote traceback; the row must read back
            record.params,
            json.dumps([epoch.to_dict() for epoch in record.epochs]),
            json.dumps(row.batch_losses),
            record.seconds,
            row.created,
            pack_weights(weights) if weights is not None else None,
        )
        self._write(
            "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
            "status = excluded.status, reason = excluded.reason, params = excluded.params, "
            "epochs = excluded.epochs, batch_losses = excluded.batch_losses, seconds = excluded.seconds, "
            "weights = coalesce(excluded.weights, runs.weights)",
            values,
        )

    def save_ticket(self, row: TicketRow) -> None:
        """Insert or update a ticket."""
        cut = json.dumps(list(row.cut)) if row.cut else None
        self._write(
            "INSERT INTO tickets VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET cut = excluded.cut",
            (row.id, row.owner, row.run_id, row.label, row.created, cut),
        )
        if row.proof:
            self._write("INSERT OR IGNORE INTO proofs VALUES (?, ?)", (row.id, row.proof))

    def save_checkpoint(self, run_id: str, epoch: int, blob: bytes) -> None:
        """A going run's state after its epoch `epoch`, replacing the one before."""
        self._write("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?)", (run_id, epoch, blob))

    def drop_checkpoint(self, run_id: str) -> None:
        """Free a run's checkpoint (it ended)."""
        self._write("DELETE FROM checkpoints WHERE run_id = ?", (run_id,))

    def checkpoint(self, run_id: str) -> bytes | None:
        """A run's last checkpoint, if one is stored."""
        with self._lock:
            row = self._db.execute("SELECT blob FROM checkpoints WHERE run_id = ?", (run_id,)).fetchone()
        return bytes(row[0]) if row else None

    def active_runs(self) -> list[RunRow]:
        """Runs the file says are queued or running (a server stopped or killed under them), oldest first."""
        with self._lock:
            ids = [
                r[0]
                for r in self._db.execute(
                    "SELECT id FROM runs WHERE status IN (?, ?) ORDER BY created", (Status.QUEUED, Status.RUNNING)
                ).fetchall()
            ]
        return [row for row in map(self.run, ids) if row is not None]

    def tickets_of(self, run_id: str) -> list[TicketRow]:
        """The tickets that follow a run."""
        return self._tickets_where("run_id = ?", run_id)

    def run(self, run_id: str) -> RunRow | None:
        """One run by id."""
        return self._one("SELECT * FROM runs WHERE id = ?", (run_id,))

    def finished_run(self, key: str) -> RunRow | None:
        """The earliest run trained here to the end with this key, if any."""
        return self._one(
            "SELECT * FROM runs WHERE key = ? AND status = ? AND source = 'trained' ORDER BY created LIMIT 1",
            (key, Status.FINISHED),
        )

    def tickets(self, owner: str) -> list[TicketRow]:
        """An owner's tickets, oldest first."""
        return self._tickets_where("owner = ?", owner)

    def _tickets_where(self, condition: str, value: str) -> list[TicketRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT tickets.*, coalesce(proofs.proof, '') FROM tickets LEFT JOIN proofs ON proofs.ticket_id = "
                f"tickets.id WHERE {condition} ORDER BY created",
                (value,),
            ).fetchall()
        return [
            TicketRow(
                id=ticket_id,
                owner=owner,
                run_id=run_id,
                label=label,
                created=created,
                cut=tuple(json.loads(cut)) if cut else None,
                proof=proof,
            )
            for ticket_id, owner, run_id, label, created, cut, proof in rows
        ]

    def set_member(self, class_code: str, owner: str, name: str, name_key: str, joined: float) -> None:
        """Put a student in a class under a display name, or rename them (keeping when they joined); raises
        NameTaken when a classmate has the name."""
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO members VALUES (?, ?, ?, ?, ?) ON CONFLICT (class, owner) DO UPDATE SET "
                    "name = excluded.name, name_key = excluded.name_key",
                    (class_code, owner, name, name_key, joined),
                )
            except sqlite3.IntegrityError:
                raise NameTaken(name) from None
            except sqlite3.OperationalError as error:
                self.problem = f"The run store can't be written ({error}): the class's names will not be kept."

    def members(self, class_code: str) -> list[MemberRow]:
        """A class's students, in the order they joined."""
        with self._lock:
            rows = self._db.execute(
                "SELECT class, owner, name, joined FROM members WHERE class = ? ORDER BY joined", (class_code,)
            ).fetchall()
        return [MemberRow(class_code=code, owner=owner, name=name, joined=joined) for code, owner, name, joined in rows]

    def classes_of(self, owner: str) -> list[str]:
        """The classes a student is in, the one joined last first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT class FROM members WHERE owner = ? ORDER BY joined DESC", (owner,)
            ).fetchall()
        return [row[0] for row in rows]

    def pin(self, class_code: str, ticket_id: str, pinned: bool = True) -> None:
        """Pin a run for a class (or take the pin off)."""
        if pinned:
            self._write("INSERT OR IGNORE INTO pins VALUES (?, ?)", (class_code, ticket_id))
        else:
            self._write("DELETE FROM pins WHERE class = ? AND ticket_id = ?", (class_code, ticket_id))

    def pins(self, class_code: str) -> list[str]:
        """The tickets pinned for a class."""
        with self._lock:
            rows = self._db.execute("SELECT ticket_id FROM pins WHERE class = ?", (class_code,)).fetchall()
        return [row[0] for row in rows]

    def clear_class(self, class_code: str) -> None:
        """Forget a class's students and pins; their runs stay theirs."""
        self._write("DELETE FROM members WHERE class = ?", (class_code,))
        self._write("DELETE FROM pins WHERE class = ?", (class_code,))

    def weights(self, run_id: str) -> dict[str, torch.Tensor] | None:
        """A run's trained weights, if stored."""
        with self._lock:
            row = self._db.execute("SELECT weights FROM runs WHERE id = ?", (run_id,)).fetchone()
        return unpack_weights(row[0]) if row and row[0] is not None else None

    def _one(self, sql: str, args: tuple) -> RunRow | None:
        """The run a query finds; None for none, and for a row that is not a valid run (a damaged or hand-edited
        file), which is left out rather than shown wrong."""
        with self._lock:
            found = self._db.execute(sql.replace("*", _RUN_COLUMNS, 1), args).fetchone()
        if found is None:
            return None
        run_id, key, source, config, status, reason, params, epochs, losses, seconds, created = found
        try:
            record = RunRecord.from_dict(
                {
                    "config": json.loads(config),
                    "status": status,
                    "reason": reason,
                    "params": params,
                    "seconds": seconds,
                    "epochs": json.loads(epochs),
                },
                statuses=STORED,
                count_params=False,
            )
            batch_losses = [tuple(point) for point in json.loads(losses)]
        except (ValueError, TypeError) as error:  # a RecordError, JSON that does not parse, or a NULL column
            log.warning("run %s in the store is left out: %s", run_id, error)
            return None
        return RunRow(id=run_id, key=key, source=source, record=record, batch_losses=batch_losses, created=created)


_RUN_COLUMNS = "id, key, source, config, status, reason, params, epochs, batch_losses, seconds, created"


def pack_weights(state: dict[str, torch.Tensor]) -> bytes:
    """A state dict as bytes: a length-prefixed JSON header (name, dtype, shape) and then each tensor's raw bytes."""
    header, chunks = [], []
    for name, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()
        header.append([name, str(tensor.dtype).removeprefix("torch."), list(tensor.shape)])
        chunks.append(tensor.numpy().tobytes())
    head = json.dumps(header).encode()
    return struct.pack("<I", len(head)) + head + b"".join(chunks)


_DTYPES = {"float32": torch.float32, "float64": torch.float64, "int64": torch.int64}


def unpack_weights(blob: bytes) -> dict[str, torch.Tensor]:
    """The inverse of pack_weights; raises ValueError on anything else."""
    (length,) = struct.unpack_from("<I", blob)
    offset = 4 + length
    state = {}
    for name, dtype_name, shape in json.loads(blob[4:offset]):
        dtype = _DTYPES[dtype_name]
        size = math.prod(shape) * dtype.itemsize
        if offset + size > len(blob):
            raise ValueError(f"the stored weights of {name} are cut short")
        state[name] = torch.frombuffer(bytearray(blob[offset : offset + size]), dtype=dtype).reshape(shape)
        offset += size
    return state
