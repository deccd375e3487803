"""Run records in the Compare page's words: its table as students write it up, the Markdown export, and JSON
export/import of runs (drill.run_record.RunRecord, one per run).

Imports come from students' files, so they are parsed as plain JSON (never eval, never pickle), capped in size and
count, and every record goes through RunRecord.from_dict before anything is kept.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from drill.analysis import LAST_K, analyse
from drill.config import shorten
from drill.presets import BY_TITLE, EDITED, Preset, preset_of
from drill.proof import Proof
from drill.run_record import ACTIVE, ENDED, RecordError, RunRecord, Status, kind

MAX_IMPORT_BYTES = 5 * 2**20
MAX_RUNS = 200
MARKDOWN_COLUMNS = ("Step", "Target", "Params", "Best train", "Best test", "Last {k}", "Analysis")


# -- the table ---------------------------------------------------------------------------------------------------
def step_name(label: str, preset: Preset | None, fallback: str = "") -> str:
    """What the Step column says: the preset's title, the run's label, or both when they differ."""
    if preset and label and label != preset.title:
        return f"{preset.title} ({label})"
    return (preset.title if preset else label) or fallback


def short_name(run: Any, preset: Preset | None) -> str:
    """A run's step as a person says it: "Final", "Final (edited)" for a preset edited before the run, else its
    label."""
    if preset:
        return preset.short
    base = BY_TITLE.get(run.label.removesuffix(EDITED))
    if base and run.label.endswith(EDITED):
        return base.short + EDITED
    return run.label or "Custom"


def run_names(runs: list[Any], preset_of: Callable[[Any], Preset | None] = preset_of) -> dict[str, str]:
    """Each run's name as a person gives it, e.g. "Final #2, seed 1" (see _numbered), by ticket id."""
    numbered = _numbered(runs, preset_of)
    return {run.ticket_id: f"{numbered[run.proof or run.ticket_id]}, seed {run.config.train.seed}" for run in runs}


def _numbered(runs: list[Any], preset_of: Callable[[Any], Preset | None]) -> dict[str, str]:
    """By ticket id (or proof id for a proof's seeds, which share one number): its step numbered among the student's
    runs of that step, oldest first, e.g. "Final #2"; the number is left out where there is one run of the step."""
    steps: dict[str, str] = {}
    for run in runs:
        steps.setdefault(run.proof or run.ticket_id, short_name(run, preset_of(run)))
    totals, seen, numbered = Counter(steps.values()), Counter(), {}
    for group, step in steps.items():
        seen[step] += 1
        numbered[group] = f"{step} #{seen[step]}" if totals[step] > 1 else step
    return numbered


def table_row(run: Any, preset: Preset | None = None, k: int = LAST_K, fallback: str = "") -> dict:
    """One row of the Compare table for a run (a RunRecord, or a jobs Snapshot); `fallback` names a run with no
    label and no preset."""
    verdict = analyse(list(run.epochs), run.params or 0, k)
    last_k = ", ".join(f"{acc:.2f}" for acc in verdict.last_k)
    analysis = verdict.text
    if run.status == Status.FAILED:
        analysis = f"Failed: {run.reason}" + (f" {verdict.text}" if run.epochs else "")
    elif run.status == Status.STOPPED:
        analysis = f"Stopped ({run.reason})." + (f" {verdict.text}" if run.epochs else "")
    elif run.status in ACTIVE:
        analysis = f"Still {run.status}: {len(run.epochs)} epoch(s) so far."
    return {
        "Step": step_name(run.label, preset, fallback),
        "Target": preset.target if preset else "",
        "Params": run.params,
        "Best train": _round(verdict.best_train),
        "Best test": _round(verdict.best_test),
        f"Last {k}": f"{last_k} ({'yes' if verdict.consistent else 'no'})" if last_k else "",
        "Consistent": verdict.consistent,
        "Status": run.status if not run.reason else f"{run.status}: {run.reason}",
        "Analysis": analysis,
    }


