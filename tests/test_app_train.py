"""AppTest of the Train page with real runs: a tiny run streams to the end, Stop stops one, a diverging run fails.

AppTest has no run_every timer, so the tests poll by calling at.run() again (each run also sends the heartbeat).
The job manager is process-wide (st.cache_resource) and outlives a test; each AppTest is a new session with its own
owner, so each test sees only its own runs.
"""

from __future__ import annotations

import io

import pyarrow as pa
from conftest import REPO_ROOT, wait_until
from streamlit.testing.v1 import AppTest

from drill.presets import BY_NAME
from views import common

PAGE_TIMEOUT = 60  # seconds per script run on a busy 2-core machine
RUN_DEADLINE = 120  # seconds for a tiny run to finish, queue included
# Batches of 64, not 128: OneCycleLR needs a warm-up of at least 2 steps, and 20% of 8 steps is less.
# Its own seed: a config other test files also train would be served, finished, from the session's run store.
TINY = BY_NAME["quick"].config.replace(train={"subset": 1000, "epochs": 1, "batch_size": 64, "seed": 1101})
LONG = BY_NAME["quick"].config.replace(train={"subset": 0, "epochs": 3})  # minutes of work: it must be stopped
# Lean (no batch norm) with Adam at lr 1.0: Adam's first step moves every weight by about the learning rate whatever
# its gradient's size, so the second batch's loss is millions (3.4e6 here) against a bound of 1,000: a margin that no
# CPU's rounding can close, where a run left to reach NaN depends on it.
DIVERGING = BY_NAME["lean"].config.replace(
    train={"epochs": 1, "subset": 4000, "batch_size": 32, "optimizer": "adam", "lr": 1.0, "schedule": "none", "seed": 3}
)


def train_page(config) -> AppTest:
    """A new session opened from a link holding this config, showing the Train page."""
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=PAGE_TIMEOUT)
    at.query_params.update(config.to_query_params())
    at.run()
    at.switch_page("views/train.py").run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def status_line(at: AppTest) -> str:
    """The run's headline, e.g. "✅ **Quick demo (edited)**: finished" ("" before any run)."""
    return next((m.value for m in at.markdown if m.value.startswith(("⏳", "🏃", "✅", "⏹️", "❌"))), "")


def rerun_until(at: AppTest, word: str) -> str:
    """Rerun the page (as the fragment's timer would) until the status line ends with word; every redraw must show
    the buttons of the status it shows (a CI run once showed "stopped" beside a Start still disabled)."""

    def redraw() -> str:
        at.run()
        status = status_line(at)
        ended = status.endswith(("finished", "stopped", "failed"))
        assert button(at, "Start").disabled != ended and button(at, "Stop").disabled == ended, status
        return status.endswith(word) and status

    return wait_until(redraw, RUN_DEADLINE, interval=0.2, what=f"the run to be {word}")


def progress_text(at: AppTest) -> str:
    """The progress bar's text ("" when there is none)."""
    return at.get("progress")[0].text if at.get("progress") else ""


def chart_values(at: AppTest) -> list[float]:
    """Every number in the datasets of the page's charts."""
    values = []
    for chart in at.get("vega_lite_chart"):
        for dataset in chart.proto.datasets:
            table = pa.ipc.open_stream(io.BytesIO(dataset.data.data)).read_all()
            for column in table.columns:
                if pa.types.is_floating(column.type) or pa.types.is_integer(column.type):
                    values.extend(column.to_pylist())
    return values


def only_run(at: AppTest):
    """This session's one run, as the job manager holds it."""
    (run,) = common.manager().snapshots(at.session_state["owner"])
    return run


