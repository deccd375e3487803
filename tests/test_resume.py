"""Runs survive their server: a run going when the server stops, or is killed with SIGKILL mid-epoch, resumes from its
last finished epoch when a server opens the store again, and computes exactly what it would have computed without
the interruption (same machine, same thread count). A checkpoint that cannot be used starts the run over, saying why."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import uuid

import pytest
from conftest import REPO_ROOT, trained_here, wait_until

from drill.backends import ThreadBackend, usable_cpus
from drill.checkpoint import Checkpoint
from drill.data import load_mnist
from drill.jobs import JobManager
from drill.presets import get_preset
from drill.run_record import ACTIVE, Epoch, RunRecord
from drill.store import RunStore
from drill.train import train

# Fifteen epochs of a small run: a second or two each, so a test can interrupt it in epoch 7.
RUN = get_preset("final").config.replace(train={"subset": 640, "epochs": 15, "seed": 77})
SHORT = RUN.replace(train={"epochs": 4})  # for the faults: any interruption between epochs makes the point
SERVER = textwrap.dedent(
    """
    import sys, time
    from drill.backends import ThreadBackend
    from drill.config import RunConfig
    from drill.jobs import JobManager
    from drill.store import RunStore
    store_path, config_json = sys.argv[1], sys.argv[2]
    manager = JobManager(backend=ThreadBackend(1), store=RunStore(store_path))
    if config_json != "-":
        manager.submit("ann", RunConfig.from_json(config_json))
    while True:  # a server whose student keeps the page open, until it is killed or its runs end
        manager.touch("ann")
        [run] = manager.snapshots("ann")
        print(run.status, len(run.epochs), run.note, sep="|", flush=True)
        if run.status not in ("queued", "running"):
            break
        time.sleep(0.2)
    """
)


def untimed(epochs) -> list[Epoch]:
    return [dataclasses.replace(e, seconds=0.0) for e in epochs]


@functools.cache
def uninterrupted(config) -> list[Epoch]:
    """The run trained start to end here, with the thread count a one-slot server gives it."""
    return untimed(trained_here(config, load_mnist(), usable_cpus()).epochs)


def stored(path, what: str):
    """One row of a query on the store file, read-only: the server may be writing it."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return db.execute(what).fetchone()


def checkpointed(path) -> int:
    """The epoch of the newest checkpoint in the store file (0 when there is none yet)."""
    try:
        return stored(path, "SELECT max(epoch) FROM checkpoints")[0] or 0
    except sqlite3.OperationalError:  # a CI run once read the file before the server had made its tables
        return 0


def test_a_server_killed_mid_epoch_7_resumes_the_run_and_it_computes_the_same_15_epochs(tmp_path):
    path = tmp_path / "runs.sqlite"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    first = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(path), RUN.to_json()], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        # Epoch 6 is checkpointed: the kill lands while epoch 7 trains.
        wait_until(
            lambda: checkpointed(path) == 6,
            600,
            0.05,
            what="the run's checkpoint after epoch 6",
        )
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.kill()
        first.wait()
    assert stored(path, "SELECT status FROM runs") == ("running",)  # nothing clean happened
    second = subprocess.run(
        [sys.executable, "-c", SERVER, str(path), "-"], env=env, capture_output=True, text=True, timeout=900
    )
    assert second.returncode == 0, second.stderr[-3000:]
    lines = second.stdout.splitlines()
    assert lines[0].split("|")[2] == "Resumed after epoch 6: the server restarted, and nothing trained before is lost."
    assert lines[-1].split("|")[:2] == ["finished", "15"]
    store = RunStore(path)
    try:
        [row] = [store.run(r.run_id) for r in store.tickets("ann")]
        assert untimed(row.record.epochs) == uninterrupted(RUN)
        assert stored(path, "SELECT count(*) FROM checkpoints") == (0,)  # freed when the run ended
    finally:
        store.close()


def interrupted_run(path, epochs_done: int = 2, owner: str = "ann"):
    """A run trained by a server that is then stopped cleanly after epochs_done epochs are checkpointed."""
    manager = JobManager(backend=ThreadBackend(1), store=RunStore(path))
    ticket = manager.submit(owner, SHORT)
    wait_until(
        lambda: manager.touch(owner) or checkpointed(path) >= epochs_done,
        600,
        0.05,
        what=f"a checkpoint after epoch {epochs_done}",
    )
    manager.shutdown(timeout=120)
    return ticket


def finish(path):
    """Open the store in a new server, wait for the student's run to end, and return its snapshot."""
    manager = JobManager(backend=ThreadBackend(1), store=RunStore(path))
    try:
        [run] = manager.snapshots("ann")
        note = run.note
        wait_until(
            lambda: manager.touch("ann") or manager.snapshots("ann")[0].status not in ACTIVE,
            900,
            0.1,
            what="the resumed run to end",
        )
        return note, manager.snapshots("ann")[0]
    finally:
        manager.shutdown()


def test_a_clean_restart_resumes_from_the_last_checkpoint(tmp_path):
    path = tmp_path / "runs.sqlite"
    interrupted_run(path)
    size = stored(path, "SELECT length(blob) FROM checkpoints")[0]
    assert 50_000 < size < 250_000  # the final step's network, its optimizer and generators: about 100 KB
    note, run = finish(path)
    assert note.startswith("Resumed after epoch ")
    assert run.status == "finished" and untimed(run.epochs) == uninterrupted(SHORT)


