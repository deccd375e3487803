"""Tests for what the pages show, worked out without streamlit: the run view (drill.runview), the Build page's
layer table (drill.layer_table), liveness (drill.liveness), the augmentation preview, and the Inspect page's captions
and run picking in drill.inspection. Nothing here needs MNIST or trains."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import torch
from test_inspection import make_report, one_hot_ish

from drill import augment, controls, inspection, layer_table, liveness, runview
from drill.analysis import PARAM_BUDGET
from drill.config import AugmentConfig
from drill.data import Mnist
from drill.presets import BY_NAME
from drill.run_record import Epoch
from drill.summary import summarize

QUICK = BY_NAME["quick"].config


# -- the Train page's controls, preview and shown run -------------------------------------------------------------
def fields(controls) -> list[str]:
    return [control[0] for control in controls]


def test_train_controls_show_only_the_knobs_the_optimizer_and_schedule_read():
    assert fields(controls.train_controls("optimizer", "sgd")) == ["lr", "momentum", "weight_decay"]
    assert fields(controls.train_controls("optimizer", "adam")) == ["lr", "weight_decay"]
    assert fields(controls.train_controls("optimizer", "adamw")) == ["lr", "weight_decay"]
    assert fields(controls.train_controls("schedule", "onecycle")) == ["max_lr", "pct_start"]
    assert fields(controls.train_controls("schedule", "step")) == ["step_size", "gamma"]
    assert controls.train_controls("schedule", "none") == []
    # Learning rates too small for a slider's two decimals carry a number format.
    lr, _, weight_decay = controls.train_controls("optimizer", "sgd")
    assert lr[2:] == weight_decay[2:] == ("number", "%.5g")


def test_augment_preview_shows_the_first_test_image_of_each_digit():
    labels = torch.tensor([9, 3, 0, 1, 2, 3, 4, 5, 6, 7, 0, 8])
    images = torch.arange(len(labels), dtype=torch.uint8).mul(20).reshape(-1, 1, 1).expand(-1, 28, 28).contiguous()
    data = Mnist(images[:0], labels[:0], images, labels)
    shown = augment.augment_preview(data, AugmentConfig())
    assert np.array_equal(shown, augment.preview_grid(images[[2, 3, 4, 1, 6, 7, 8, 9]], AugmentConfig()))
    assert f"{augment.PREVIEW_DIGITS} test digits" in augment.PREVIEW_CAPTION
    assert f"augmented {augment.PREVIEW_COPIES} times" in augment.PREVIEW_CAPTION


def test_shown_run_is_the_started_run_of_this_student_else_the_latest():
    mine = [SimpleNamespace(ticket_id="run-1", owner="me"), SimpleNamespace(ticket_id="run-3", owner="me")]
    assert runview.shown_run("run-1", mine) is mine[0]
    assert runview.shown_run("run-2", mine) is mine[-1]  # someone else's run, or one this session never had
    assert runview.shown_run("", mine) is mine[-1]
    assert runview.shown_run("", []) is None


# -- the Build page's results -------------------------------------------------------------------------------------
def test_table_height_fits_every_row():
    assert layer_table.table_height(0) == 38
    assert layer_table.table_height(8) == 36 * 9 + 2
    assert layer_table.table_height(60) == 36 * 61 + 2  # no cap: the page scrolls, not the table


def test_budget_delta_and_cost_note():
    assert layer_table.budget_delta(PARAM_BUDGET - 2430) == f"-2,430 vs the {PARAM_BUDGET:,} budget"
    assert layer_table.budget_delta(PARAM_BUDGET + 5) == f"+5 vs the {PARAM_BUDGET:,} budget"
    summary = summarize(QUICK.model)
    note = layer_table.cost_note(summary)
    assert note.startswith(f"{summary.mult_adds:,} multiply-adds per image · about {summary.memory_mb:.2f} MB")


# -- the Inspect page ---------------------------------------------------------------------------------------------
REPORT = make_report(
    [one_hot_ish(3, 0.6), one_hot_ish(1, 0.9), one_hot_ish(2, 0.99), one_hot_ish(5, 0.8), one_hot_ish(4, 0.7)],
    labels=[3, 7, 7, 5, 9],  # images 1, 2 and 4 are wrong
)


def test_report_captions_count_and_describe_the_digits():
    assert REPORT.mistakes_note.startswith("3 of 5 test digits are misclassified; most confident mistakes first")
    assert REPORT.describe(2) == "#2: true 7, read as 2 (99%)"
    assert REPORT.describe(0) == "#0: true 3, read as 3 (60%)"
    assert inspection.Mistake(index=12, true=7, predicted=1, confidence=0.904).caption == "#12: 7 read as 1 (90%)"


def test_mistake_tiles_are_the_mistakes_enlarged_with_their_captions():
    images = torch.arange(5 * 28 * 28, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(5, 28, 28)
    pictures, captions = inspection.mistake_tiles(REPORT, images, 2)
    assert captions == ["#2: 7 read as 2 (99%)", "#1: 7 read as 1 (90%)"]
    assert [picture.shape for picture in pictures] == [(84, 84), (84, 84)]
    assert np.array_equal(pictures[0], inspection.enlarge(images[2].numpy()))
    pictures, captions = inspection.mistake_tiles(REPORT, images, 24, true_digit=9)
    assert captions == ["#4: 9 read as 4 (70%)"] and len(pictures) == 1
    assert inspection.mistake_tiles(REPORT, images, 24, true_digit=3) == ([], [])


def test_feature_map_caption_and_reading_text():
    block = inspection.FeatureMaps("conv2", np.zeros((16, 24, 24), np.float32))
    assert block.caption == "conv2: 16 channels of 24x24"
    assert inspection.reading_text(np.array(one_hot_ish(7, 0.934))) == "The model reads **7** (93.4% sure)."


EPOCH = Epoch(epoch=1, train_loss=0.1, train_acc=97.0, test_loss=0.1, test_acc=96.0, lr=0.1, seconds=1.0)


def run(run_id: str, status: str, label: str = "tiny run", epochs: int = 1) -> SimpleNamespace:
    return SimpleNamespace(
        ticket_id=run_id, status=status, label=label, config=QUICK, proof="", epochs=(EPOCH,) * epochs
    )


class FakeManager:
    """A job manager's two read calls: snapshots of an owner's runs, and the trained model behind one."""

    def __init__(self, runs, models):
        self.runs, self.models = runs, models

    def snapshots(self, owner: str):
        return self.runs if owner == "me" else []

    def model(self, run_id: str):
        return self.models.get(run_id)


def test_candidates_are_the_ended_runs_with_their_models_named_as_compare_names_them():
    model = object()
    runs = [run("run-1", "finished"), run("run-2", "failed"), run("run-3", "stopped"), run("run-4", "running")]
    found = inspection.candidates(FakeManager(runs, {"run-1": model, "run-3": None}), "me")
    assert list(found) == ["run-1", "run-3"]
    assert found["run-1"].model is model and found["run-3"].model is None
    assert found["run-1"].title == "Quick demo #1, seed 1 (finished)"
    assert inspection.candidates(FakeManager(runs, {}), "someone else") == {}
    note = found["run-3"].no_model_note
    assert note.startswith("Quick demo #3, seed 1 has its numbers but no trained model") and "imported" in note


def test_a_run_stopped_before_its_first_epoch_says_it_has_nothing_to_show():
    runs = [run("run-1", "stopped", epochs=0)]
    (found,) = inspection.candidates(FakeManager(runs, {"run-1": object()}), "me").values()
    assert found.model is None, "no epoch ended: its weights are the untrained ones"
    assert found.no_model_note == (
        "Quick demo, seed 1 stopped before its first epoch ended: it has no curves and no model to look into."
    )


@pytest.mark.parametrize(
    ("runs", "expected"),
    [
        ([("finished", True), ("finished", None), ("finished", True), ("finished", None)], 2),  # the latest trained
        ([("finished", None), ("finished", None)], 1),  # nothing trained here (imported runs): the latest run
        ([("finished", True)], 0),
        # A stopped run, even the latest, gives way to the latest finished one.
        ([("finished", True), ("finished", True), ("stopped", True)], 1),
        ([("stopped", True), ("stopped", None)], 0),
    ],
)
def test_default_pick_prefers_the_latest_finished_run_with_a_model(runs, expected):
    candidates = {
        f"run-{i}": inspection.Candidate(run(f"run-{i}", status), object() if trained else None, f"run {i}")
        for i, (status, trained) in enumerate(runs)
    }
    assert inspection.default_pick(candidates) == expected


def chart_rows(spec: dict) -> list[dict]:
    """Every row of a spec's Arrow datasets."""
    tables = [pa.ipc.open_stream(io.BytesIO(data)).read_all() for data in spec["datasets"].values()]
    return [row for table in tables for row in table.to_pylist()]


