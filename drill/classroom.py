"""A class: students who open the app with one code in the link (`class=ml-101`), each under a display name of
their own, whose runs the Class page shows together; the teacher's key; the class's table as rows, Markdown and CSV.

Membership lives in the run store (its `members` and `pins` tables). A student's runs are the class's from the
moment they joined it on; runs made without a class stay private. Owner ids never leave this module's rows: the
rows name students by their display names.
"""

from __future__ import annotations

import csv
import hmac
import io
import re
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Any

from drill.analysis import LAST_K, TARGET_ACC, analyse
from drill.config import shorten
from drill.jobs import Snapshot
from drill.presets import preset_of
from drill.records import md_cell, run_names, short_name
from drill.run_record import Status
from drill.store import MemberRow, NameTaken, RunStore

CLASS_PARAM = "class"  # the link's key for the class code
MAX_CODE_CHARS = 32
MAX_NAME_CHARS = 30
NAME_PUNCTUATION = " -_.'"
TEACHER_KEY_ENV = "DRILL_TEACHER_KEY"
CODE_PATTERN = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
HOLDS = f"Holds {TARGET_ACC}%"
COLUMNS = ("Student", "Run", "Step", "Params", "Best test", HOLDS, "Status")
NO_RUN = "no run yet"


class ClassError(ValueError):
    """A class code or display name that can't be used; the message says what was wrong and what is allowed."""


@dataclass(frozen=True)
class Entry:
    """One run of the class: whose (by display name) and the run's snapshot."""

    student: str
    run: Snapshot
    name: str  # the run's name among its student's runs, e.g. "Final #2, seed 1"


def _shown(text: str) -> str:
    """A character or text as a message can show it: control characters by code point, long text cut short."""
    if len(text) == 1 and not text.isprintable():
        return f"U+{ord(text):04X}"
    return shorten(repr(text), 40)


def check_code(text: str) -> str:
    """A class code from a link or a box, lowered; raises ClassError saying what is allowed."""
    code = text.strip().lower()
    allowed = f"a class code is 1 to {MAX_CODE_CHARS} letters (a-z), digits and dashes, like ml-101"
    if not code:
        raise ClassError(f"The **class** code is empty: {allowed}.")
    if len(code) > MAX_CODE_CHARS:
        raise ClassError(f"The **class** code is {len(code):,} characters long: {allowed}.")
    if not CODE_PATTERN.fullmatch(code):
        bad = next((c for c in code if not (c.isascii() and (c.isalnum() or c == "-"))), None)
        why = f"{_shown(bad)} is not allowed" if bad else "a dash can't start, end or double up"
        raise ClassError(f"The **class** code {_shown(code)} can't be used ({why}): {allowed}.")
    return code


def check_name(text: str) -> tuple[str, str]:
    """A display name (spaces tidied) and its key for uniqueness (case and width folded); raises ClassError."""
    name = re.sub(" +", " ", unicodedata.normalize("NFC", text)).strip()
    allowed = f"1 to {MAX_NAME_CHARS} letters, digits, spaces and {' '.join(NAME_PUNCTUATION.strip())}"
    if not name:
        raise ClassError(f"The **Display name** is empty: give {allowed}.")
    if len(name) > MAX_NAME_CHARS:
        raise ClassError(f"The **Display name** is {len(name):,} characters long: give {allowed}.")
    bad = next((c for c in name if not (c.isalnum() or c in NAME_PUNCTUATION)), None)
    if bad is not None:
        raise ClassError(f"The **Display name** can't hold {_shown(bad)}: give {allowed}.")
    return name, unicodedata.normalize("NFKC", name).casefold()


def join(store: RunStore, code: str, owner: str, name: str, now: float | None = None) -> str:
    """Put a student in a class under a display name, or change their name there; the clean name.

    Raises ClassError for a code or name that can't be used, or a name a classmate already has."""
    code = check_code(code)
    clean, key = check_name(name)
    try:
        store.set_member(code, owner, clean, key, time.time() if now is None else now)
    except NameTaken:
        raise ClassError(f"The **Display name** {clean!r} is taken in class {code}: pick another.") from None
    return clean


