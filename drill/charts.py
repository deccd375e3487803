"""Altair chart builders. Data goes in long form (one row per epoch, value and split) so one chart colours by split."""

from __future__ import annotations

import io
import threading
from collections import OrderedDict

import altair as alt
import pandas as pd
import pyarrow as pa

from drill.analysis import PARAM_BUDGET, TARGET_ACC
from drill.run_record import Epoch

SPLIT_COLORS = alt.Scale(domain=["train", "test", "batch"], range=["#1f77b4", "#d62728", "#9ecae1"])
EPOCH_COLORS = alt.Scale(domain=["train", "test"], range=["#1f77b4", "#d62728"])  # no batch line, no batch legend
LOOSE_BUDGET = 20_000  # the drill-down's first, looser budget (99.4% under 20k parameters)


def epochs_long(epochs: list[Epoch], metric: str) -> pd.DataFrame:
    """Epochs -> rows of (epoch, split, value) for train_<metric> and test_<metric>."""
    rows = [
        {"epoch": e.epoch, "split": split, "value": getattr(e, f"{split}_{metric}")}
        for e in epochs
        for split in ("train", "test")
    ]
    return pd.DataFrame(rows, columns=["epoch", "split", "value"])


def _x_epoch(epochs_total: int | None) -> alt.X:
    scale = alt.Scale(domain=[0, epochs_total]) if epochs_total else alt.Undefined
    return alt.X("epoch:Q", title="epoch", scale=scale, axis=alt.Axis(tickMinStep=1))


def accuracy_chart(epochs: list[Epoch], epochs_total: int | None = None, target: float = TARGET_ACC) -> alt.Chart:
    """Train and test accuracy per epoch, with the target line."""
    data = epochs_long(epochs, "acc")
    low = min([97.0, *data["value"].tolist()]) if len(data) else 97.0
    y = alt.Y("value:Q", title="accuracy (%)", scale=alt.Scale(domain=[max(low - 0.5, 0), 100], clamp=True))
    lines = (
        alt.Chart(data)
        .mark_line(point=True)
        .encode(
            _x_epoch(epochs_total),
            y,
            color=alt.Color("split:N", scale=EPOCH_COLORS, title=None),
            tooltip=["epoch:Q", "split:N", alt.Tooltip("value:Q", format=".2f")],
        )
    )
    rule = (
        alt.Chart(pd.DataFrame({"target": [target]})).mark_rule(strokeDash=[4, 4], color="green").encode(y="target:Q")
    )
    return (lines + rule).properties(height=280, title=f"Accuracy (target {target}%)")


def loss_chart(epochs: list[Epoch], batch_losses=(), epochs_total: int | None = None) -> alt.Chart:
    """Train/test loss per epoch over the batch-level training loss."""
    data = epochs_long(epochs, "loss")
    batches = pd.DataFrame(list(batch_losses), columns=["epoch", "value"]).assign(split="batch")
    color = alt.Color("split:N", scale=SPLIT_COLORS, title=None)
    y = alt.Y("value:Q", title="loss", scale=alt.Scale(type="log"))
    batch_line = alt.Chart(batches).mark_line(strokeWidth=1, opacity=0.6).encode(_x_epoch(epochs_total), y, color)
    epoch_lines = (
        alt.Chart(data)
        .mark_line(point=True)
        .encode(_x_epoch(epochs_total), y, color, tooltip=["epoch:Q", "split:N", "value:Q"])
    )
    return (batch_line + epoch_lines).properties(height=280, title="Loss")


def lr_chart(rates: list[float], batches_per_epoch: int) -> alt.Chart:
    """The learning rate over the run's optimizer steps, x in epochs."""
    data = pd.DataFrame({"epoch": [i / batches_per_epoch for i in range(len(rates))], "lr": rates})
    # fit-x: Streamlit's default "fit" counts title and axes in the 160 px, which left the curve ~25 px tall.
    autosize = alt.AutoSizeParams(type="fit-x", contains="padding")
    return (
        alt.Chart(data)
        .mark_line()
        .encode(alt.X("epoch:Q"), alt.Y("lr:Q", title="learning rate"))
        .properties(height=160, title="LR schedule", autosize=autosize)
    )