@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda blob: blob[: len(blob) // 2], "its checkpoint could not be used (the checkpoint is cut short)"),
        (lambda blob: b"\x00" * 64, "its checkpoint could not be used (not a checkpoint"),
        (
            lambda blob: blob.replace(b'"format", 1', b'"format", 0', 1),
            "its checkpoint could not be used (a checkpoint of format 0; this version reads format 1)",
        ),
    ],
)
def test_a_checkpoint_that_cannot_be_used_starts_the_run_over_saying_why(tmp_path, damage, why):
    path = tmp_path / "runs.sqlite"
    interrupted_run(path, epochs_done=1)
    with sqlite3.connect(path) as db:
        [(blob,)] = db.execute("SELECT blob FROM checkpoints").fetchall()
        Checkpoint.from_bytes(blob)  # it was sound before the damage
        db.execute("UPDATE checkpoints SET blob = ?", (damage(blob),))
    note, run = finish(path)
    assert note.startswith(f"Started over from epoch 1: {why}"), note
    assert run.status == "finished" and untimed(run.epochs) == uninterrupted(SHORT)


def test_queued_runs_keep_their_places_across_a_restart(tmp_path):
    path = tmp_path / "runs.sqlite"
    manager = JobManager(backend=ThreadBackend(1), store=RunStore(path))
    tickets = [
        manager.submit(name, RUN.replace(train={"seed": seed})) for seed, name in ((1, "ann"), (2, "bob"), (3, "cy"))
    ]
    wait_until(lambda: manager.snapshot(tickets[0].id).progress.get("batch"), 300, what="the first run to train")
    manager.shutdown(timeout=120)
    restarted = JobManager(backend=ThreadBackend(1), store=RunStore(path))
    try:
        places = [restarted.snapshot(t.id).queue_position for t in tickets]
        assert places[0] is None and places[1:] == [1, 2]  # the first trains again; the others wait in order
        assert restarted.snapshot(tickets[0].id).status == "running"
    finally:
        restarted.shutdown()


def test_the_train_page_shows_the_resumed_run_and_that_nothing_was_lost(tmp_path, monkeypatch, fresh_app_manager):
    from streamlit.testing.v1 import AppTest

    owner = uuid.uuid4().hex
    path = tmp_path / "runs.sqlite"
    interrupted_run(path, epochs_done=1, owner=owner)
    monkeypatch.setenv("DRILL_RUNS_DB", str(path))  # the app's next manager: a server started on this store
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=60)
    at.session_state["owner"] = owner  # the student's browser brings their id in its cookie
    at.run()
    at.switch_page("views/train.py").run()
    assert not at.exception, at.exception
    notes = [i.value for i in at.info]
    assert any(n.startswith("Resumed after epoch ") and "nothing trained before is lost" in n for n in notes), notes


def test_a_cli_run_cut_short_by_ctrl_c_goes_on_from_its_checkpoint(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    base = [sys.executable, "-m", "drill", "train", "--preset", "quick", "--subset", "640", "--epochs", "4"]
    checkpoint = tmp_path / "run.ckpt"
    resumable = [*base, "--checkpoint", str(checkpoint), "--out", str(tmp_path / "resumed.json")]
    cut = subprocess.Popen(resumable, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: checkpoint.exists() or cut.poll() is not None, 600, 0.02, what="the first checkpoint")
    cut.send_signal(signal.SIGINT)
    _, err = cut.communicate(timeout=120)
    assert cut.returncode == 130, err[-2000:]
    assert "interrupted: give the same command again to go on from its last finished epoch" in err
    again = subprocess.run(resumable, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert re.search(rf"^resuming after epoch [123] from {re.escape(str(checkpoint))}$", again.stdout, re.M), (
        again.stdout
    )
    assert not checkpoint.exists()  # freed when the run finished
    whole = subprocess.run([*base, "--out", str(tmp_path / "whole.json")], env=env, capture_output=True, timeout=600)
    assert whole.returncode == 0
    resumed, straight = (
        RunRecord.from_dict(json.loads((tmp_path / name).read_text())) for name in ("resumed.json", "whole.json")
    )
    assert untimed(resumed.epochs) == untimed(straight.epochs) and len(straight.epochs) == 4


def test_a_checkpoint_of_another_config_is_refused_by_the_cli(tmp_path, capsys):
    from drill.__main__ import main

    checkpoint = tmp_path / "run.ckpt"
    blob = train(SHORT, load_mnist(), pause=lambda: True).checkpoint.to_bytes()
    checkpoint.write_bytes(blob)
    assert main(["train", "--preset", "quick", "--subset", "640", "--checkpoint", str(checkpoint)]) == 1
    out = capsys.readouterr().out
    assert "failed: ValueError: the checkpoint is of another config, so this run cannot go on from it" in out
    checkpoint.write_bytes(blob[:100])
    assert main(["train", "--preset", "quick", "--checkpoint", str(checkpoint)]) == 2
    assert "cannot be resumed from: the checkpoint is cut short; delete it to start over" in capsys.readouterr().err