def proof_row(runs: list[Any], preset: Preset | None = None, k: int = LAST_K) -> dict:
    """One row of the Compare table for a proof over seeds (its runs, one per seed): the verdict over them all."""
    proof = Proof.of(runs, k)
    verdicts = [analyse(list(run.epochs), run.params or 0, k) for run in runs]
    trains = [v.best_train for v in verdicts if v.best_train is not None]
    tests = [v.best_test for v in verdicts if v.best_test is not None]
    status = "going" if proof.going else "proven" if proof.proven else "not proven"
    return {
        "Step": f"{step_name(runs[0].label, preset)}, proof over {len(runs)} seeds",
        "Target": preset.target if preset else "",
        "Params": runs[0].params,
        "Best train": _round(max(trains, default=None)),
        "Best test": _round(max(tests, default=None)),
        f"Last {k}": f"{proof.held_by} of {len(runs)} seeds hold ({'yes' if proof.proven else 'no'})",
        "Consistent": proof.proven,
        "Status": status,
        "Analysis": proof.verdict(),
    }


def write_up(runs: list[Any], preset_of: Callable[[Any], Preset | None] = preset_of) -> list[tuple[str, dict]]:
    """The Compare table's rows, oldest first, as (name, row): a run per row ("Final #2, seed 1"), and a proof's
    seeds as one row ("Final #3, seeds 1-3")."""
    numbered, names = _numbered(runs, preset_of), run_names(runs, preset_of)
    rows, proofs = [], {}
    for run in runs:
        if run.proof:
            proofs.setdefault(run.proof, []).append(run)
    for run in runs:
        if not run.proof:
            rows.append((names[run.ticket_id], table_row(run, preset_of(run), fallback=run.ticket_id)))
        elif run.proof in proofs:
            seeds = proofs.pop(run.proof)
            span = f"{seeds[0].config.train.seed}-{seeds[-1].config.train.seed}"
            rows.append((f"{numbered[run.proof]}, seeds {span}", proof_row(seeds, preset_of(run))))
    return rows


def markdown_table(rows: list[dict], k: int = LAST_K) -> str:
    """The table as Markdown, ready to paste into a README write-up."""
    columns = [c.format(k=k) for c in MARKDOWN_COLUMNS]
    lines = ["| " + " | ".join(columns) + " |", "|---|---|---:|---:|---:|---|---|"]
    for row in rows:
        cells = [md_cell(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def md_cell(value: Any) -> str:
    """A table cell as Markdown text: numbers formatted, pipes and line breaks made harmless."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.2f}%"
    return " ".join(str(value).split()).replace("|", "\\|")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


# -- export --------------------------------------------------------------------------------------------------------
def records_json(runs: list[RunRecord]) -> str:
    """The ended runs as a JSON list of records (runs still going are left out: they have no result yet)."""
    return json.dumps([run.to_dict() for run in runs if run.status in ENDED], indent=1)


# -- import --------------------------------------------------------------------------------------------------------
def parse_records(raw: bytes | str) -> list[RunRecord]:
    """Validate an exported runs file; returns its records for JobManager.add_finished, or raises RecordError."""
    if len(raw) > MAX_IMPORT_BYTES:
        raise RecordError(
            f"The file is {len(raw) / 2**20:.1f} MB; run files are at most {MAX_IMPORT_BYTES // 2**20} MB."
        )
    if not raw:
        raise RecordError("The file is empty: export runs from the Compare page to get a file to import.")
    try:
        text = raw.decode("utf-8-sig") if isinstance(raw, bytes) else raw
        data = json.loads(text, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise RecordError(
            "The file is not text (UTF-8 JSON): export runs from the Compare page and import that file."
        ) from None
    except RecordError:
        raise
    except (ValueError, RecursionError) as error:
        raise RecordError(f"The file is not valid JSON ({shorten(str(error))}); was it cut short or edited?") from None
    if not isinstance(data, list):
        raise RecordError(f"The file holds a JSON {kind(data)}; a runs file holds a list of runs.")
    if not data:
        raise RecordError("The file holds no runs (an empty list).")
    if len(data) > MAX_RUNS:
        raise RecordError(f"The file holds {len(data)} runs; at most {MAX_RUNS} can be imported at once.")
    return [RunRecord.from_dict(record, index) for index, record in enumerate(data, start=1)]


def split_new(loaded: list[RunRecord], existing: list[RunRecord]) -> tuple[list[RunRecord], int]:
    """(records not already among the existing runs, how many were already there): importing twice adds nothing."""

    def key(record: RunRecord) -> tuple:
        return record.label, record.config, record.epochs

    seen = {key(run) for run in existing if run.status in ENDED}
    fresh = []
    for record in loaded:
        if key(record) not in seen:
            seen.add(key(record))
            fresh.append(record)
    return fresh, len(loaded) - len(fresh)


def _reject_constant(name: str) -> float:
    raise RecordError(f"The file contains {name}, which is not a number a run can report.")
