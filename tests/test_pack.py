"""The recorded-runs pack: made by `record` for real (on tiny runs here), checked file by file and by what today's
code computes, served at once and labelled, replayed on the Train page; and the pack the app ships."""

from __future__ import annotations

import json
import shutil
import uuid

import pytest
from conftest import REPO_ROOT, wait_until
from streamlit.testing.v1 import AppTest

from drill import pack, runview
from drill.__main__ import main
from drill.backends import ThreadBackend
from drill.jobs import JobManager, Snapshot
from drill.presets import BY_NAME, MEASURED_RUNS, RESULTS, measured
from drill.run_record import Status
from drill.store import RunStore

# The quick demo cut to 1 epoch of 1,000 images: a few seconds a run, every part of a real recording.
TINY = BY_NAME["quick"].config.replace(train={"epochs": 1, "subset": 1000})
TINY_ARGS = ["--steps", "quick", "--epochs", "1", "--subset", "1000"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, mnist):
    """A pack of two tiny runs (seeds 1 and 2), recorded by the command line."""
    directory = tmp_path_factory.mktemp("pack")
    assert main(["record", *TINY_ARGS, "--seeds", "1", "2", "--pack", str(directory)]) == 0
    return directory


@pytest.fixture
def copy(recorded, tmp_path):
    """A copy of the recorded pack that a test may damage."""
    return shutil.copytree(recorded, tmp_path / "pack")


def rewrite(directory, name: str, change) -> None:
    """Edit a run's JSON with change(body) and re-sign it in the manifest: a pack that passes its file check but
    was made by other code."""
    path = directory / f"{name}.json"
    body = json.loads(path.read_text())
    change(body)
    path.write_text(json.dumps(body))
    manifest = json.loads((directory / pack.MANIFEST).read_text())
    manifest["runs"][name]["json"] = pack._sha256(path)
    (directory / pack.MANIFEST).write_text(json.dumps(manifest))


def test_record_writes_runs_that_read_back_and_that_todays_code_computes(recorded, mnist, capsys):
    runs, problems = pack.read(recorded)
    assert problems == [] and [run.name for run in runs] == ["quick-seed1", "quick-seed2"]
    for run in runs:
        assert run.config == TINY.replace(train={"seed": run.config.train.seed})
        assert run.record.status == "finished" and len(run.record.epochs) == 1
        assert len(run.probe["first_losses"]) == pack.PROBE_BATCHES and run.weights
        assert run.recorded["machine"] == pack.machine_name() and run.recorded["seconds"] > 0
        assert pack.verify(run, mnist) is None
    # Asked again, it keeps what it has (and says so) instead of training it twice.
    assert main(["record", *TINY_ARGS, "--seeds", "1", "--pack", str(recorded)]) == 0
    assert "quick-seed1: kept (recorded on " in capsys.readouterr().out


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda d: d.joinpath("quick-seed1.weights").write_bytes(b"\0" * 64), "quick-seed1.weights does not match"),
        (lambda d: d.joinpath("quick-seed1.json").write_text("{}"), "quick-seed1.json does not match"),
        (lambda d: d.joinpath("quick-seed1.json").unlink(), "quick-seed1.json is missing from the pack"),
    ],
    ids=["weights", "edited", "missing"],
)
def test_a_damaged_or_edited_run_is_refused_and_the_rest_served(copy, damage, expected):
    damage(copy)
    runs, problems = pack.read(copy)
    assert [run.name for run in runs] == ["quick-seed2"]
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_a_run_whose_signed_files_hold_nonsense_is_refused_not_raised(copy):
    # A hand-made pack can match its manifest and still hold weights cut short or a provenance of the wrong kind.
    (copy / "quick-seed1.weights").write_bytes(b"\x01")
    manifest = json.loads((copy / pack.MANIFEST).read_text())
    manifest["runs"]["quick-seed1"]["weights"] = pack._sha256(copy / "quick-seed1.weights")
    (copy / pack.MANIFEST).write_text(json.dumps(manifest))
    rewrite(copy, "quick-seed2", lambda b: b["recorded"].update(seconds="a while"))
    runs, problems = pack.read(copy)
    names = [problem.split(" (")[0] for problem in problems]
    assert runs == [] and names == ["quick-seed1: not a recorded run", "quick-seed2: not a recorded run"]


