"""The recorded-runs pack: the lesson's steps trained once, shipped with the app, and served at once on any server.

A fresh Cloud container has an empty run store, so without the pack the first student on each step would wait
minutes for a full run. The pack lives in drill/pack/: per run a JSON file (the run as Compare exports it, its
batch losses, where and when it was recorded, and its probe) and a weights file (raw tensor bytes behind a JSON
header, the store's format: nothing is unpickled); manifest.json lists both files of every run with their sha256.

Which code made a run is decided by what the code computes, not by a version number someone must remember to
bump: each run keeps a probe, taken from the recording itself,
  - the loss of its first PROBE_BATCHES training batches (initialisation, data order, augmentation, forward,
    backward and the optimizer's first steps all feed it),
  - the learning rate at the start of every epoch (the schedule, replayed over the run's own test losses),
  - how many of the first PROBE_IMAGES test images its final weights classify right (the network's definition),
and verify() computes all three again with the code at hand. Rounding differs between CPUs and thread counts by
parts in a million, so the losses get a relative tolerance of PROBE_TOLERANCE and the count PROBE_FLIPS images; a
change to what a config computes moves them far more. A run whose probe differs is not served, and `python -m drill
record` makes it again. What the probe cannot see (a change that first shows after the third batch and is not in
the schedule or the network) is what the pack's own test is for: it replays a recorded run's first epoch.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import hashlib
import json
import logging
import math
import os
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from drill.config import RunConfig
from drill.data import Mnist
from drill.model import build_model
from drill.run_record import RecordError, RunRecord, Status
from drill.store import RunRow, RunStore, pack_weights, unpack_weights
from drill.train import Schedule, batches_per_epoch, make_optimizer, predict, train

log = logging.getLogger(__name__)

PACK_DIR = Path(__file__).resolve().parent / "pack"
MANIFEST = "manifest.json"
FORMAT = 1
PROBE_BATCHES = 3
PROBE_IMAGES = 1000
PROBE_TOLERANCE = 1e-3
PROBE_FLIPS = 2
MAX_BATCH_POINTS = 2000  # the store keeps at most this many per run too (drill.jobs)
MAX_PACK_BYTES = 8 * 2**20  # a few MB in git: the lesson's small networks take ~60 KB a run, the skeleton ~560 KB


def default_dir() -> Path | None:
    """$DRILL_PACK (a folder; "off" serves no recorded runs), else the pack shipped in drill/pack/."""
    setting = os.environ.get("DRILL_PACK", "")
    if setting == "off":
        return None
    return Path(setting) if setting else PACK_DIR


class PackError(ValueError):
    """A pack, or one run of it, that can't be used; the message says which file and what is wrong."""


@dataclass(frozen=True)
class RecordedRun:
    """One run of the pack, read and checked."""

    name: str  # e.g. "final-seed2": the file names' stem
    record: RunRecord  # a finished run, labelled with its step's title
    batch_losses: list[tuple[float, float]]
    recorded: dict  # date, machine, torch, threads, seconds
    probe: dict  # first_losses, correct
    weights: dict[str, torch.Tensor]
    digest: str  # sha256 of its JSON file: what tells one recording from another

    @property
    def config(self) -> RunConfig:
        return self.record.config

    @property
    def provenance(self) -> str:
        """Where it came from, in the words the Train page shows."""
        r, seconds = self.recorded, self.recorded["seconds"]
        took = f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
        return f"recorded on {r['date']} on {r['machine']} ({took} of training)"


