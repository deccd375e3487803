"""Looking inside a trained model: its test-set mistakes, confusion matrix, feature maps, and a student's own digit.

Everything here works on an inference copy of the model (eval mode, its own weights), so inspecting a run can never
change the model a run produced, whatever thread reads it.
"""

from __future__ import annotations

import base64
import io
import math
import threading
import weakref
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import nn

from drill.jobs import JobManager, Snapshot
from drill.model import Net
from drill.records import run_names
from drill.run_record import Status
from drill.stack import IMAGE_SIZE, NUM_CLASSES
from drill.train import normalize, predict, to_input

MAX_UPLOAD_BYTES = 2 * 2**20
MAX_UPLOAD_SIDE = 2000
UPLOAD_FORMATS = ("PNG", "JPEG")
DIGIT_BOX = 20  # MNIST fits each digit into 20x20, keeping its aspect ratio, then centres it by mass in 28x28
INK_THRESHOLD = 0.15  # after normalising to [0, 1]: fainter than this is paper, noise or shadow, not ink
RESAMPLE = Image.Resampling.LANCZOS
BACKGROUND = 64  # grey of the gaps between feature-map tiles
CANVAS_PX = 280  # the drawing canvas's side: ten times MNIST's 28
# Its pen, measured as 2 x ink area / outline: digits drawn 150-240 px tall and fitted to 20x20 get strokes
# 1.5-2.3 px wide; the middle half of MNIST's test digits have 1.6-2.2 px.
PEN_PX = 24
DRAWING_PREFIX = "data:image/png;base64,"
NOTHING_DRAWN = "Nothing is drawn yet: draw one digit, large, in the middle of the black square."
UNREADABLE_DRAWING = "The drawing did not arrive as a picture: press Clear and draw the digit again."


class UploadError(ValueError):
    """An uploaded file that cannot be turned into a digit; the message says why and what would work."""


# -- which run to inspect --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """A run the Inspect page offers, with its trained model: None for a run imported from a file, numbers only."""

    run: Snapshot
    model: Net | None
    name: str  # as Compare names it: "Final #2, seed 1"

    @property
    def title(self) -> str:
        """The run as the picker names it."""
        return f"{self.name} ({self.run.status})"

    @property
    def no_model_note(self) -> str:
        """Why there is nothing to look into, for a run without a model."""
        if not self.run.epochs:
            return f"{self.name} stopped before its first epoch ended: it has no curves and no model to look into."
        return (
            f"{self.name} has its numbers but no trained model to look into: it was imported from a file, or left "
            "early while classmates' shared run went on. Pick another run."
        )


def candidates(manager: JobManager, owner: str) -> dict[str, Candidate]:
    """An owner's finished and stopped runs, oldest first, by ticket id, named as Compare names them."""
    runs = manager.snapshots(owner)
    names = run_names(runs)
    return {
        run.ticket_id: Candidate(
            run=run, model=manager.model(run.ticket_id) if run.epochs else None, name=names[run.ticket_id]
        )
        for run in runs
        if run.status in (Status.FINISHED, Status.STOPPED)
    }


def default_pick(runs: dict[str, Candidate]) -> int:
    """Where the picker starts: the latest finished run with a model to look into, else the latest run with one
    (stopped), else the latest run."""
    with_model = [
        (c.run.status == Status.FINISHED, position) for position, c in enumerate(runs.values()) if c.model is not None
    ]
    return max(with_model)[1] if with_model else len(runs) - 1


