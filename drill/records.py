"""Run records: the Compare table as students write it up, its Markdown export, and JSON export/import of runs.

A run record is run_summary()'s dict plus a label. Imports come from students' files, so they are parsed as plain
JSON (never eval, never pickle), capped in size and count, and every field is checked before anything is kept.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch

from drill.analysis import LAST_K, analyse
from drill.config import ConfigError, RunConfig, shorten
from drill.model import Net, count_params
from drill.presets import BY_TITLE, EDITED, Preset, preset_of
from drill.proof import Proof
from drill.train import EPOCH_KEYS

MAX_IMPORT_BYTES = 5 * 2**20
MAX_RUNS = 200
MAX_LABEL_CHARS = 200
MAX_REASON_CHARS = 2000
MAX_SECONDS = 7 * 24 * 3600.0  # a week: more than any run on a shared class server takes
ENDED = ("finished", "stopped", "failed")
RECORD_KEYS = ("label", "config", "status", "reason", "params", "seconds", "epochs")
# Sane (low, high, whole number) bounds per epoch value; losses are NLL / cross-entropy, so never negative.
EPOCH_BOUNDS = {
    "epoch": (1, 20, True),
    "train_loss": (0.0, 1e6, False),
    "train_acc": (0.0, 100.0, False),
    "test_loss": (0.0, 1e6, False),
    "test_acc": (0.0, 100.0, False),
    "lr": (0.0, 10.0, False),
    "seconds": (0.0, MAX_SECONDS, False),
}
assert set(EPOCH_BOUNDS) == set(EPOCH_KEYS), "every epoch value needs bounds"
MARKDOWN_COLUMNS = ("Step", "Target", "Params", "Best train", "Best test", "Last {k}", "Analysis")


class RecordError(ValueError):
    """An import that cannot be used; the message names the run and the field, in words a student can act on."""


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
    """Each run's name as a person gives it, e.g. "Final #2, seed 1" (see _numbered)."""
    numbered = _numbered(runs, preset_of)
    return {run.id: f"{numbered[run.proof or run.id]}, seed {run.config.train.seed}" for run in runs}


def _numbered(runs: list[Any], preset_of: Callable[[Any], Preset | None]) -> dict[str, str]:
    """By run id (or proof id for a proof's seeds, which share one number): its step numbered among the student's
    runs of that step, oldest first, e.g. "Final #2"; the number is left out where there is one run of the step."""
    steps: dict[str, str] = {}
    for run in runs:
        steps.setdefault(run.proof or run.id, short_name(run, preset_of(run)))
    totals, seen, numbered = Counter(steps.values()), Counter(), {}
    for group, step in steps.items():
        seen[step] += 1
        numbered[group] = f"{step} #{seen[step]}" if totals[step] > 1 else step
    return numbered