def test_a_tiny_run_streams_to_the_end_and_survives_a_page_switch():
    at = train_page(TINY)
    assert status_line(at) == ""
    assert not button(at, "Start").disabled and button(at, "Stop").disabled
    button(at, "Start").click().run()
    assert not at.exception
    assert button(at, "Start").disabled, "one run at a time per student"
    assert "Quick demo (edited)" in status_line(at)  # the label: TINY is the sidebar's preset, edited
    rerun_until(at, "finished")
    run = only_run(at)
    assert run.status == "finished" and len(run.epochs) == 1
    test_acc = run.epochs[0].test_acc
    assert test_acc in chart_values(at), "the epoch's test accuracy is not in the accuracy chart's data"
    assert run.batch_losses[-1][1] in chart_values(at), "the batch-level loss line is missing"
    assert any(f"best test {test_acc:.2f}%" in m.value for m in at.markdown)
    assert any("Analysis:" in box.value for box in [*at.info, *at.success])
    assert not button(at, "Start").disabled and button(at, "Stop").disabled
    # Another page and back: the run is found again, curves and all.
    at.switch_page("views/build.py").run()
    at.switch_page("views/train.py").run()
    assert status_line(at).endswith("finished") and test_acc in chart_values(at)
    # A classmate asking for the very same run gets it at once, from the store, with the same curves.
    classmate = train_page(TINY)
    button(classmate, "Start").click().run()
    assert status_line(classmate).endswith("finished") and test_acc in chart_values(classmate)
    assert any("Served at once" in caption.value for caption in classmate.caption)
    assert only_run(classmate).reused and only_run(classmate).epochs == run.epochs


def test_stop_stops_a_running_run():
    at = train_page(LONG)
    button(at, "Start").click().run()
    try:
        watch_and_stop(at)
    finally:  # never leave minutes of training behind on the shared cores if an assertion failed
        for run in common.manager().snapshots(at.session_state["owner"]):
            common.manager().stop(run.ticket_id)


def watch_and_stop(at: AppTest) -> None:
    """Watch a long run train for a few batches, stop it from the page, and check it ends stopped."""
    assert not button(at, "Stop").disabled
    # Watch it train for a few batches first: the progress line streams epoch, batch, speed and time left.
    progress = wait_until(
        lambda: at.run() and "images/s" in progress_text(at) and progress_text(at),
        RUN_DEADLINE,
        interval=0.2,
        what="the progress bar to show a batch",
    )
    assert "epoch 1/3" in progress and "left" in progress and "LR" in progress, progress
    button(at, "Stop").click().run()
    rerun_until(at, "stopped")
    run = only_run(at)
    assert run.status == "stopped" and len(run.epochs) < LONG.train.epochs  # stopped before it ended
    assert any("stopped by the student" in w.value for w in at.warning), [w.value for w in at.warning]
    assert not button(at, "Start").disabled
    # Stopped a batch or so into epoch 1 (60,000 images: 20 s or more), so a note stands in for the accuracy chart.
    assert not run.epochs
    assert any("It stopped before its first epoch ended" in i.value for i in at.info), [i.value for i in at.info]
    assert len(at.get("vega_lite_chart")) == 1 + 1  # the loss chart, and the LR plot above


def test_a_diverging_run_is_shown_as_failed_with_its_reason():
    at = train_page(DIVERGING)
    button(at, "Start").click().run()
    rerun_until(at, "failed")
    run = only_run(at)
    assert run.status == "failed" and run.reason.startswith("the run diverged: the loss exploded to"), run.reason
    assert "in epoch 1, batch 2: lower the Learning rate (now 1), e.g. to 0.1, or turn on Batch norm" in run.reason
    assert any("The run failed" in e.value and run.reason in e.value for e in at.error), [e.value for e in at.error]
    assert at.get("vega_lite_chart"), "the failed run's loss curve should stay visible"
    at.run()  # still shown on the next redraw
    assert status_line(at).endswith("failed")


