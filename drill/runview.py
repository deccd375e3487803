"""The Train page's run view, worked out without streamlit: a run's status, progress and epoch lines, its charts
(shared by everyone watching it), a recorded run's replay, a proof's seeds, and its Result line."""

from __future__ import annotations

import dataclasses
import math

from drill.analysis import LAST_K, Verdict, plural
from drill.charts import SpecCache, accuracy_chart, loss_chart
from drill.config import TRAIN_SIZE
from drill.jobs import Snapshot
from drill.proof import Proof
from drill.run_record import ACTIVE, Epoch, Status
from drill.train import batches_per_epoch


def format_seconds(seconds: float | None) -> str:
    """A duration as a student reads it: 45 s, 3 min 05 s."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60} min {seconds % 60:02d} s"


def progress_fraction(progress: dict) -> float:
    """How much of the run's batches are done, 0..1."""
    batches, epochs = progress.get("batches"), progress.get("epochs")
    if not batches or not epochs:
        return 0.0
    done = (progress.get("epoch", 1) - 1) * batches + progress.get("batch", 0)
    return min(max(done / (epochs * batches), 0.0), 1.0)


def progress_text(progress: dict) -> str:
    """Epoch, batch, speed, time left and the current LR, in one line."""
    if not progress.get("batches"):
        return "Starting: loading MNIST and building the model…"
    parts = [f"epoch {progress['epoch']}/{progress['epochs']}", f"batch {progress['batch']}/{progress['batches']}"]
    if progress.get("images_per_s"):
        parts.append(f"{progress['images_per_s']:,.0f} images/s")
    if progress.get("eta_s") is not None:
        parts.append(f"about {format_seconds(progress['eta_s'])} left")
    if progress.get("lr") is not None:
        parts.append(f"LR {progress['lr']:.4g}")
    return " · ".join(parts)


def epoch_line(epoch: Epoch, epochs_total: int) -> str:
    """The latest epoch's accuracies, in one line."""
    return (
        f"Epoch {epoch.epoch} of {epochs_total}: train {epoch.train_acc:.2f}% · "
        f"test **{epoch.test_acc:.2f}%** · {epoch.seconds:.1f} s"
    )


def shown_run(ticket_id: str, runs: list[Snapshot]) -> Snapshot | None:
    """The run the Train page shows, out of this student's runs: the one it started (by its ticket), else (a new
    tab) the latest.

    Taken from the one list the page also draws its buttons from, so a run that ends while the page draws is
    never shown as ended beside a Start that is still disabled."""
    return next((run for run in runs if run.ticket_id == ticket_id), runs[-1] if runs else None)


# A recorded run's replay brings its epochs onto the chart at this pace: slow enough to watch the curves form, and
# a 15-epoch run still replays in 15 s.
REPLAY_EPOCH_S = 1.0


def replayed(run: Snapshot, elapsed_s: float) -> Snapshot | None:
    """A finished run as its replay shows it elapsed_s in (status "replaying": the epochs and batch losses up to
    then, a progress line); None once the whole run has been shown."""
    position = elapsed_s / REPLAY_EPOCH_S
    total = len(run.epochs)
    if position >= total:
        return None
    done = int(position)
    epoch, fraction = done + 1, position - done
    batches = batches_per_epoch(run.config.train, TRAIN_SIZE)
    return dataclasses.replace(
        run,
        status=Status.REPLAYING,
        epochs=run.epochs[:done],
        batch_losses=tuple(point for point in run.batch_losses if point[0] <= position),
        progress={"epoch": epoch, "epochs": total, "batch": max(1, round(fraction * batches)), "batches": batches},
    )


def proof_runs(proof_id: str, runs: list[Snapshot]) -> list[Snapshot]:
    """A proof's seeds out of a student's runs, in seed order."""
    return sorted((run for run in runs if run.proof == proof_id), key=lambda run: run.config.train.seed)


def proof_headline(label: str, proof: Proof) -> str:
    """The proof's status as a headline."""
    count = len(proof.seeds)
    if proof.going:
        done = sum(s.status not in ACTIVE for s in proof.seeds)
        return f"🧪 **{label}** over {count} seeds: {done} of {count} done"
    return (
        f"{'✅' if proof.proven else '❌'} **{label}** over {count} seeds: {'proven' if proof.proven else 'not proven'}"
    )