def table_row(run: Any, preset: Preset | None = None, k: int = LAST_K) -> dict:
    """One row of the Compare table for a run (a jobs Snapshot or anything with the same fields)."""
    verdict = analyse(list(run.epochs), run.params or 0, k)
    last_k = ", ".join(f"{acc:.2f}" for acc in verdict.last_k)
    analysis = verdict.text
    if run.status == "failed":
        analysis = f"Failed: {run.reason}" + (f" {verdict.text}" if run.epochs else "")
    elif run.status == "stopped":
        analysis = f"Stopped ({run.reason})." + (f" {verdict.text}" if run.epochs else "")
    elif run.status in ("queued", "running"):
        analysis = f"Still {run.status}: {len(run.epochs)} epoch(s) so far."
    return {
        "Step": step_name(run.label, preset, getattr(run, "id", "")),
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
            rows.append((names[run.id], table_row(run, preset_of(run))))
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
def to_record(run: Any) -> dict:
    """A JSON-ready record of a run (run_summary's fields plus its label)."""
    return {
        "label": run.label,
        "config": run.config.to_dict(),
        "status": run.status,
        "reason": run.reason,
        "params": run.params,
        "seconds": round(run.seconds, 2),
        "epochs": [dict(e) for e in run.epochs],
    }


def records_json(runs: list[Any]) -> str:
    """The ended runs as a JSON list of records (runs still going are left out: they have no result yet)."""
    return json.dumps([to_record(run) for run in runs if run.status in ENDED], indent=1)


# -- import --------------------------------------------------------------------------------------------------------
def parse_records(raw: bytes | str) -> list[dict]:
    """Validate an exported runs file; returns clean records for JobManager.add_finished, or raises RecordError."""
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
        raise RecordError(f"The file holds a JSON {_kind(data)}; a runs file holds a list of runs.")
    if not data:
        raise RecordError("The file holds no runs (an empty list).")
    if len(data) > MAX_RUNS:
        raise RecordError(f"The file holds {len(data)} runs; at most {MAX_RUNS} can be imported at once.")
    return [check_record(record, index) for index, record in enumerate(data, start=1)]


def split_new(loaded: list[dict], existing: list[Any]) -> tuple[list[dict], int]:
    """(records not already among the existing runs, how many were already there): importing twice adds nothing."""

    def key(record: dict) -> str:
        return json.dumps([record["label"], record["config"], record["epochs"]], sort_keys=True)

    seen = {key(to_record(run)) for run in existing if run.status in ENDED}
    fresh = []
    for record in loaded:
        if key(record) not in seen:
            seen.add(key(record))
            fresh.append(record)
    return fresh, len(loaded) - len(fresh)


def _reject_constant(name: str) -> float:
    raise RecordError(f"The file contains {name}, which is not a number a run can report.")


def check_record(record: Any, index: int = 1) -> dict:
    """One record checked field by field; the error names the run (1-based) and the field."""

    def fail(field: str, problem: str) -> RecordError:
        label = record.get("label") if isinstance(record, dict) else None
        named = f" ({shorten(label, 40)!r})" if isinstance(label, str) and label else ""
        return RecordError(f"Run {index}{named}, {field}: {problem}")

    if not isinstance(record, dict):
        raise fail("record", f"a JSON {_kind(record)}, expected an object with the keys {', '.join(RECORD_KEYS)}")
    unknown = sorted(set(record) - set(RECORD_KEYS))
    if unknown:
        raise fail(shorten(unknown[0], 40), f"unknown key; a run record has only {', '.join(RECORD_KEYS)}")
    for key in ("config", "epochs"):
        if key not in record:
            raise fail(key, "missing")
    label = record.get("label", "")
    if not isinstance(label, str) or len(label) > MAX_LABEL_CHARS:
        raise fail("label", f"expected text of at most {MAX_LABEL_CHARS} characters")
    try:
        config = RunConfig.from_dict(record["config"])
    except ConfigError as error:
        raise fail("config", str(error)) from None
    except (TypeError, ValueError, RecursionError) as error:  # belt and braces: no odd value may escape as a traceback
        raise fail("config", f"not a valid config ({shorten(str(error))})") from None
    status = record.get("status", "finished")
    if status not in ENDED:
        raise fail("status", f"{_value(status)} is not one of {', '.join(ENDED)}")
    reason = record.get("reason", "")
    if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS:
        raise fail("reason", f"expected text of at most {MAX_REASON_CHARS} characters")
    seconds = record.get("seconds", 0.0)
    if not _number_in(seconds, 0.0, MAX_SECONDS):
        raise fail("seconds", f"{_value(seconds)} is not a number from 0 to {MAX_SECONDS:.0f}")
    params = model_params(config)
    if record.get("params") is not None and record["params"] != params:
        raise fail("params", f"{_value(record['params'])} does not match its config, whose network has {params:,}")
    epochs = _check_epochs(record["epochs"], config, fail)
    if status == "finished" and len(epochs) != config.train.epochs:
        raise fail(
            "epochs", f"a finished run has all {config.train.epochs} epochs of its config, this one {len(epochs)}"
        )
    return {
        "label": label,
        "config": config.to_dict(),
        "status": status,
        "reason": reason,
        "params": params,
        "seconds": float(seconds),
        "epochs": epochs,
    }


def _check_epochs(epochs: Any, config: RunConfig, fail) -> list[dict]:
    """The epoch list checked: at most the config's epochs, each with every value numeric and in its bounds."""
    if not isinstance(epochs, list):
        raise fail("epochs", f"a JSON {_kind(epochs)}, expected a list of epoch records")
    if len(epochs) > config.train.epochs:
        raise fail("epochs", f"{len(epochs)} epochs, but its config trains for {config.train.epochs}")
    clean = []
    for position, epoch in enumerate(epochs):
        where = f"epochs[{position}]"
        if not isinstance(epoch, dict):
            raise fail(where, f"a JSON {_kind(epoch)}, expected an object with {', '.join(EPOCH_KEYS)}")
        missing = [key for key in EPOCH_KEYS if key not in epoch]
        extra = sorted(set(epoch) - set(EPOCH_KEYS))
        if missing or extra:
            problem = f"missing {', '.join(missing)}" if missing else f"unknown key {shorten(extra[0], 40)!r}"
            raise fail(where, f"{problem}; an epoch record has exactly {', '.join(EPOCH_KEYS)}")
        for key, (low, high, whole) in EPOCH_BOUNDS.items():
            value = epoch[key]
            if not _number_in(value, low, high) or (whole and not float(value).is_integer()):
                kind = "a whole number" if whole else "a number"
                raise fail(f"{where}.{key}", f"{_value(value)} is not {kind} from {low:g} to {high:g}")
        if epoch["epoch"] != position + 1:
            raise fail(f"{where}.epoch", f"{epoch['epoch']} out of order; epochs are numbered 1, 2, 3, ...")
        clean.append({key: int(epoch[key]) if EPOCH_BOUNDS[key][2] else float(epoch[key]) for key in EPOCH_KEYS})
    return clean


def model_params(config: RunConfig) -> int:
    """Parameters of a config's network, counted on the meta device (no memory, no initialisation)."""
    with torch.device("meta"):
        return count_params(Net(config.model))


def _number_in(value: Any, low: float, high: float) -> bool:
    """A JSON number (not a boolean), finite and within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    # Compare ints as ints: a 400-digit integer cannot even be converted to a float.
    return (isinstance(value, int) or math.isfinite(value)) and low <= value <= high


def _kind(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "true/false", type(None): "null"}.get(
        type(value), "number"
    )


def _value(value: Any) -> str:
    """A value as it was written in the file (text quoted), cut short."""
    return shorten(repr(value), 40)