def watched(ticket: str, status: str, losses: list[tuple[float, float]], epochs: int = 1) -> SimpleNamespace:
    epoch_rows = [
        Epoch(
            epoch=e, train_loss=0.5 / e, train_acc=90.0 + e, test_loss=0.4 / e, test_acc=91.0 + e, lr=0.1, seconds=1.0
        )
        for e in range(1, epochs + 1)
    ]
    config = BY_NAME["quick"].config
    return SimpleNamespace(
        ticket_id=ticket,
        run_id="run-shared",
        status=status,
        config=config,
        epochs=tuple(epoch_rows),
        batch_losses=tuple(losses),
    )


def test_run_charts_are_made_once_for_everyone_watching_and_advance_in_steps():
    losses = [(b / 100, 2.0 - b / 100) for b in range(1, 38)]  # 0.37 of an epoch done
    ann = runview.run_charts(watched("ticket-a", "running", losses))
    bob = runview.run_charts(watched("ticket-b", "running", losses[:-1]))  # a poll a batch earlier, same twentieth
    assert ann[0] is bob[0] and ann[1] is bob[1], "one drawing per run version, shared by the class"
    # While running, the batch line stops at the last whole twentieth of an epoch (0.35 here), epochs in full.
    batch_rows = [row for row in chart_rows(ann[1]) if row.get("split") == "batch"]
    assert max(row["epoch"] for row in batch_rows) == pytest.approx(0.35)
    assert {row["value"] for row in chart_rows(ann[0]) if row.get("split") == "test"} == {92.0}
    # Once it has ended, every point is drawn.
    ended = runview.run_charts(watched("ticket-a", "finished", losses))
    assert max(row["epoch"] for row in chart_rows(ended[1]) if row.get("split") == "batch") == pytest.approx(0.37)