def machine_name() -> str:
    """The CPU's model name and core count (from /proc/cpuinfo; the platform's name elsewhere)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores"


# -- making a pack ------------------------------------------------------------------------------------------------
def record(config: RunConfig, data: Mnist, name: str, label: str, threads: int = 1) -> RecordedRun:
    """Train config to the end for real and keep what the pack needs of it (PackError if it did not finish)."""
    losses: list[tuple[float, float]] = []

    def on_event(event: str, payload: dict) -> None:
        if event == "batch":
            losses.append((payload["epoch"] - 1 + payload["batch"] / payload["batches"], payload["loss"]))

    result = train(config, data, on_event, threads=threads)
    if result.status != Status.FINISHED:
        raise PackError(f"{name} did not finish, so it is not recorded: {result.status}, {result.reason}")
    recorded = {
        "date": datetime.date.today().isoformat(),
        "machine": machine_name(),
        "torch": torch.__version__,
        "threads": threads,
        "seconds": round(result.seconds, 1),
    }
    probe = {"first_losses": [loss for _, loss in losses[:PROBE_BATCHES]], "correct": _correct(result.model, data)}
    kept = losses[:: math.ceil(len(losses) / MAX_BATCH_POINTS)]
    weights = {name_: tensor.detach().clone() for name_, tensor in result.model.state_dict().items()}
    return RecordedRun(
        name=name,
        record=result.record(label),
        batch_losses=kept,
        recorded=recorded,
        probe=probe,
        weights=weights,
        digest="",
    )


def write(run: RecordedRun, directory: Path = PACK_DIR) -> None:
    """Add (or replace) one run in a pack and rewrite its manifest; several `record`s may write one pack at once."""
    directory.mkdir(parents=True, exist_ok=True)
    body = {
        "format": FORMAT,
        "record": run.record.to_dict(),
        "batch_losses": run.batch_losses,
        "recorded": run.recorded,
        "probe": run.probe,
    }
    with open(directory / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        (directory / f"{run.name}.json").write_text(json.dumps(body, indent=1) + "\n")
        (directory / f"{run.name}.weights").write_bytes(pack_weights(run.weights))
        manifest = _read_manifest(directory) if (directory / MANIFEST).exists() else {"format": FORMAT, "runs": {}}
        manifest["runs"][run.name] = {kind: _sha256(directory / f"{run.name}.{kind}") for kind in ("json", "weights")}
        manifest["runs"] = dict(sorted(manifest["runs"].items()))
        (directory / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


# -- reading and checking a pack ----------------------------------------------------------------------------------
def read(directory: Path = PACK_DIR) -> tuple[list[RecordedRun], list[str]]:
    """The pack's runs whose files match the manifest and hold valid runs, and a line for each one that does not.

    A pack with no manifest is an empty pack (a checkout without one); a manifest that can't be read gives no runs.
    """
    if not (directory / MANIFEST).exists():
        return [], []
    try:
        manifest = _read_manifest(directory)
    except PackError as error:
        return [], [str(error)]
    runs, problems = [], []
    for name, digests in manifest["runs"].items():
        try:
            runs.append(_read_run(directory, name, digests))
        except PackError as error:
            problems.append(str(error))
    return runs, problems


def _read_manifest(directory: Path) -> dict:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError) as error:
        raise PackError(f"the pack's {MANIFEST} can't be read ({error})") from None
    runs = manifest.get("runs") if isinstance(manifest, dict) else None
    if not isinstance(runs, dict) or manifest.get("format") != FORMAT:
        raise PackError(f"the pack's {MANIFEST} is not a format-{FORMAT} manifest")
    for name, digests in runs.items():
        if not (isinstance(name, str) and name.replace("-", "").isalnum() and isinstance(digests, dict)):
            raise PackError(f"the pack's {MANIFEST} lists {name!r}, which is not a run's name")
    return manifest


def _read_run(directory: Path, name: str, digests: dict) -> RecordedRun:
    files = {kind: directory / f"{name}.{kind}" for kind in ("json", "weights")}
    for kind, path in files.items():
        if not path.exists():
            raise PackError(f"{path.name} is missing from the pack")
        if _sha256(path) != digests.get(kind):
            raise PackError(f"{path.name} does not match the pack's manifest (edited or damaged): it is not served")
    try:
        body = json.loads(files["json"].read_text())
        if body.get("format") != FORMAT:
            raise PackError(f"{name}.json is not a format-{FORMAT} recorded run")
        record_ = RunRecord.from_dict(body["record"])
        losses = [(float(position), float(loss)) for position, loss in body["batch_losses"]]
        recorded, probe = body["recorded"], body["probe"]
        first = [float(loss) for loss in probe["first_losses"]]
        probe = {"first_losses": first, "correct": int(probe["correct"])}
        recorded = {key: str(recorded[key]) for key in ("date", "machine", "torch")} | {
            "threads": int(recorded["threads"]),
            "seconds": float(recorded["seconds"]),
        }
        weights = unpack_weights(files["weights"].read_bytes())
    except RecordError as error:
        raise PackError(f"{name}.json: {error}") from None
    except Exception as error:  # noqa: BLE001 - whatever is wrong with a run's files, that run is skipped, never the app
        raise PackError(f"{name}: not a recorded run ({type(error).__name__}: {error})") from None
    if record_.status != Status.FINISHED:
        raise PackError(f"{name}.json: only finished runs are recorded, this one is {record_.status}")
    return RecordedRun(
        name=name,
        record=record_,
        batch_losses=losses,
        recorded=recorded,
        probe=probe,
        weights=weights,
        digest=digests["json"],
    )


def verify(run: RecordedRun, data: Mnist, threads: int = 1) -> str | None:
    """None when today's code computes what the recording did (the probe, see above); else why not."""
    config = run.config
    model = build_model(config.model)
    try:
        model.load_state_dict(run.weights)
    except RuntimeError:
        return "its weights do not fit today's network of its config"
    if abs(_correct(model, data) - run.probe["correct"]) > PROBE_FLIPS:
        return f"today's network classifies the first {PROBE_IMAGES} test images differently with its weights"
    expected = [epoch.lr for epoch in run.record.epochs]
    if not all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(_epoch_rates(run, data), expected, strict=True)):
        return "today's LR schedule gives other learning rates for its epochs"
    first = _first_losses(config, data, threads)
    if len(first) != len(run.probe["first_losses"]) or not all(
        math.isclose(a, b, rel_tol=PROBE_TOLERANCE) for a, b in zip(first, run.probe["first_losses"], strict=True)
    ):
        return f"today's code trains its first {PROBE_BATCHES} batches to other losses"
    return None