def test_controls_show_only_relevant_knobs_and_refuse_invalid_settings():
    at = train_page(TINY)
    labels = {s.label for s in at.slider} | {n.label for n in at.number_input}
    assert {"Warm-up fraction", "Peak LR (max_lr)"} <= labels and "Step every (epochs)" not in labels  # OneCycleLR
    lr_plot = at.get("vega_lite_chart")[0].proto.datasets[0].data.data
    next(s for s in at.selectbox if s.label == "LR schedule").set_value("step").run()
    labels = {s.label for s in at.slider} | {n.label for n in at.number_input}
    assert {"Step every (epochs)", "Decay factor (gamma)"} <= labels and "Warm-up fraction" not in labels
    assert at.query_params["sched"] == "step"
    assert at.get("vega_lite_chart")[0].proto.datasets[0].data.data != lr_plot, "the LR plot did not follow"
    next(s for s in at.segmented_control if s.label == "Optimizer").set_value("adam").run()
    assert "Momentum" not in {s.label for s in at.slider}  # Adam has no momentum knob
    # Augmentation: the preview follows the sliders.
    (preview,) = at.image
    assert "augmented 3 times" in preview.captions[0]
    next(s for s in at.slider if s.label.startswith("Rotation")).set_value(30.0).run()
    assert at.query_params["rot"] == "30.0"
    assert at.image[0].value != preview.value
    # Fewer training images than one batch is refused in the page's words; Start is then disabled.
    images = next(n for n in at.number_input if n.label.startswith("Training images"))
    images.set_value(50).run()
    (error,) = [e.value for e in at.error]
    assert error.startswith("**Training images** = 50 can't be used: 0 (all) or at least one batch (64 images)")
    assert "train." not in error and error.endswith("The last valid settings stay current.")
    assert button(at, "Start").disabled
    assert at.query_params["subset"] == "1000"  # the last valid settings stay current
    # A run too short for OneCycleLR's warm-up blames the control changed (here the schedule), not Warm-up fraction.
    images.set_value(100).run()
    assert not at.error and at.query_params["subset"] == "100"  # StepLR has no warm-up
    next(s for s in at.selectbox if s.label == "LR schedule").set_value("onecycle").run()
    (error,) = [e.value for e in at.error]
    assert error.startswith("**LR schedule** = OneCycleLR can't be used with **Warm-up fraction** = 0.2: OneCycleLR's")
    assert "2 of the run's 2 optimizer steps" in error and "train." not in error


# A config no other test trains, so its seeds are the ones this file trains (see TINY).
PROVED = TINY.replace(train={"momentum": 0.85})


def proof_headline(at: AppTest) -> str:
    """The proof view's headline, e.g. "❌ **Final (edited)** over 2 seeds: not proven" ("" when no proof is shown)."""
    return next((m.value for m in at.markdown if " over " in m.value and m.value.startswith(("🧪", "✅", "❌"))), "")


def prove(at: AppTest, seeds: int) -> None:
    next(n for n in at.number_input if n.label == "Seeds").set_value(seeds).run()
    button(at, "Prove it over seeds").click().run()
    assert not at.exception, at.exception


def test_a_proof_of_seeds_trained_before_is_served_at_once():
    manager = common.manager()
    for seed in (1, 2):  # a classmate trained both seeds earlier
        ticket = manager.submit("a-classmate", PROVED.replace(train={"seed": seed}))
        wait_until(lambda t=ticket: manager.snapshot(t.id).status == "finished", RUN_DEADLINE, what="a seed to train")
    at = train_page(PROVED)
    prove(at, 2)
    # At once, on the first redraw: no seed queued, both served, the table and the verdict shown.
    assert proof_headline(at) == "❌ **Quick demo (edited)** over 2 seeds: not proven"
    assert any("seed 1: finished (served at once)" in m.value and "seed 2: finished" in m.value for m in at.markdown)
    assert any(m.value.startswith("| seed | params | epoch 1 | pass |") for m in at.markdown), (
        "the table of last epochs"
    )
    (verdict,) = [w.value for w in at.warning if "Analysis:" in w.value]
    assert "holds >= 99.4% in each of the last 4 epochs for 0 of 2 seeds" in verdict
    seeds = [s for s in manager.snapshots(at.session_state["owner"])]
    assert [s.config.train.seed for s in seeds] == [1, 2] and all(s.reused for s in seeds)
    assert len({s.proof for s in seeds}) == 1
    assert not button(at, "Start").disabled and not button(at, "Prove it over seeds").disabled
    # Compare writes it up as one row for the proof.
    at.switch_page("views/compare.py").run()
    assert any("| Quick demo (edited), proof over 2 seeds |" in m.value for m in at.markdown), [
        m.value for m in at.markdown
    ]


def test_a_proof_with_diverging_seeds_reports_each_with_its_reason():
    at = train_page(DIVERGING)
    prove(at, 2)
    assert button(at, "Start").disabled and button(at, "Prove it over seeds").disabled, "a proof is the one run"
    wait_until(
        lambda: at.run() and proof_headline(at).endswith("not proven"), RUN_DEADLINE, interval=0.2, what="the verdict"
    )
    (verdict,) = [w.value for w in at.warning if "Analysis:" in w.value]
    for seed in (1, 2):
        assert f"Seed {seed} failed: the run diverged: the loss exploded to" in verdict, verdict
    assert any("| 1 | " in m.value and "| failed |" in m.value for m in at.markdown)
    assert not button(at, "Start").disabled and not button(at, "Prove it over seeds").disabled