def compare_chart(
    runs: list[tuple[str, list[Epoch]]], metric: str = "test_acc", target: float = TARGET_ACC
) -> alt.Chart:
    """One metric per epoch for several runs, overlaid."""
    rows = [{"run": label, "epoch": e.epoch, "value": getattr(e, metric)} for label, epochs in runs for e in epochs]
    data = pd.DataFrame(rows, columns=["run", "epoch", "value"])
    title = metric.replace("_", " ").replace("acc", "accuracy (%)")
    lines = (
        alt.Chart(data)
        .mark_line(point=True)
        .encode(
            alt.X("epoch:Q", axis=alt.Axis(tickMinStep=1)),
            alt.Y("value:Q", title=title, scale=alt.Scale(zero=False)),
            # A categorical palette: the theme's default hands near-identical blues to the first runs. The legend
            # shows names whole (Altair cuts them at 200 px); the tooltip names the run too.
            color=alt.Color("run:N", title="run", scale=alt.Scale(scheme="tableau10"), legend=alt.Legend(labelLimit=0)),
            tooltip=["run:N", "epoch:Q", alt.Tooltip("value:Q", format=".3f")],
        )
    )
    if metric.endswith("acc"):
        rule = alt.Chart(pd.DataFrame({"t": [target]})).mark_rule(strokeDash=[4, 4], color="green").encode(y="t:Q")
        return (lines + rule).properties(height=320)
    return lines.properties(height=320)


def budget_chart(params: int) -> alt.Chart:
    """A horizontal gauge of the parameter count with the 8,000 and 20,000 budgets marked."""
    top = max(params, LOOSE_BUDGET) * 1.15
    color = "#2ca02c" if params < PARAM_BUDGET else ("#ff7f0e" if params < LOOSE_BUDGET else "#d62728")
    bar = (
        alt.Chart(pd.DataFrame({"params": [params], "label": ["parameters"]}))
        .mark_bar(color=color, size=26)
        .encode(
            alt.X("params:Q", scale=alt.Scale(domain=[0, top]), title=None),
            alt.Y("label:N", title=None, axis=None),
            tooltip=[alt.Tooltip("params:Q", format=",")],
        )
    )
    marks = pd.DataFrame({"params": [PARAM_BUDGET, LOOSE_BUDGET], "name": ["8k budget", "20k"]})
    rules = alt.Chart(marks).mark_rule(color="black", strokeDash=[3, 3]).encode(x="params:Q")
    # Labels sit inside the plot's top edge, above the bar: placed outside it, the chart's own bounds cut them off.
    text = (
        alt.Chart(marks)
        .mark_text(align="left", baseline="top", dx=3)
        .encode(x="params:Q", y=alt.value(1), text="name:N")
    )
    return (bar + rules + text).properties(height=70)


def class_chart(rows: list[dict], target: float = TARGET_ACC, budget: int = PARAM_BUDGET) -> alt.Chart:
    """A class's runs as points of parameters against accuracy (held over the last epochs, or best test), with the
    target box (fewer than `budget` parameters, at least `target`%) shaded; hovering names the student and config."""
    points = [r for r in rows if r["Params"] and r["accuracy"] is not None]
    columns = ["Student", "Run", "Params", "accuracy", "accuracy_kind", "Config"]
    data = pd.DataFrame([{c: r[c] for c in columns} for r in points], columns=columns)
    low = min([98.0, *data["accuracy"].tolist()])
    x = alt.X("Params:Q", title="parameters", scale=alt.Scale(type="log"))
    y = alt.Y("accuracy:Q", title="test accuracy (%)", scale=alt.Scale(domain=[max(low - 0.5, 0), 100], clamp=True))
    box = (
        alt.Chart(pd.DataFrame({"x": [100], "x2": [budget], "y": [target], "y2": [100]}))
        .mark_rect(color="green", opacity=0.12, stroke="green", strokeDash=[4, 4])
        .encode(x="x:Q", x2="x2:Q", y="y:Q", y2="y2:Q")
    )
    dots = (
        alt.Chart(data)
        .mark_circle(size=90)
        .encode(
            x,
            y,
            color=alt.Color("Student:N", scale=alt.Scale(scheme="tableau10"), legend=alt.Legend(labelLimit=0)),
            tooltip=[
                "Student:N",
                "Run:N",
                alt.Tooltip("Params:Q", format=","),
                alt.Tooltip("accuracy:Q", title="accuracy", format=".2f"),
                alt.Tooltip("accuracy_kind:N", title="which"),
                alt.Tooltip("Config:N", title="config"),
            ],
        )
    )
    title = f"The class's runs: the target box is < {budget:,} parameters and >= {target}%"
    return (box + dots).properties(height=360, title=title)


