"""Inspect: what a trained run gets wrong, what its conv layers see, how it reads your digit, and its PyTorch script."""

import logging
from contextlib import contextmanager

import streamlit as st

from drill import export, inspection
from drill.charts import DRAW_PARAM, confusion_chart, drawing_chart, per_class_chart, probability_chart
from drill.data import load_mnist
from drill.records import step_name
from views import common

log = logging.getLogger(__name__)
GRID = 24  # mistakes shown at once


@contextmanager
def explained(what: str):
    """Turn any error in a part of the page into a message there: no traceback reaches the page."""
    try:
        yield
    except Exception as error:
        log.exception("inspect: %s failed", what)
        st.error(f"{what} failed ({type(error).__name__}: {error}).")


def pick_run(manager):
    """The run to inspect (a Snapshot) and its trained model; imported runs carry only their numbers (None)."""
    runs = {run.id: run for run in manager.snapshots(common.owner()) if run.status in ("finished", "stopped")}
    models = {run_id: getattr(getattr(manager.get(run_id), "result", None), "model", None) for run_id in runs}
    if not runs:
        st.info("No finished run yet: train one on the Train page, then come back to look inside it.")
        return None, None
    trained = [i for i, run_id in enumerate(runs) if models[run_id] is not None]
    name = lambda run_id: f"{run_id}: {step_name(runs[run_id].label, None, run_id)} ({runs[run_id].status})"  # noqa: E731
    run_id = st.selectbox("Run", list(runs), index=trained[-1] if trained else len(runs) - 1, format_func=name)
    return runs[run_id], models[run_id]


def show_mistakes(report, images) -> None:
    digit = st.selectbox("True digit", ["all", *range(10)], key="inspect_mistake_digit")
    wrong = inspection.mistakes(report, GRID, None if digit == "all" else digit)
    st.caption(
        f"{int((report.predicted != report.labels).sum())} of {len(report.labels):,} test digits are "
        "misclassified; most confident mistakes first (test-set number: true digit read as ...)."
    )
    if wrong:
        captions = [f"#{m.index}: {m.true} read as {m.predicted} ({m.confidence:.0%})" for m in wrong]
        st.image([inspection.enlarge(images[m.index].numpy()) for m in wrong], caption=captions, width=84)


def show_confusion(report) -> None:
    st.metric("Test accuracy", f"{report.accuracy:.2f}%")
    st.caption("Rows: the true digit; columns: what the model read. Off the diagonal are the mistakes.")
    left, right = st.columns(2)
    left.altair_chart(confusion_chart(report.confusion.tolist()))
    right.altair_chart(per_class_chart(report.per_class.tolist()), width="stretch")


def show_feature_maps(model, report, images) -> None:
    index = st.number_input("Test image number", 0, len(images) - 1, 0, key="inspect_index")
    said = int(report.predicted[index])
    st.image(
        inspection.enlarge(images[index].numpy(), 4),
        caption=f"#{index}: true {int(report.labels[index])}, read as {said} ({report.probabilities[index, said]:.0%})",
    )
    st.caption("Each conv block's output channels for this digit, each stretched to its own range: bright is strong.")
    for block in inspection.feature_maps(model, images[index].numpy()):
        channels, height, width = block.maps.shape
        st.image(inspection.tile_maps(block.maps), caption=f"{block.name}: {channels} channels of {height}x{width}")


def show_reading(model, digit) -> None:
    probabilities = inspection.predict_digit(model, digit)
    left, right = st.columns([1, 3])
    left.image(inspection.enlarge(digit, 4), caption="what the model sees (28x28)")
    right.markdown(f"The model reads **{int(probabilities.argmax())}** ({probabilities.max():.1%} sure).")
    right.altair_chart(probability_chart(probabilities.tolist()), width="stretch")


@st.fragment
def draw_digit(model) -> None:
    """Press and drag on the grid to paint (painting a cell again erases it); only this part reruns meanwhile."""
    version = st.session_state.setdefault("inspect_draw_version", 0)
    event = st.altair_chart(
        drawing_chart(), on_select="rerun", selection_mode=DRAW_PARAM, key=f"draw_{version}", width="content"
    )
    if st.button("Clear the drawing", icon="🧽"):
        st.session_state.inspect_draw_version = version + 1
        st.rerun(scope="fragment")
    cells = event.selection.get(DRAW_PARAM, []) if event else []
    with explained("Reading the drawing"):  # a fragment reruns alone, outside the page's own error handling
        if cells:
            show_reading(model, inspection.painted_digit(cells))


def show_own_digit(model) -> None:
    st.caption(
        "Draw a digit, or upload a photo or scan of one: it is cut out, fitted into 20x20 and centred in "
        "28x28 the way MNIST's digits were."
    )
    if st.radio("Digit from", ["Drawing", "Photo"], horizontal=True, key="inspect_source") == "Drawing":
        return draw_digit(model)
    upload = st.file_uploader(
        "Your digit (PNG or JPEG, at most 2 MB)",
        type=["png", "jpg", "jpeg"],
        key="inspect_upload",
        max_upload_size=inspection.MAX_UPLOAD_BYTES // 2**20,
    )
    try:
        if upload is not None:
            show_reading(model, inspection.prepare_upload(upload.getvalue()))
    except inspection.UploadError as error:
        st.error(f"{upload.name}: {error}")


def show_scripts(run) -> None:
    st.caption(
        "The same experiment as one plain PyTorch + torchvision file to run in Colab: the network written "
        "out layer by layer, augmentations as torchvision transforms, the optimizer and schedule."
    )
    name, script = export.named_script(common.config(), common.matching_preset(common.config()))
    left, right = st.columns(2)
    left.download_button(
        "Script for the current model", script, file_name=name, mime="text/x-python", icon="🐍", on_click="ignore"
    )
    if run is not None:
        run_file, run_script = export.named_script(run.config, common.matching_preset(run.config), run.id)
        right.download_button(
            f"Script for {run.id}", run_script, file_name=run_file, mime="text/x-python", icon="🐍", on_click="ignore"
        )
    with st.expander("Read the script for the current model"):
        st.code(script, language="python")


def show_run(model) -> None:
    data = load_mnist()
    with st.spinner("Reading the 10,000 test digits..."):
        report = inspection.report_for(model, data.test_images, data.test_labels)
    tabs = st.tabs(["Mistakes", "Confusion matrix", "Feature maps", "Your digit"])
    with tabs[0], explained("Showing the mistakes"):
        show_mistakes(report, data.test_images)
    with tabs[1], explained("Drawing the confusion matrix"):
        show_confusion(report)
    with tabs[2], explained("Computing the feature maps"):
        show_feature_maps(model, report, data.test_images)
    with tabs[3], explained("Reading your digit"):
        show_own_digit(model)


st.title("Inspect a model")
run = None
with explained("Inspecting the run"):
    run, model = pick_run(common.manager())
    if run is not None and model is None:
        st.info(
            f"{run.id} has its numbers but no trained model to look into: it was imported from a file (or "
            "stopped before it started). Pick a run trained in this session."
        )
    elif model is not None:
        show_run(model)
st.subheader("As a plain PyTorch script")
with explained("Generating the script"):
    show_scripts(run)