# -- the test-set report ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalReport:
    """A model's predictions over the test set and what they add up to."""

    probabilities: np.ndarray  # [N, 10] float32
    predicted: np.ndarray  # [N] int64
    labels: np.ndarray  # [N] int64
    confusion: np.ndarray  # [10, 10] int64; row = true digit, column = predicted digit

    @property
    def accuracy(self) -> float:
        """Test accuracy in %."""
        return 100.0 * float(np.trace(self.confusion)) / float(self.confusion.sum())

    @property
    def per_class(self) -> np.ndarray:
        """Accuracy in % for each true digit."""
        totals = self.confusion.sum(axis=1)
        return 100.0 * np.diag(self.confusion) / np.maximum(totals, 1)

    @property
    def mistakes_note(self) -> str:
        """How many test digits the model gets wrong, and how the mistakes grid is ordered and captioned."""
        return (
            f"{int((self.predicted != self.labels).sum())} of {len(self.labels):,} test digits are misclassified; "
            "most confident mistakes first (test-set number: true digit read as ...)."
        )

    def describe(self, index: int) -> str:
        """One test digit's caption: its number, its true digit and how the model read it."""
        said = int(self.predicted[index])
        return f"#{index}: true {int(self.labels[index])}, read as {said} ({self.probabilities[index, said]:.0%})"


@dataclass(frozen=True)
class Mistake:
    """One misclassified test image."""

    index: int  # position in the test set
    true: int
    predicted: int
    confidence: float  # probability the model gave its (wrong) answer

    @property
    def caption(self) -> str:
        """The mistake under its picture: test-set number, true digit and the model's reading."""
        return f"#{self.index}: {self.true} read as {self.predicted} ({self.confidence:.0%})"


_COPIES: weakref.WeakKeyDictionary[nn.Module, Net] = weakref.WeakKeyDictionary()
_REPORTS: weakref.WeakKeyDictionary[nn.Module, EvalReport] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()
_HOOKS = threading.Lock()  # a memoised copy is shared: one hooked forward pass at a time, or captures would mix


def inference_copy(model: Net) -> Net:
    """An eval-mode copy of a trained model with its own weights (memoised for as long as the model lives)."""
    with _LOCK:
        copy = _COPIES.get(model)
        if copy is None:
            copy = Net(model.cfg)
            copy.load_state_dict(model.state_dict())
            copy.eval()
            _COPIES[model] = copy
        return copy


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Counts of (true, predicted) pairs as a 10x10 matrix."""
    flat = np.bincount(labels * NUM_CLASSES + predicted, minlength=NUM_CLASSES * NUM_CLASSES)
    return flat.reshape(NUM_CLASSES, NUM_CLASSES)


def report_for(model: Net, images: torch.Tensor, labels: torch.Tensor) -> EvalReport:
    """Predictions over the test set (memoised per model, so pass the same test set every time)."""
    with _LOCK:
        report = _REPORTS.get(model)
    if report is not None:
        return report
    probabilities = predict(inference_copy(model), images).numpy().astype(np.float32)
    predicted = probabilities.argmax(axis=1)
    truth = labels.numpy().astype(np.int64)
    report = EvalReport(probabilities, predicted, truth, confusion_matrix(truth, predicted))
    with _LOCK:
        _REPORTS[model] = report
    return report


def mistakes(report: EvalReport, limit: int = 24, true_digit: int | None = None) -> list[Mistake]:
    """The misclassified test images, most confident mistakes first (optionally of one true digit only)."""
    wrong = np.nonzero(report.predicted != report.labels)[0]
    if true_digit is not None:
        wrong = wrong[report.labels[wrong] == true_digit]
    confidence = report.probabilities[wrong, report.predicted[wrong]]
    order = np.argsort(-confidence, kind="stable")[:limit]
    return [
        Mistake(int(wrong[i]), int(report.labels[wrong[i]]), int(report.predicted[wrong[i]]), float(confidence[i]))
        for i in order
    ]


def mistake_tiles(
    report: EvalReport, images: torch.Tensor, limit: int, true_digit: int | None = None
) -> tuple[list[np.ndarray], list[str]]:
    """The mistakes() as a grid shows them: each test image (images is the test set) enlarged, and its caption."""
    wrong = mistakes(report, limit, true_digit)
    return [enlarge(images[m.index].numpy()) for m in wrong], [m.caption for m in wrong]


# -- feature maps ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureMaps:
    """The output of one conv block for one image."""

    name: str  # block name in the model, e.g. "conv1" or "trans1"
    maps: np.ndarray  # [channels, height, width] float32

    @property
    def caption(self) -> str:
        """The block's name and the shape of its output."""
        channels, height, width = self.maps.shape
        return f"{self.name}: {channels} channels of {height}x{width}"