def seed_line(run: Snapshot) -> str:
    """One seed of a proof in a line: where it is, and whether it was served at once rather than trained."""
    epochs = len(run.epochs)
    if run.status == Status.QUEUED:
        where = f"queued, {(run.queue_position or 1) - 1} run(s) ahead" + (
            f", paused after epoch {epochs}" * bool(epochs)
        )
    elif run.status == Status.RUNNING:
        where = f"training epoch {min(epochs + 1, run.config.train.epochs)} of {run.config.train.epochs}"
    else:
        where = run.status + (f": {run.reason}" if run.reason else "")
    served = " (recorded run)" if run.recorded else " (served at once)" if run.reused else ""
    return f"seed {run.config.train.seed}: {where}{served}"


def status_text(status: Status, queue_position: int | None, label: str, epochs_done: int = 0) -> str:
    """The run's status as a headline; a queued run with epochs done is one paused for classmates' first epochs."""
    if status == Status.QUEUED:
        ahead = (queue_position or 1) - 1
        if epochs_done:
            return (
                f"⏸️ **{label}** is paused after epoch {epochs_done}: classmates' new runs get their first epoch "
                f"first; {ahead} run(s) ahead of it."
            )
        return f"⏳ **{label}** is queued: {ahead} run(s) ahead of it; it starts when a CPU slot frees up."
    if status == Status.REPLAYING:
        return f"▶️ **{label}**: replaying the recorded run, {epochs_done} epoch(s) shown"
    icons = {Status.RUNNING: "🏃", Status.FINISHED: "✅", Status.STOPPED: "⏹️", Status.FAILED: "❌"}
    return f"{icons.get(status, '')} **{label}**: {status}"


CHART_UPDATES_PER_EPOCH = 20
_RUN_CHARTS = SpecCache()


def run_charts(run: Snapshot) -> tuple[dict, dict]:
    """The run's accuracy and loss charts as Vega-Lite specs, made once and shared by everyone watching the run.

    While it trains, the batch-loss line advances in twentieths of an epoch, so a class polling one run draws a
    few versions of its charts, not one per student per second.
    """
    losses = run.batch_losses
    if run.status in (*ACTIVE, Status.REPLAYING) and losses:
        cutoff = math.floor(losses[-1][0] * CHART_UPDATES_PER_EPOCH) / CHART_UPDATES_PER_EPOCH
        losses = tuple(point for point in losses if point[0] <= cutoff + 1e-9)
    total, epochs = run.config.train.epochs, list(run.epochs)
    accuracy = _RUN_CHARTS.get(("accuracy", run.run_id, len(epochs), total), lambda: accuracy_chart(epochs, total))
    key = ("loss", run.run_id, len(epochs), len(losses), losses[-1] if losses else None, total)
    return accuracy, _RUN_CHARTS.get(key, lambda: loss_chart(epochs, losses, total))


def no_accuracy_note(run: Snapshot) -> str:
    """What stands in for the accuracy chart of a run with batch losses but no epoch ended: an empty chart says
    nothing."""
    if run.status in (Status.STOPPED, Status.FAILED):
        return (
            f"It {run.status} before its first epoch ended: there is no test accuracy to show, only the loss of the "
            "batches it trained."
        )
    return "Train and test accuracy come at the end of epoch 1; the loss below moves as the batches train."


def sharing_note(run: Snapshot) -> str:
    """Why a run came at once or is shared with classmates; "" for a run trained for this student alone."""
    if run.recorded:
        return (
            f"📼 A recorded run, not trained for you: this exact config and seed was {run.recorded}. Replay shows "
            "its epochs arriving; Train it myself trains it on this server (or follows a classmate's run of it)."
        )
    if run.reused:
        return (
            "⚡ Served at once: this exact config and seed was trained to the end on this server before, and "
            "training is deterministic, so here are its curves."
        )
    if run.watchers > 1 and run.status in ACTIVE:
        return (
            f"👥 {run.watchers} students asked for this exact config and seed: it trains once and everyone sees "
            "the same curves. Stopping leaves it running for the others."
        )
    return ""


def result_line(verdict: Verdict, epochs: list[Epoch], k: int = LAST_K) -> str:
    """The Result of a step, as the write-ups phrase it: params, best train/test and the last K test accuracies."""
    last = ", ".join(f"{e.test_acc:.2f}" for e in epochs[-k:]) or "–"
    best_train = "–" if verdict.best_train is None else f"{verdict.best_train:.2f}%"
    best_test = "–" if verdict.best_test is None else f"{verdict.best_test:.2f}%"
    return (
        f"**Result:** {verdict.params:,} parameters · best train {best_train} · best test {best_test} · "
        f"test in the last {plural(min(k, len(epochs)), 'epoch')}: {last}"
    )
