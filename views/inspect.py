"""Inspect: what a trained run gets wrong, what its conv layers see, how it reads your digit, and its PyTorch script."""

import streamlit as st

from drill import export, inspection
from drill.charts import confusion_chart, per_class_chart, probability_chart
from drill.data import load_mnist
from views import common
from views.canvas import digit_canvas

GRID = 24  # mistakes shown at once


def pick_run(manager) -> inspection.Candidate | None:
    """The run to inspect, with its trained model (None for a run with only its numbers, which says why)."""
    runs = inspection.candidates(manager, common.owner())
    if not runs:
        st.info("No finished run yet: train one on the Train page, then come back to look inside it.")
        return None
    ticket_id = st.selectbox(
        "Run", list(runs), index=inspection.default_pick(runs), format_func=lambda i: runs[i].title
    )
    if runs[ticket_id].model is None:
        st.info(runs[ticket_id].no_model_note)
    return runs[ticket_id]


def show_reading(model, digit) -> None:
    probabilities = inspection.predict_digit(model, digit)
    left, right = st.columns([1, 3])
    left.image(inspection.enlarge(digit, 4), caption="what the model sees (28x28)")
    right.markdown(inspection.reading_text(probabilities))
    right.altair_chart(probability_chart(probabilities.tolist()), width="stretch")


@st.fragment
def draw_digit(model) -> None:
    """The drawing canvas and its reading; each stroke finished or undone reruns only this part."""
    st.caption(
        "Draw one digit, large, in the middle of the black square: press and drag, with as many strokes as it "
        "takes. **Undo** removes the last stroke, **Clear** all of them; the reading follows each stroke."
    )
    pad, reading = st.columns([1, 2])
    with pad:
        drawing = digit_canvas(inspection.CANVAS_PX, inspection.PEN_PX, key="inspect_canvas")
    with reading, common.explained("Reading the drawing"):  # a fragment reruns alone, outside the page's handling
        try:
            digit = inspection.drawn_digit(drawing)
        except inspection.UploadError as error:
            st.info(str(error))
        else:
            show_reading(model, digit)


def show_own_digit(model) -> None:
    st.caption(
        "Draw a digit, or upload a photo or scan of one: it is cut out, fitted into 20x20 and centred in "
        "28x28 the way MNIST's digits were."
    )
    if st.radio("Digit from", ["Drawing", "Photo"], horizontal=True, key="inspect_source") == "Drawing":
        return draw_digit(model)
    upload = common.file_upload(
        "Your digit (PNG or JPEG, at most 2 MB)", ["png", "jpg", "jpeg"], "inspect_upload", inspection.MAX_UPLOAD_BYTES
    )
    try:
        if upload is not None:
            show_reading(model, inspection.prepare_upload(upload.getvalue()))
    except inspection.UploadError as error:
        st.error(f"{upload.name}: {error}")


def script_download(column, label: str, cfg, run_name: str | None = None) -> str:
    """A button downloading cfg's experiment as a script (drill.export.named_script); returns the script."""
    name, script = export.named_script(cfg, run_name)
    column.download_button(label, script, file_name=name, mime="text/x-python", icon="🐍", on_click="ignore")
    return script


def show_run(model) -> None:
    data = load_mnist()
    with st.spinner("Reading the 10,000 test digits..."):
        report = inspection.report_for(model, data.test_images, data.test_labels)
    mistakes, confusion, maps, own = st.tabs(["Mistakes", "Confusion matrix", "Feature maps", "Your digit"])
    with mistakes, common.explained("Showing the mistakes"):
        digit = st.selectbox("True digit", ["all", *range(10)], key="inspect_mistake_digit")
        pictures, captions = inspection.mistake_tiles(report, data.test_images, GRID, None if digit == "all" else digit)
        st.caption(report.mistakes_note)
        if pictures:
            st.image(pictures, caption=captions, width=84)
    with confusion, common.explained("Drawing the confusion matrix"):
        st.metric("Test accuracy", f"{report.accuracy:.2f}%")
        st.caption("Rows: the true digit; columns: what the model read. Off the diagonal are the mistakes.")
        left, right = st.columns(2)
        left.altair_chart(confusion_chart(report.confusion.tolist()))
        right.altair_chart(per_class_chart(report.per_class.tolist()), width="stretch")
    with maps, common.explained("Computing the feature maps"):
        index = st.number_input("Test image number", 0, len(data.test_images) - 1, 0, key="inspect_index")
        st.image(inspection.enlarge(data.test_images[index].numpy(), 4), caption=report.describe(index))
        st.caption(
            "Each conv block's output channels for this digit, each stretched to its own range: bright is strong."
        )
        for block in inspection.feature_maps(model, data.test_images[index].numpy()):
            st.image(inspection.tile_maps(block.maps), caption=block.caption)
    with own, common.explained("Reading your digit"):
        show_own_digit(model)


st.title("Inspect a model")
picked = None
with common.explained("Inspecting the run"):
    picked = pick_run(common.manager())
    if picked is not None and picked.model is not None:
        show_run(picked.model)
st.subheader("As a plain PyTorch script")
with common.explained("Generating the script"):
    st.caption(
        "The same experiment as one plain PyTorch + torchvision file to run in Colab: the network written "
        "out layer by layer, augmentations as torchvision transforms, the optimizer and schedule."
    )
    left, right = st.columns(2)
    script = script_download(left, "Script for the current model", common.config())
    if picked is not None:
        script_download(right, f"Script for {picked.name}", picked.run.config, picked.name)
    with st.expander("Read the script for the current model"):
        st.code(script, language="python")