def feature_maps(model: Net, image: np.ndarray | torch.Tensor) -> list[FeatureMaps]:
    """Each conv block's output channels for one uint8 28x28 digit, captured by forward hooks on an inference copy."""
    copy = inference_copy(model)
    captured: dict[str, torch.Tensor] = {}
    x = normalize(to_input(torch.as_tensor(np.asarray(image, dtype=np.uint8)).unsqueeze(0)))
    with _HOOKS:
        hooks = [
            block.register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out))
            for name, block in copy.features.named_children()
            if name.startswith(("conv", "trans"))
        ]
        try:
            with torch.inference_mode():
                copy(x)
        finally:
            for hook in hooks:
                hook.remove()
    return [FeatureMaps(name, out[0].float().numpy().copy()) for name, out in captured.items()]


def tile_maps(maps: np.ndarray, columns: int = 8, tile_px: int = 72, gap: int = 2) -> np.ndarray:
    """Channels [C, H, W] as one uint8 grid image: each channel stretched to its own min..max, bright = strong."""
    channels, height, width = maps.shape
    scale = max(1, tile_px // max(height, width))
    columns = min(columns, channels)
    rows = math.ceil(channels / columns)
    grid = np.full((rows * (height * scale + gap) - gap, columns * (width * scale + gap) - gap), BACKGROUND, np.uint8)
    for channel in range(channels):
        values = maps[channel]
        low, high = float(values.min()), float(values.max())
        # A channel that is flat for this image (often a dead ReLU) is drawn black rather than noise-stretched.
        scaled = (values - low) / (high - low) if high - low > 1e-6 else np.zeros_like(values)
        tile = np.kron(np.round(scaled * 255).astype(np.uint8), np.ones((scale, scale), np.uint8))
        top, left = (channel // columns) * (height * scale + gap), (channel % columns) * (width * scale + gap)
        grid[top : top + height * scale, left : left + width * scale] = tile
    return grid


def enlarge(image: np.ndarray, factor: int = 3) -> np.ndarray:
    """A small image blown up with hard pixel edges (browsers would blur it when scaling)."""
    return np.kron(np.asarray(image, dtype=np.uint8), np.ones((factor, factor), np.uint8))


def predict_digit(model: Net, image: np.ndarray) -> np.ndarray:
    """Class probabilities [10] for one uint8 28x28 digit."""
    return predict(inference_copy(model), torch.as_tensor(np.asarray(image, dtype=np.uint8)).unsqueeze(0))[0].numpy()


def reading_text(probabilities: np.ndarray) -> str:
    """How the model reads a digit, given its class probabilities."""
    return f"The model reads **{int(probabilities.argmax())}** ({probabilities.max():.1%} sure)."


# -- a student's own digit -------------------------------------------------------------------------------------
def drawn_digit(drawing: str | None) -> np.ndarray:
    """The drawing canvas's value -> a uint8 28x28 digit, prepared as an upload is (so both read alike).

    The value is a PNG data URL of white strokes on black, or None while nothing is drawn; it comes from the
    browser, so anything else is refused with a message, never an exception of another kind.
    """
    if drawing is None:
        raise UploadError(NOTHING_DRAWN)
    if not isinstance(drawing, str) or not drawing.startswith(DRAWING_PREFIX):
        raise UploadError(UNREADABLE_DRAWING)
    try:
        gray = _decode(base64.b64decode(drawing[len(DRAWING_PREFIX) :], validate=True))
    except ValueError:  # bad base64, or an UploadError about a file, which would puzzle someone who drew
        raise UploadError(UNREADABLE_DRAWING) from None
    if gray.max() < INK_THRESHOLD:  # every stroke taken back, or Clear pressed
        raise UploadError(NOTHING_DRAWN)
    return mnist_like(gray)


def prepare_upload(raw: bytes) -> np.ndarray:
    """An uploaded PNG/JPEG of a handwritten digit -> a uint8 28x28 image prepared the way MNIST's digits were."""
    gray = _decode(raw)
    return mnist_like(gray)


def _decode(raw: bytes) -> np.ndarray:
    """Decode an upload into grayscale floats in [0, 1] (H, W), checking size before any pixel is decoded."""
    if not raw:
        raise UploadError("The file is empty.")
    if len(raw) > MAX_UPLOAD_BYTES:
        raise UploadError(
            f"The file is {len(raw) / 2**20:.1f} MB; upload an image of at most {MAX_UPLOAD_BYTES // 2**20} MB."
        )
    try:
        # open() reads only the header; pixels are decoded by load(), after the size checks below.
        image = Image.open(io.BytesIO(raw), formats=UPLOAD_FORMATS)
    except Image.DecompressionBombError:
        raise UploadError(
            f"The image is far too large; use one of at most {MAX_UPLOAD_SIDE}x{MAX_UPLOAD_SIDE} pixels."
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise UploadError("The file is not a PNG or JPEG image that can be read.") from None
    with image:
        width, height = image.size
        if width < 1 or height < 1:
            raise UploadError(f"The image is {width}x{height} pixels: it has nothing in it.")
        if width > MAX_UPLOAD_SIDE or height > MAX_UPLOAD_SIDE:
            raise UploadError(
                f"The image is {width}x{height} pixels; use one of at most {MAX_UPLOAD_SIDE} pixels "
                "a side (a digit needs only a few hundred)."
            )
        if getattr(image, "n_frames", 1) > 1:
            raise UploadError("The image is animated; upload a single still image of one digit.")
        try:
            image.load()
            image = ImageOps.exif_transpose(image)  # phone photos are often stored sideways with a rotate tag
            return _to_gray(image)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            raise UploadError(f"The image could not be decoded ({error}); is the file complete?") from None


def _to_gray(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> grayscale floats in [0, 1]; transparent pixels count as white paper."""
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
    if has_alpha:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image.convert("RGBA"))
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        # High-bit-depth grey: keep every level; the range is normalised from the pixels themselves later.
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 1.0)
        return np.clip(values / top, 0.0, 1.0)
    return np.asarray(image.convert("L"), dtype=np.float64) / 255.0


def mnist_like(gray: np.ndarray) -> np.ndarray:
    """Grayscale [0, 1] (any size, any polarity) -> uint8 28x28: white digit on black, fitted to 20x20, mass-centred."""
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if np.median(border) > 0.5:
        gray = 1.0 - gray  # dark ink on light paper: MNIST is the other way round
        border = 1.0 - border
    # Lift the paper's own grey (and any shading) to black, then stretch the ink to full white as MNIST's is.
    ink = np.clip(gray - np.median(border), 0.0, None)
    peak = float(ink.max())
    if peak < 0.1:
        raise UploadError(
            "No digit found: the image is (nearly) one flat colour. Write a dark digit on light paper "
            "or a light digit on a dark background."
        )
    ink = ink / peak
    ink[ink < INK_THRESHOLD] = 0.0
    rows, cols = np.nonzero(ink)
    ink = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    height, width = ink.shape
    fit = DIGIT_BOX / max(height, width)
    size = (max(1, round(width * fit)), max(1, round(height * fit)))
    box = np.asarray(Image.fromarray(ink.astype(np.float32)).resize(size, RESAMPLE))
    box = np.clip(box, 0.0, 1.0)
    canvas = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float64)
    mass = box.sum()
    centre_row = (box.sum(axis=1) @ np.arange(box.shape[0])) / mass
    centre_col = (box.sum(axis=0) @ np.arange(box.shape[1])) / mass
    middle = IMAGE_SIZE / 2  # measured on MNIST's test set: the mean centre of mass is at (14.0, 14.0)
    top = int(np.clip(round(middle - centre_row), 0, IMAGE_SIZE - box.shape[0]))
    left = int(np.clip(round(middle - centre_col), 0, IMAGE_SIZE - box.shape[1]))
    canvas[top : top + box.shape[0], left : left + box.shape[1]] = box
    return np.round(canvas * 255).astype(np.uint8)
