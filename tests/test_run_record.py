"""The typed run record (drill.run_record): one validator for every record read from outside, naming the run and the
field; a run's round trip through its JSON; the Status values being what the run store holds."""

from __future__ import annotations

import json
import sqlite3

import pytest

from drill import records
from drill.checkpoint import Checkpoint, CheckpointError
from drill.jobs import config_key
from drill.presets import get_preset
from drill.run_record import (
    ACTIVE,
    ENDED,
    EPOCH_KEYS,
    MAX_REASON_CHARS,
    STORED,
    Epoch,
    RecordError,
    RunRecord,
    Status,
    model_params,
)
from drill.store import RunRow, RunStore

CONFIG = get_preset("quick").config.replace(train={"epochs": 2})


def epochs(*tests: float) -> tuple[Epoch, ...]:
    return tuple(
        Epoch(epoch=i, train_loss=0.2, train_acc=acc + 0.3, test_loss=0.05, test_acc=acc, lr=0.01, seconds=3.25)
        for i, acc in enumerate(tests, start=1)
    )


def record(**changes) -> RunRecord:
    fields = dict(
        config=CONFIG,
        status=Status.FINISHED,
        params=model_params(CONFIG),
        seconds=6.5,
        epochs=epochs(97.1, 98.2),
        label="Quick demo",
    )
    return RunRecord(**(fields | changes))


def test_a_run_comes_back_from_its_json_as_it_went_in():
    runs = [record(), record(status=Status.STOPPED, reason="stopped during epoch 2", epochs=epochs(96.0))]
    text = records.records_json(runs)
    assert records.parse_records(text) == runs
    assert [RunRecord.from_dict(json.loads(json.dumps(run.to_dict()))) for run in runs] == runs
    first = json.loads(text)[0]
    assert list(first) == ["label", "config", "status", "reason", "params", "seconds", "epochs"]
    assert first["status"] == "finished" and set(first["epochs"][0]) == set(EPOCH_KEYS)


def test_a_run_still_going_is_not_exported_and_a_file_may_not_claim_one():
    assert json.loads(records.records_json([record(status=Status.RUNNING, epochs=epochs(97.0))])) == []
    with pytest.raises(RecordError, match=r"Run 1 \('Quick demo'\), status: 'running' is not one of finished"):
        RunRecord.from_dict(record(status=Status.RUNNING, epochs=epochs(97.0)).to_dict())


@pytest.mark.parametrize(
    "change, message",
    [
        ({"test_acc": 101.0}, "Run 3 ('Quick demo'), epochs[1].test_acc: 101.0 is not a number from 0 to 100"),
        ({"lr": "fast"}, "Run 3 ('Quick demo'), epochs[1].lr: 'fast' is not a number from 0 to 10"),
        ({"epoch": 5}, "Run 3 ('Quick demo'), epochs[1].epoch: 5 out of order"),
        ({"bonus": 1}, "Run 3 ('Quick demo'), epochs[1]: unknown key 'bonus'"),
    ],
)
def test_a_bad_epoch_is_refused_naming_the_run_and_the_field(change, message):
    data = record().to_dict()
    data["epochs"][1] |= change
    with pytest.raises(RecordError) as refused:
        RunRecord.from_dict(data, index=3)
    assert str(refused.value).startswith(message)


def test_a_bad_record_is_refused_naming_the_run_and_the_field():
    with pytest.raises(RecordError, match=r"^Run 2 \('Quick demo'\), params: 12 does not match its config"):
        RunRecord.from_dict(record(params=12).to_dict(), index=2)
    with pytest.raises(RecordError, match=r"^Run 1 \('Quick demo'\), epochs: a finished run has all 2 epochs"):
        RunRecord.from_dict(record(epochs=epochs(97.0)).to_dict())


def test_params_are_kept_as_none_only_for_a_run_that_ended_before_its_network_was_built():
    never_built = record(status=Status.FAILED, reason="it could not start", params=None, epochs=())
    assert RunRecord.from_dict(never_built.to_dict()).params is None
    left_out = {key: value for key, value in record().to_dict().items() if key != "params"}
    assert RunRecord.from_dict(left_out).params == model_params(CONFIG)