def test_pages_poll_less_often_as_the_class_grows():
    assert [liveness.poll_seconds(n) for n in (0, 1, 9, 10, 25, 30, 200)] == [1, 1, 1, 2, 3, 4, 4]


def test_status_text_tells_a_new_queued_run_from_one_paused_for_classmates():
    assert runview.status_text("queued", 3, "Quick demo") == (
        "⏳ **Quick demo** is queued: 2 run(s) ahead of it; it starts when a CPU slot frees up."
    )
    paused = runview.status_text("queued", 1, "Quick demo", epochs_done=2)
    assert paused.startswith("⏸️ **Quick demo** is paused after epoch 2") and "0 run(s) ahead" in paused
    assert runview.status_text("running", None, "custom", epochs_done=2) == "🏃 **custom**: running"


def test_a_live_view_counts_as_lost_after_its_patience_and_the_patience_doubles_each_time():
    def heartbeats(missed, patience, n):
        redraws = []
        for beat in range(1, n + 1):
            missed, patience, lost = liveness.live_view_check(missed, patience)
            if lost:
                redraws.append(beat)
                missed = 0  # the redrawn page draws the view again
        return redraws, patience

    assert heartbeats(0, liveness.LIVE_VIEW_MISSES, 3) == ([], liveness.LIVE_VIEW_MISSES)
    # Lost for good (it never redraws): redrawn after 4 heartbeats, then after 7 more, then after 13 more.
    assert heartbeats(0, 3, 24) == ([4, 11, 24], 24)
    assert heartbeats(None, 3, 50) == ([], 3)  # a page with no live view is never redrawn for one


def test_a_live_view_that_redraws_between_heartbeats_is_never_counted_lost():
    missed, patience = 0, liveness.LIVE_VIEW_MISSES
    for _ in range(100):
        missed, patience, lost = liveness.live_view_check(missed, patience)
        assert not lost
        missed = 0  # the view polls faster than the heartbeat
    assert patience == liveness.LIVE_VIEW_MISSES


def test_every_live_view_polls_more_often_than_the_heartbeat_that_watches_it():
    # Otherwise a live view that works would miss heartbeats and be redrawn for nothing.
    assert all(liveness.poll_seconds(online) < liveness.HEARTBEAT_S for online in (0, 1, 9, 10, 30, 10**6))