def _correct(model, data: Mnist) -> int:
    scores = predict(model, data.test_images[:PROBE_IMAGES])
    return int((scores.argmax(1) == data.test_labels[:PROBE_IMAGES]).sum())


def _epoch_rates(run: RecordedRun, data: Mnist) -> list[float]:
    """The learning rate at the start of each epoch, by today's schedule code, fed the run's own test losses."""
    tc = run.config.train
    steps = batches_per_epoch(tc, len(data.train_labels))
    parameter = torch.zeros(1, requires_grad=True)
    optimizer = make_optimizer([parameter], tc)
    schedule = Schedule(optimizer, tc, steps)
    rates = []
    for epoch in run.record.epochs:
        rates.append(schedule.lr)
        for _ in range(steps):
            optimizer.step()
            schedule.after_batch()
        schedule.after_epoch(epoch.test_loss)
    return rates


def _first_losses(config: RunConfig, data: Mnist, threads: int) -> list[float]:
    """The loss of a run's first PROBE_BATCHES batches, trained now (then stopped)."""
    losses: list[float] = []
    stop = threading.Event()

    def on_event(event: str, payload: dict) -> None:
        if event == "batch":
            losses.append(payload["loss"])
            if len(losses) == PROBE_BATCHES:
                stop.set()

    train(config, data, on_event, stop, threads=threads)
    return losses


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def size(directory: Path = PACK_DIR) -> int:
    """Bytes the pack's files take."""
    return sum(path.stat().st_size for path in directory.glob("*") if path.is_file() and path.name != ".lock")


class Shelf:
    """The pack as a server serves it: read at once, so every recorded run's provenance is known from the start;
    checked run by run in a thread of its own (each check trains a few batches); each run that passes is put into
    the store, where the job manager serves it to a student asking for its config."""

    def __init__(
        self,
        directory: Path,
        data: Callable[[], Mnist],
        store: RunStore,
        key: Callable[[RunConfig], str],
    ):
        self.runs, self._problems = read(directory)
        self.provenance = {_run_id(run): run.provenance for run in self.runs}
        self._ready: dict[str, str] = {}  # config key -> run id, once checked
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self.checked = threading.Event()
        for problem in self._problems:
            log.warning("recorded runs: %s", problem)
        self._thread = threading.Thread(target=self._check, args=(data, store, key), name="drill-pack", daemon=True)
        self._thread.start()

    def served(self, key: str) -> str | None:
        """The id of the checked recorded run for a config key, if the pack has one."""
        with self._lock:
            return self._ready.get(key)

    def problems(self) -> list[str]:
        """A line for each recorded run that is not served, and why."""
        with self._lock:
            return list(self._problems)

    def ready_count(self) -> int:
        with self._lock:
            return len(self._ready)

    def close(self, timeout: float = 30.0) -> None:
        """Stop checking (a check under way ends within its few batches) before the store closes."""
        self._closing.set()
        self._thread.join(timeout)

    def _check(self, data: Callable[[], Mnist], store: RunStore, key: Callable[[RunConfig], str]) -> None:
        torch.set_num_threads(1)  # the class's runs come first: a check is a few batches, one thread is plenty
        try:
            mnist = data() if self.runs else None
        except Exception as error:  # noqa: BLE001 - whatever keeps MNIST away, the pack waits for it; runs still train
            self._problem(f"recorded runs are not served: MNIST can't be loaded to check them ({error})")
            mnist = None
        for run in self.runs if mnist is not None else ():
            if self._closing.is_set():
                break
            try:
                why = verify(run, mnist)
            except Exception as error:  # noqa: BLE001 - one run that can't be checked must not stop the others
                log.exception("recorded run %s could not be checked", run.name)
                why = f"it could not be checked ({type(error).__name__}: {error})"
            if why:
                self._problem(
                    f"{run.name} is not served: {why}, so it was made by code that computes something else; "
                    "`python -m drill record` records it again"
                )
                continue
            if self._closing.is_set():
                break
            store.save_run(_row(run, key(run.config)), run.weights)
            with self._lock:
                self._ready[key(run.config)] = _run_id(run)
        self.checked.set()

    def _problem(self, text: str) -> None:
        log.warning("recorded runs: %s", text)
        with self._lock:
            self._problems.append(text)


def _run_id(run: RecordedRun) -> str:
    """A recorded run's id in the store: the same recording keeps its id across restarts, a new one gets its own."""
    return f"recorded-{run.digest[:16]}"


def _row(run: RecordedRun, key: str) -> RunRow:
    return RunRow(
        id=_run_id(run),
        key=key,
        source="recorded",
        record=dataclasses.replace(run.record, label=""),  # a label is a ticket's, never the store's
        batch_losses=run.batch_losses,
        created=time.time(),
    )