def test_the_status_values_are_the_strings_the_store_holds(tmp_path):
    assert {str(s) for s in STORED} == {"queued", "running", "finished", "stopped", "failed"}
    assert set(ACTIVE) | set(ENDED) == set(STORED) and Status("finished") is Status.FINISHED == "finished"
    store = RunStore(tmp_path / "runs.sqlite")
    for n, status in enumerate(STORED):
        run = record(status=status, epochs=epochs(97.0) if status in ACTIVE else record().epochs)
        store.save_run(RunRow(id=f"run-{n}", key=config_key(CONFIG), source="trained", record=run, batch_losses=[],
                              created=n))  # fmt: skip
    store.close()
    with sqlite3.connect(tmp_path / "runs.sqlite") as db:
        held = [row[0] for row in db.execute("SELECT status FROM runs ORDER BY created")]
    assert held == list(STORED)
    reopened = RunStore(tmp_path / "runs.sqlite")
    assert [reopened.run(f"run-{n}").record.status for n in range(len(STORED))] == list(STORED)
    assert [row.id for row in reopened.active_runs()] == ["run-0", "run-1"]
    reopened.close()


def test_a_store_row_that_is_not_a_valid_run_is_left_out(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    row = RunRow(id="run-1", key="k", source="trained", record=record(label=""), batch_losses=[(0.5, 1.0)], created=1.0)
    store.save_run(row)
    assert store.run("run-1") == row
    store.close()
    with sqlite3.connect(tmp_path / "runs.sqlite") as db:  # a hand-edited file
        data = record().to_dict()
        data["epochs"][0]["test_acc"] = 250.0
        db.execute("UPDATE runs SET epochs = ? WHERE id = 'run-1'", (json.dumps(data["epochs"]),))
    reopened = RunStore(tmp_path / "runs.sqlite")
    assert reopened.run("run-1") is None and reopened.finished_run("k") is None
    reopened.close()


@pytest.mark.parametrize("column", ["batch_losses", "config"])
def test_a_store_row_whose_json_is_damaged_is_left_out_too(tmp_path, column):
    store = RunStore(tmp_path / "runs.sqlite")
    store.save_run(RunRow(id="run-1", key="k", source="trained", record=record(), batch_losses=[], created=1.0))
    store.close()
    with sqlite3.connect(tmp_path / "runs.sqlite") as db:
        db.execute(f"UPDATE runs SET {column} = '[1, 2' WHERE id = 'run-1'")
    reopened = RunStore(tmp_path / "runs.sqlite")
    assert reopened.run("run-1") is None
    reopened.close()


def test_a_failed_run_whose_reason_is_a_whole_traceback_still_reads_back_from_the_store(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    failed = record(status=Status.FAILED, reason="RayTaskError: " + "x" * 50_000, epochs=())
    store.save_run(RunRow(id="run-1", key="k", source="trained", record=failed, batch_losses=[], created=1.0))
    store.close()
    reopened = RunStore(tmp_path / "runs.sqlite")
    kept = reopened.run("run-1")
    assert kept is not None and kept.record.status == Status.FAILED
    assert kept.record.reason.startswith("RayTaskError: xxx") and len(kept.record.reason) == MAX_REASON_CHARS
    reopened.close()


def test_a_checkpoint_with_a_bad_epoch_is_refused_naming_the_field():
    good = Checkpoint(epochs=epochs(97.0), seconds=3.0, config=CONFIG.to_dict())
    assert Checkpoint.from_bytes(good.to_bytes()).epochs == good.epochs
    blob = good.to_bytes().replace(b'"test_acc"', b'"test_acx"', 1)  # the header's length stays
    with pytest.raises(CheckpointError, match=r"the checkpoint's epochs\[0\]: missing test_acc"):
        Checkpoint.from_bytes(blob)