def member(store: RunStore, code: str, owner: str) -> MemberRow | None:
    """This student's place in the class, if they joined it."""
    return next((m for m in store.members(code) if m.owner == owner), None)


def entries(manager, code: str) -> list[Entry]:
    """Every run of the class's students since each joined, oldest first (a jobs.JobManager's snapshots)."""
    found = []
    for student in manager.store.members(code):
        runs = [run for run in manager.snapshots(student.owner) if run.created >= student.joined]
        names = run_names(runs)
        found += [Entry(student=student.name, run=run, name=names[run.ticket_id]) for run in runs]
    return sorted(found, key=lambda e: e.run.created)


def status_text(run: Snapshot) -> str:
    """A run's status as the leaderboard says it: queued with its place, running epoch N, finished, or why not."""
    if run.status == Status.QUEUED:
        return f"queued, #{run.queue_position} in line" if run.queue_position else "queued"
    if run.status == Status.RUNNING:
        epoch = (run.progress or {}).get("epoch") or len(run.epochs) + 1
        return f"running epoch {epoch} of {run.config.train.epochs}"
    if run.status in (Status.FAILED, Status.STOPPED) and run.reason:
        return f"{run.status}: {run.reason}"
    return run.status


def row(entry: Entry) -> dict:
    """One leaderboard row (the ticket id, to act on it, rides in "ticket_id"; no owner id). "accuracy" is what the
    scatter plots: the lowest of the last epochs for a run that holds the target there, else its best test."""
    run = entry.run
    verdict = analyse(list(run.epochs), run.params or 0, LAST_K)
    held = min(verdict.last_k) if verdict.consistent else None
    return {
        "ticket_id": run.ticket_id,
        "Student": entry.student,
        "Run": entry.name,
        "Step": short_name(run, preset_of(run)),
        "Params": run.params,
        "Best test": None if verdict.best_test is None else round(verdict.best_test, 2),
        HOLDS: verdict.consistent,
        "Status": status_text(run),
        "meets": verdict.meets_target,
        "accuracy": held if held is not None else verdict.best_test,
        "accuracy_kind": f"held over the last {LAST_K} epochs" if held is not None else "best test",
        "config": run.config,
        "Config": run.config.to_query() or "the default settings",
    }


def leaderboard(found: list[Entry]) -> list[dict]:
    """The class's rows, best first: runs that meet the whole target, then those that hold, then by best test,
    fewer parameters breaking ties."""
    rows = [row(entry) for entry in found]
    return sorted(rows, key=lambda r: (not r["meets"], not r[HOLDS], -(r["Best test"] or 0), r["Params"] or 0))


def steps(store: RunStore, code: str, found: list[Entry]) -> Counter:
    """Where the students are in the lesson: how many are on each step, by their latest run."""
    latest = {}
    for entry in found:  # oldest first, so the last one written is the latest
        latest[entry.student] = short_name(entry.run, preset_of(entry.run))
    return Counter(latest.get(m.name, NO_RUN) for m in store.members(code))


def pinned(store: RunStore, code: str, found: list[Entry]) -> list[Entry]:
    """The class's runs its teacher pinned, oldest first."""
    pins = set(store.pins(code))
    return [entry for entry in found if entry.run.ticket_id in pins]


def markdown(rows: list[dict]) -> str:
    """The leaderboard as a Markdown table; cells are plain text (pipes and line breaks made harmless)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|---|---|---:|---:|---|---|"]
    for r in rows:
        lines.append("| " + " | ".join(md_cell(r[c]) for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict]) -> str:
    """The leaderboard as CSV; a cell a spreadsheet would read as a formula starts with a quote mark instead."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow([_csv(r[c]) for c in COLUMNS])
    return out.getvalue()


def _csv(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def key_matches(given: str, expected: str | None) -> bool:
    """Whether a typed teacher key is the server's, compared in constant time; no key set, no teacher."""
    if not expected or not given:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())