def test_a_manifest_that_cant_be_read_gives_no_runs_and_says_why(copy):
    (copy / pack.MANIFEST).write_text('{"format": 1, "runs": {"../../etc/passwd": {}}}')
    assert pack.read(copy) == ([], [f"the pack's {pack.MANIFEST} lists '../../etc/passwd', which is not a run's name"])
    (copy / pack.MANIFEST).write_text("[]")
    assert pack.read(copy) == ([], [f"the pack's {pack.MANIFEST} is not a format-1 manifest"])
    (copy / pack.MANIFEST).write_text("not json")
    runs, problems = pack.read(copy)
    assert runs == [] and problems[0].startswith(f"the pack's {pack.MANIFEST} can't be read")
    shutil.rmtree(copy)
    assert pack.read(copy) == ([], [])  # no pack at all is an empty pack


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda b: b["probe"].update(first_losses=[x * 1.01 for x in b["probe"]["first_losses"]]), "other losses"),
        (lambda b: b["record"]["epochs"][0].update(lr=0.5), "other learning rates"),
        (lambda b: b["probe"].update(correct=b["probe"]["correct"] + 10), "classifies the first 1000"),
    ],
    ids=["training", "schedule", "network"],
)
def test_a_run_made_by_code_that_computes_something_else_is_not_served(copy, mnist, change, expected):
    # What code that trains, schedules or classifies differently would have recorded, past any CPU's rounding.
    rewrite(copy, "quick-seed1", change)
    (run, _), problems = pack.read(copy)
    assert problems == [] and expected in pack.verify(run, mnist)


def test_rounding_of_another_cpu_does_not_refuse_a_run(copy, mnist):
    # Parts in a million, which is what another CPU's or thread count's sums move the first losses by.
    rewrite(
        copy,
        "quick-seed1",
        lambda b: b["probe"].update(first_losses=[x * (1 + 3e-6) for x in b["probe"]["first_losses"]]),
    )
    (run, _), _ = pack.read(copy)
    assert pack.verify(run, mnist) is None


def served_manager(directory, mnist) -> JobManager:
    manager = JobManager(backend=ThreadBackend(1, lambda: mnist), store=RunStore(), pack=directory, data=lambda: mnist)
    wait_until(manager.shelf.checked.is_set, 300, what="the pack's runs to be checked")
    return manager


def test_a_matching_config_is_served_at_once_labelled_and_a_fresh_or_other_one_trains(copy, mnist):
    rewrite(copy, "quick-seed2", lambda b: b["probe"].update(correct=0))  # made by "other code": never served
    manager = served_manager(copy, mnist)
    try:
        assert manager.shelf.ready_count() == 1 and "quick-seed2 is not served:" in manager.shelf.problems()[0]
        ticket = manager.submit("ann", TINY, "Quick demo", one_at_a_time=True)
        run = manager.snapshot(ticket.id)
        assert run.status == "finished" and run.reused and run.recorded.startswith("recorded on ")
        assert pack.machine_name() in run.recorded and "📼 A recorded run, not trained for you" in runview.sharing_note(
            run
        )
        assert run.epochs and run.batch_losses and run.params == pack.read(copy)[0][0].record.params
        assert manager.model(ticket.id) is not None  # Inspect has its weights
        # A classmate gets the same recorded run; the run of code that computes otherwise is trained.
        assert manager.submit("bob", TINY).run is ticket.run
        other = manager.submit("cat", TINY.replace(train={"seed": 2}))
        assert manager.snapshot(other.id).status in ("queued", "running") and not other.run.recorded
        # Train it myself: the same config, trained afresh on this server.
        mine = manager.submit("ann", TINY, "Quick demo", one_at_a_time=True, fresh=True)
        assert mine.run is not ticket.run and mine.run.source == "trained"
        for t in (other, mine):
            wait_until(lambda t=t: manager.snapshot(t.id).status == "finished", 300, what="the fresh runs to finish")
        assert len(manager.snapshot(mine.id).epochs) == 1 and not manager.snapshot(mine.id).recorded
    finally:
        manager.shutdown()


def test_recorded_seeds_make_a_proof_at_once(recorded, mnist):
    manager = served_manager(recorded, mnist)
    try:
        # The Drill-down card's verdict: both seeds recorded, nothing trained.
        proof = manager.proof_of(TINY, 2)
        assert proof is not None and [s.seed for s in proof.seeds] == [1, 2] and not proof.going
        # Prove it over seeds on the Train page: every seed served from the pack, none queued.
        tickets = manager.prove("ann", TINY, "Quick demo", 2)
        runs = [manager.snapshot(t.id) for t in tickets]
        assert [r.status for r in runs] == ["finished", "finished"] and all(r.recorded for r in runs)
        assert manager.active_count("ann") == 0
        assert manager.proof_of(TINY, 3) is None, "seed 3 is not recorded"
    finally:
        manager.shutdown()