def confusion_chart(matrix: list[list[int]]) -> alt.Chart:
    """A 10x10 heatmap of true vs predicted digits, counts written in the cells."""
    rows = [{"true": t, "predicted": p, "count": int(matrix[t][p])} for t in range(10) for p in range(10)]
    data = pd.DataFrame(rows)
    base = alt.Chart(data).encode(alt.X("predicted:O"), alt.Y("true:O"))
    cells = base.mark_rect().encode(
        color=alt.Color("count:Q", scale=alt.Scale(type="symlog", scheme="blues"), legend=None),
        tooltip=["true:O", "predicted:O", "count:Q"],
    )
    text = base.mark_text(fontSize=10).encode(
        text="count:Q", color=alt.condition(alt.datum.count > 200, alt.value("white"), alt.value("black"))
    )
    return (cells + text).properties(width=360, height=360, title="Confusion matrix (test set)")


def probability_chart(probabilities: list[float]) -> alt.Chart:
    """The predicted probability of each digit."""
    data = pd.DataFrame({"digit": list(range(10)), "probability": probabilities})
    return (
        alt.Chart(data)
        .mark_bar()
        .encode(
            alt.X("digit:O"),
            alt.Y("probability:Q", scale=alt.Scale(domain=[0, 1])),
            tooltip=["digit:O", alt.Tooltip("probability:Q", format=".3f")],
        )
        .properties(height=200)
    )


def per_class_chart(accuracies: list[float]) -> alt.Chart:
    """Test accuracy of each true digit; the axis starts just below the weakest digit so the differences show."""
    data = pd.DataFrame({"digit": list(range(len(accuracies))), "accuracy": [float(a) for a in accuracies]})
    low = max(0.0, float(min(accuracies, default=100.0)) - 1.0)
    return (
        alt.Chart(data)
        .mark_bar()
        .encode(
            alt.X("digit:O"),
            alt.Y("accuracy:Q", title="accuracy (%)", scale=alt.Scale(domain=[low, 100], clamp=True)),
            tooltip=["digit:O", alt.Tooltip("accuracy:Q", format=".2f")],
        )
        .properties(height=360, title="Accuracy per digit (test set)")
    )


def arrow_spec(chart: alt.TopLevelMixin) -> dict:
    """The chart's Vega-Lite spec with each dataset already in Arrow IPC bytes, as Streamlit sends it.

    Building and serialising an Altair chart costs tens of milliseconds of Python; a spec made once can be drawn by
    every session that shows the same data (st.vega_lite_chart passes byte datasets through as they are).
    """
    spec = chart.to_dict()
    datasets = {}
    for name, rows in spec.get("datasets", {}).items():
        sink = io.BytesIO()
        table = pa.Table.from_pylist(rows)
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        datasets[name] = sink.getvalue()
    return {**spec, "datasets": datasets} if datasets else spec


class SpecCache:
    """A small thread-safe LRU of chart specs: a class watching one run shares each drawing of it."""

    def __init__(self, size: int = 256):
        self.size = size
        self._specs: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, build) -> dict:
        """The spec stored under key, else build() made into one (outside the lock) and stored."""
        with self._lock:
            if key in self._specs:
                self._specs.move_to_end(key)
                return self._specs[key]
        spec = arrow_spec(build())
        with self._lock:
            self._specs[key] = spec
            while len(self._specs) > self.size:
                self._specs.popitem(last=False)
        return spec
