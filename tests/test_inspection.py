"""Tests for drill.inspection (test-set report, feature maps, uploaded digits) and drill.records (table, import)."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from drill import inspection, records
from drill.inspection import EvalReport, UploadError
from drill.model import build_model, count_params
from drill.presets import BY_NAME
from drill.run_record import Epoch, RecordError, RunRecord, Status
from drill.stack import plan
from drill.train import evaluate, train

TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
TINY = BY_NAME["quick"].config.replace(train={"subset": 1000, "epochs": 1, "batch_size": 64})


@pytest.fixture(scope="module")
def trained(mnist):
    """A model trained for one short epoch: right often enough to have a diagonal, wrong often enough to inspect."""
    result = train(TINY, mnist, threads=1)
    assert result.status == "finished", result.reason
    return result


# -- the test-set report -----------------------------------------------------------------------------------------
def make_report(probabilities, labels) -> EvalReport:
    probabilities = np.asarray(probabilities, dtype=np.float32)
    labels = np.asarray(labels)
    predicted = probabilities.argmax(axis=1)
    return EvalReport(probabilities, predicted, labels, inspection.confusion_matrix(labels, predicted))


def one_hot_ish(digit: int, confidence: float) -> list[float]:
    row = [(1 - confidence) / 9] * 10
    row[digit] = confidence
    return row


def test_mistakes_come_most_confident_first_and_filter_by_true_digit():
    rows = [one_hot_ish(3, 0.6), one_hot_ish(1, 0.9), one_hot_ish(2, 0.99), one_hot_ish(5, 0.8), one_hot_ish(4, 0.7)]
    report = make_report(rows, labels=[3, 7, 7, 5, 9])  # images 1, 2 and 4 are wrong
    found = inspection.mistakes(report)
    assert [m.index for m in found] == [2, 1, 4]
    assert [(m.true, m.predicted) for m in found] == [(7, 2), (7, 1), (9, 4)]
    assert found[0].confidence == pytest.approx(0.99)
    assert [m.index for m in inspection.mistakes(report, limit=1)] == [2]
    assert [m.index for m in inspection.mistakes(report, true_digit=9)] == [4]
    assert inspection.mistakes(report, true_digit=3) == []
    assert report.accuracy == pytest.approx(40.0)


def test_confusion_matrix_covers_the_test_set_and_matches_accuracy(mnist, trained):
    report = inspection.report_for(trained.model, mnist.test_images, mnist.test_labels)
    assert report.confusion.shape == (10, 10)
    assert report.confusion.sum() == 10_000
    assert report.confusion.sum(axis=1).tolist() == TEST_CLASS_COUNTS
    _, accuracy = evaluate(trained.model, mnist.test_images, mnist.test_labels)
    assert report.accuracy == pytest.approx(accuracy)
    assert report.accuracy == pytest.approx(trained.epochs[-1].test_acc)
    assert report.per_class == pytest.approx(100 * np.diag(report.confusion) / np.array(TEST_CLASS_COUNTS))
    wrong = inspection.mistakes(report, limit=10_000)
    assert len(wrong) == 10_000 - np.trace(report.confusion)
    assert all(a.confidence >= b.confidence for a, b in zip(wrong, wrong[1:], strict=False))
    assert all(mnist.test_labels[m.index] == m.true != m.predicted for m in wrong[:50])


def test_report_is_memoised_and_inspection_never_touches_the_model(mnist, trained):
    model = trained.model
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    model.train()  # as if a thread were still training it: inspection must not switch it to eval
    try:
        first = inspection.report_for(model, mnist.test_images, mnist.test_labels)
        assert inspection.report_for(model, mnist.test_images, mnist.test_labels) is first
        inspection.feature_maps(model, mnist.test_images[0])
        inspection.predict_digit(model, mnist.test_images[0].numpy())
        assert model.training
        assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
        assert not any(module._forward_hooks for module in model.modules())
    finally:
        model.eval()


def test_feature_maps_has_one_grid_per_conv_block_with_its_shape():
    cfg = BY_NAME["final"].config.model  # 10,10,16,M,T10,10,16,16
    model = build_model(cfg)
    image = np.zeros((28, 28), np.uint8)
    image[8:20, 12:16] = 255
    blocks = inspection.feature_maps(model, image)
    assert [b.name for b in blocks] == ["conv1", "conv2", "conv3", "trans1", "conv4", "conv5", "conv6"]
    expected = [(b.out_channels, b.out_size, b.out_size) for b in plan(cfg).blocks if b.layer.kind == "conv"]
    assert [b.maps.shape for b in blocks] == expected
    grid = inspection.tile_maps(blocks[0].maps)  # 10 channels of 26x26: 8 columns, 2 rows, each tile 2x
    assert grid.dtype == np.uint8
    assert grid.shape == (2 * 52 + 2, 8 * 52 + 7 * 2)
    flat = inspection.tile_maps(np.zeros((3, 5, 5), np.float32))
    assert flat.shape[1] == 3 * 70 + 2 * 2 and flat.max() <= inspection.BACKGROUND  # flat channels draw black


# -- a student's own digit -------------------------------------------------------------------------------------
def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def seven(size=(180, 240), ink=0, paper=255, mode="L") -> Image.Image:
    """A thick 7 drawn off-centre, dark ink on light paper unless told otherwise."""
    image = Image.new(mode, size, paper)
    ImageDraw.Draw(image).line([(30, 40), (120, 40), (60, 210)], fill=ink, width=16)
    return image


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    weights = image.astype(np.float64)
    return ((weights.sum(1) @ np.arange(28)) / weights.sum(), (weights.sum(0) @ np.arange(28)) / weights.sum())


def test_dark_digit_on_white_becomes_a_centred_mnist_digit():
    digit = inspection.prepare_upload(encode(seven()))
    assert digit.shape == (28, 28) and digit.dtype == np.uint8
    assert digit.max() == 255
    rows, cols = np.nonzero(digit)
    assert max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 == 20  # the longer side fills the 20x20 box
    assert rows.max() - rows.min() > cols.max() - cols.min()  # aspect ratio kept: the 7 is taller than wide
    assert digit[0].max() == digit[-1].max() == digit[:, 0].max() == digit[:, -1].max() == 0  # black background
    row, col = centre_of_mass(digit)
    assert abs(row - 14) <= 0.5 and abs(col - 14) <= 0.5  # where MNIST's centres of mass are
    # Light ink on dark paper needs no inversion and gives the same digit.
    assert np.array_equal(inspection.prepare_upload(encode(seven(ink=255, paper=0))), digit)


def test_real_mnist_digits_survive_the_round_trip(mnist):
    """Blown up to 280x280 and inverted like a scan, MNIST digits come back (nearly) as they were."""
    correlations = []
    for original in mnist.test_images[:20].numpy():
        scan = Image.fromarray(255 - original).resize((280, 280), Image.Resampling.BICUBIC)
        digit = inspection.prepare_upload(encode(scan))
        correlations.append(np.corrcoef(digit.ravel().astype(float), original.ravel().astype(float))[0, 1])
    assert np.mean(correlations) > 0.9 and min(correlations) > 0.6


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: seven(mode="RGB", ink=(0, 0, 0), paper=(255, 255, 255)), id="RGB"),
        pytest.param(lambda: seven().convert("P"), id="palette"),
        pytest.param(lambda: seven().convert("1"), id="1-bit"),
        pytest.param(lambda: Image.fromarray(np.asarray(seven(), np.uint16) * 257), id="16-bit"),
        pytest.param(lambda: seven(mode="RGBA", ink=(0, 0, 0, 255), paper=(0, 0, 0, 0)), id="RGBA-transparent"),
        pytest.param(lambda: seven(mode="LA", ink=(0, 255), paper=(0, 0)), id="LA-transparent"),
    ],
)
def test_every_image_mode_gives_the_same_digit(make):
    reference = inspection.prepare_upload(encode(seven()))
    image = make()
    digit = inspection.prepare_upload(encode(image))
    # 1-bit loses anti-aliasing and transparency composites differently at the edges: allow small differences.
    assert np.abs(digit.astype(int) - reference.astype(int)).mean() < 8, image.mode
    assert digit[0].max() == 0


def test_jpeg_and_a_palette_png_with_a_transparent_background():
    assert inspection.prepare_upload(encode(seven().convert("RGB"), "JPEG", quality=90)).max() == 255
    paletted = seven().convert("P")
    background_index = paletted.getpixel((0, 0))
    digit = inspection.prepare_upload(encode(paletted, transparency=background_index))
    assert digit[0].max() == 0 and digit.max() == 255


def canvas_value(image: Image.Image) -> str:
    """What the drawing canvas sends for a picture: a PNG data URL."""
    return "data:image/png;base64," + base64.b64encode(encode(image)).decode()


def drawn(strokes: list[list[tuple[int, int]]]) -> Image.Image:
    """Strokes as the canvas paints them: a round white pen on an opaque black square."""
    side, pen = inspection.CANVAS_PX, inspection.PEN_PX
    image = Image.new("RGBA", (side, side), (0, 0, 0, 255))
    draw = ImageDraw.Draw(image)
    for stroke in strokes:
        draw.line(stroke, fill=(255, 255, 255, 255), width=pen, joint="curve")
        for x, y in (stroke[0], stroke[-1]):
            draw.ellipse([x - pen / 2, y - pen / 2, x + pen / 2, y + pen / 2], fill=(255, 255, 255, 255))
    return image


def test_a_one_drawn_off_centre_becomes_a_centred_mnist_digit():
    digit = inspection.drawn_digit(canvas_value(drawn([[(80, 30), (95, 60), (70, 230)]])))  # a slanted 1, left
    assert digit.shape == (28, 28) and digit.dtype == np.uint8 and digit.max() == 255
    rows, cols = np.nonzero(digit)
    assert rows.max() - rows.min() + 1 == 20  # the stroke's height fills the 20x20 box
    assert cols.max() - cols.min() < 12  # and a 1 stays narrow: the aspect ratio is kept
    assert digit[0].max() == digit[-1].max() == digit[:, 0].max() == digit[:, -1].max() == 0
    row, col = centre_of_mass(digit)
    assert abs(row - 14) <= 0.5 and abs(col - 14) <= 0.5


def test_an_empty_drawing_says_nothing_is_drawn():
    for empty in (None, canvas_value(drawn([]))):  # before the first stroke; after Clear or the last Undo
        with pytest.raises(UploadError, match=r"^Nothing is drawn yet: draw one digit, large, in the middle"):
            inspection.drawn_digit(empty)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(7, id="not-a-string"),
        pytest.param("junk", id="not-a-data-url"),
        pytest.param("data:image/png;base64,@@@@", id="bad-base64"),
        pytest.param("data:image/png;base64," + base64.b64encode(b"not a picture").decode(), id="not-a-png"),
    ],
)
def test_a_drawing_that_is_not_a_picture_is_refused_with_a_message(value):
    with pytest.raises(UploadError, match="did not arrive as a picture: press Clear"):
        inspection.drawn_digit(value)


def test_mnist_digits_drawn_on_the_canvas_come_back_as_they_were(mnist):
    """A canvas showing an MNIST digit at ten times its size gives (nearly) that digit: drawing and upload agree."""
    correlations = []
    for original in mnist.test_images[:20].numpy():
        big = Image.fromarray(original).resize((inspection.CANVAS_PX,) * 2, Image.Resampling.BICUBIC)
        digit = inspection.drawn_digit(canvas_value(big.convert("RGBA")))
        assert np.array_equal(digit, inspection.prepare_upload(encode(big)))
        correlations.append(np.corrcoef(digit.ravel().astype(float), original.ravel().astype(float))[0, 1])
    assert np.mean(correlations) > 0.9 and min(correlations) > 0.6


def animated_png() -> bytes:
    frames = [seven(), seven(ink=128)]
    return encode(frames[0], save_all=True, append_images=frames[1:])


@pytest.mark.parametrize(
    "raw, message",
    [
        pytest.param(b"", "empty", id="empty"),
        pytest.param(b"this is not an image at all", "not a PNG or JPEG", id="not-an-image"),
        pytest.param(json.dumps({"a": 1}).encode(), "not a PNG or JPEG", id="json"),
        pytest.param(encode(seven())[:300], "could not be decoded", id="truncated-png"),
        pytest.param(encode(Image.new("L", (5000, 5000))), "5000x5000", id="5000x5000"),
        pytest.param(encode(Image.new("L", (40, 2500))), "40x2500", id="too-tall"),
        pytest.param(b"\x89PNG" + bytes(inspection.MAX_UPLOAD_BYTES), "MB", id="over-2MB"),
        pytest.param(encode(Image.new("L", (60, 60), 255)), "No digit found", id="blank"),
        pytest.param(encode(seven(), "GIF"), "not a PNG or JPEG", id="gif"),
    ],
)
def test_bad_uploads_raise_a_clear_error(raw, message):
    with pytest.raises(UploadError, match=message):
        inspection.prepare_upload(raw)


def test_animated_png_is_rejected():
    with pytest.raises(UploadError, match="animated"):
        inspection.prepare_upload(animated_png())


# -- records: the table, export and import ---------------------------------------------------------------------
def epochs_for(accuracies: list[float]) -> list[dict]:
    return [
        {
            "epoch": i,
            "train_loss": 0.1,
            "train_acc": acc + 0.1,
            "test_loss": 0.03,
            "test_acc": acc,
            "lr": 0.01,
            "seconds": 2.5,
        }
        for i, acc in enumerate(accuracies, start=1)
    ]


def fake_run(label="tiny", config=TINY, status=Status.FINISHED, reason="", accuracies=(97.5,)) -> RunRecord:
    """A run's record as a student's session holds it."""
    return RunRecord(
        config=config,
        status=Status(status),
        reason=reason,
        params=count_params(build_model(config.model)),
        seconds=12.345,
        epochs=tuple(Epoch(**epoch) for epoch in epochs_for(list(accuracies))),
        label=label,
    )


def test_table_row_and_markdown_read_like_a_write_up():
    final = BY_NAME["final"]
    accs = [99.1, 99.2, 99.3, 99.35, 99.4, 99.41, 99.42, 99.45, 99.44, 99.43, 99.46, 99.5, 99.48, 99.47, 99.49]
    good = fake_run(label="", config=final.config, accuracies=accs)
    row = records.table_row(good, final)
    assert row["Step"] == final.title and row["Target"] == final.target
    assert row["Params"] == 7570 and row["Best test"] == 99.5 and row["Consistent"]
    assert row["Last 4"] == "99.50, 99.48, 99.47, 99.49 (yes)"
    failed = fake_run(label="too hot | lr 1.0", status="failed", reason="the loss became nan", accuracies=())
    failed_row = records.table_row(failed)
    assert failed_row["Analysis"].startswith("Failed: the loss became nan")
    markdown = records.markdown_table([row, failed_row])
    lines = markdown.splitlines()
    assert lines[0] == "| Step | Target | Params | Best train | Best test | Last 4 | Analysis |"
    assert lines[2].startswith(f"| {final.title} | {final.target} | 7,570 | 99.60% | 99.50% | ")
    assert "too hot \\| lr 1.0" in lines[3] and lines[3].count(" | ") == 6  # the pipe is escaped, the columns hold


def test_records_round_trip():
    runs = [
        fake_run(),
        fake_run(label="stopped one", status="stopped", reason="stopped by the student"),
        fake_run(label="going", status="running"),
    ]
    text = records.records_json(runs)
    loaded = records.parse_records(text.encode())
    assert [r.label for r in loaded] == ["tiny", "stopped one"]  # a running run has nothing to export yet
    assert loaded[0] == dataclasses.replace(runs[0], seconds=12.35)  # seconds are written to the hundredth
    assert loaded[1] == dataclasses.replace(runs[1], seconds=12.35) and loaded[0].config == TINY
    fresh, repeated = records.split_new(loaded, runs)
    assert fresh == [] and repeated == 2
    fresh, repeated = records.split_new(loaded + loaded, [])
    assert len(fresh) == 2 and repeated == 2


def good_record(**changes) -> dict:
    record = fake_run().to_dict()
    record.update(changes)
    return record


def with_epoch(**changes) -> dict:
    return good_record(epochs=[{**epochs_for([97.5])[0], **changes}])


def file_of(*items) -> bytes:
    return json.dumps(list(items)).encode()


@pytest.mark.parametrize(
    "raw, message",
    [
        pytest.param(b"", "empty", id="empty"),
        pytest.param(file_of(good_record())[:-20], "not valid JSON", id="truncated"),
        pytest.param(b"\xff\xfe\x00garbage", "not text", id="binary"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "not valid JSON", id="deep-nesting"),
        pytest.param(b'{"runs": []}', "JSON object; a runs file holds a list", id="object"),
        pytest.param(b"[]", "no runs", id="empty-list"),
        pytest.param(file_of(*[good_record()] * 201), "at most 200", id="too-many"),
        pytest.param(b" " * (records.MAX_IMPORT_BYTES + 1), "at most 5 MB", id="too-big"),
        pytest.param(file_of(good_record(), 42), "Run 2, record: a JSON number", id="not-an-object"),
        pytest.param(file_of(good_record(extra=1)), "Run 1 ('tiny'), extra: unknown key", id="unknown-key"),
        pytest.param(file_of({"label": "x"}), "Run 1 ('x'), config: missing", id="no-config"),
        pytest.param(file_of(good_record(config={"model": {"wings": 2}})), "config: model.wings", id="unknown-field"),
        pytest.param(file_of(good_record(config={"optim": {}})), "config: optim", id="unknown-section"),
        pytest.param(file_of(good_record(config={"train": {"lr": "fast"}})), "train.lr", id="wrong-type"),
        pytest.param(file_of(good_record(config=[1, 2])), "config: config", id="config-list"),
        pytest.param(file_of(good_record(label=["x"])), "label: expected text", id="label-list"),
        pytest.param(file_of(good_record(status="running")), "status: 'running' is not one of", id="status"),
        pytest.param(file_of(good_record(params=999)), "params: 999 does not match", id="params"),
        pytest.param(file_of(good_record(seconds=-1)), "seconds: -1 is not a number", id="seconds"),
        pytest.param(file_of(good_record(epochs={"1": {}})), "epochs: a JSON object, expected a list", id="epochs-obj"),
        pytest.param(file_of(good_record(epochs=[])), "finished run has all 1 epochs", id="no-epochs"),
        pytest.param(file_of(good_record(epochs=epochs_for([97, 98]))), "2 epochs, but its config", id="extra-epochs"),
        pytest.param(
            file_of(with_epoch(test_acc=101.0)),
            "epochs[0].test_acc: 101.0 is not a number from 0 to 100",
            id="accuracy-101",
        ),
        pytest.param(file_of(with_epoch(test_acc="99")), "epochs[0].test_acc: '99'", id="accuracy-text"),
        pytest.param(file_of(with_epoch(test_acc=True)), "epochs[0].test_acc: True", id="accuracy-bool"),
        pytest.param(file_of(with_epoch(train_loss=-0.5)), "train_loss: -0.5", id="negative-loss"),
        pytest.param(file_of(with_epoch(epoch=2)), "out of order", id="epoch-order"),
        pytest.param(file_of(with_epoch(epoch=1.5)), "a whole number", id="epoch-fraction"),
        pytest.param(file_of(with_epoch(bonus=1)), "unknown key 'bonus'", id="epoch-extra-key"),
        pytest.param(file_of(good_record(epochs=[{"epoch": 1}])), "missing train_loss", id="epoch-missing"),
        pytest.param(file_of(good_record(epochs=[7])), "epochs[0]: a JSON number", id="epoch-number"),
        pytest.param(file_of(with_epoch(lr=1e300)), "lr: 1e+300", id="huge-lr"),
        pytest.param(
            json.dumps([with_epoch(seconds=1)]).replace('"seconds": 1}', '"seconds": 1e999}').encode(),
            "seconds: inf",
            id="infinite",
        ),
        pytest.param(
            json.dumps([with_epoch(seconds=1)]).replace('"seconds": 1}', '"seconds": NaN}').encode(),
            "contains NaN",
            id="nan",
        ),
        pytest.param(file_of(good_record(params=10**400)), "params: 1000000000", id="huge-int"),
        pytest.param(b"[" + b"9" * 5000 + b"]", "not valid JSON", id="5000-digit-int"),
        pytest.param(file_of(good_record(label="L" * 300)), "at most 200 characters", id="long-label"),
    ],
)
def test_bad_imports_name_the_run_and_the_field(raw, message):
    with pytest.raises(RecordError, match=re.escape(message)):
        records.parse_records(raw)