def test_a_replay_streams_the_recorded_epochs_at_a_watchable_pace(recorded):
    (run, *_), _ = pack.read(recorded)
    epochs = run.record.epochs * 3  # a 3-epoch run, for the pace
    snapshot = Snapshot(
        ticket_id="t",
        owner="me",
        label="Quick demo",
        config=run.config,
        status=Status.FINISHED,
        reason="",
        params=1,
        epochs=epochs,
        batch_losses=((0.5, 2.0), (1.5, 1.0), (2.5, 0.5)),
        progress={},
        queue_position=None,
        created=0.0,
        seconds=1.0,
        recorded="recorded on ...",
    )
    first = runview.replayed(snapshot, 0.6 * runview.REPLAY_EPOCH_S)
    assert first.status == "replaying" and first.epochs == () and first.batch_losses == ((0.5, 2.0),)
    later = runview.replayed(snapshot, 2.2 * runview.REPLAY_EPOCH_S)
    assert later.epochs == epochs[:2] and len(later.batch_losses) == 2 and later.progress["epoch"] == 3
    assert runview.replayed(snapshot, 3 * runview.REPLAY_EPOCH_S) is None  # all shown


def test_the_train_page_labels_a_recorded_run_replays_it_and_trains_it_afresh(
    recorded, tmp_path, monkeypatch, fresh_app_manager
):
    from views import common

    monkeypatch.setenv("DRILL_PACK", str(recorded))
    monkeypatch.setenv("DRILL_RUNS_DB", str(tmp_path / "runs.sqlite"))
    monkeypatch.setattr(runview, "REPLAY_EPOCH_S", 5.0)  # the tiny run has one epoch: long enough to see it replaying
    wait_until(common.manager().shelf.checked.is_set, 300, what="the pack's runs to be checked")
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=60)
    at.query_params.update(TINY.to_query_params())
    at.session_state["owner"] = uuid.uuid4().hex
    at.run()
    at.switch_page("views/train.py").run()
    next(b for b in at.button if b.label == "Start").click().run()
    assert any("📼 A recorded run, not trained for you" in c.value for c in at.caption)
    assert any("Analysis:" in box.value for box in [*at.info, *at.success])  # a recorded run has its Result
    next(b for b in at.button if b.label == "▶️ Replay").click().run()
    assert any(m.value.startswith("▶️ **Quick demo (edited)**: replaying the recorded run") for m in at.markdown)
    wait_until(lambda: at.run() and not any("replaying" in m.value for m in at.markdown), 60, what="the replay")
    assert any(m.value.startswith("✅ **Quick demo (edited)**: finished") for m in at.markdown)
    next(b for b in at.button if b.label == "Train it myself").click().run()
    assert any(m.value.startswith(("⏳", "🏃")) for m in at.markdown)
    for run in common.manager().snapshots(at.session_state["owner"]):
        common.manager().stop(run.ticket_id)


def test_a_pack_that_fails_its_check_is_said_on_the_drill_down_page(copy, tmp_path, monkeypatch, fresh_app_manager):
    from views import common

    copy.joinpath("quick-seed1.weights").write_bytes(b"damaged")
    monkeypatch.setenv("DRILL_PACK", str(copy))
    monkeypatch.setenv("DRILL_RUNS_DB", str(tmp_path / "runs.sqlite"))
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception
    wait_until(common.manager().shelf.checked.is_set, 300, what="the pack's runs to be checked")
    warnings = [w.value for w in at.warning]
    assert any("Some recorded runs are not served" in w and "quick-seed1.weights does not match" in w for w in warnings)


def test_the_shipped_pack_is_within_its_budget_and_todays_code_computes_every_run(mnist):
    runs, problems = pack.read(pack.PACK_DIR)
    assert problems == []
    assert pack.size(pack.PACK_DIR) < pack.MAX_PACK_BYTES
    assert runs, "the app ships a pack: `python -m drill record` makes it"
    for run in runs:
        step = BY_NAME[run.name.rsplit("-seed", 1)[0]]
        assert run.record.label == step.title and run.config == step.config.replace(
            train={"seed": run.config.train.seed}
        )
        assert pack.verify(run, mnist) is None, run.name
    # A Drill-down card's band is the pack's where the pack holds as many seeds of the step as results/ does.
    for name in {run.name.rsplit("-seed", 1)[0] for run in runs}:
        step, held = BY_NAME[name], sum(run.name.startswith(f"{name}-seed") for run in runs)
        in_results = sum(
            len(json.loads((RESULTS / file).read_text()).get("runs", [None])) for file in MEASURED_RUNS[name]
        )
        from_pack = "(the recorded-runs pack, recorded on " in measured(name, pack_dir=pack.PACK_DIR)
        assert from_pack == (held >= in_results), (name, step.measured)
