"""What a run is, as every part of the app passes it: its Status, one typed Epoch per finished epoch, and its
RunRecord (config, status, reason, parameters, training seconds, epochs and label).

A record read from outside this process (a student's JSON file, the recorded-runs pack, the run store, a
checkpoint's bytes) goes through the one validator here, RunRecord.from_dict (Epoch.from_dict for a bare epoch
list): every field is checked before anything is kept, and the error names the run and the field in words a student
can act on.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch

from drill.config import ConfigError, RunConfig, shorten
from drill.model import Net, count_params


class Status(StrEnum):
    """Where a run is; the values are what the run store and exported files hold."""

    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"  # a training that gave its slot up between epochs, to go on from its checkpoint (never stored)
    REPLAYING = "replaying"  # a recorded run's epochs arriving on the Train page again (never stored)
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"


ACTIVE = (Status.QUEUED, Status.RUNNING)
ENDED = (Status.FINISHED, Status.STOPPED, Status.FAILED)
STORED = ACTIVE + ENDED  # what a run store's row may say

MAX_LABEL_CHARS = 200
MAX_REASON_CHARS = 2000
MAX_SECONDS = 7 * 24 * 3600.0  # a week: more than any run on a shared class server takes


class RecordError(ValueError):
    """A record that cannot be used; the message names the run and the field, in words a student can act on."""


Fail = Callable[[str, str], ValueError]  # (field, problem) -> the error to raise, naming the run


@dataclass(frozen=True)
class Epoch:
    """One finished epoch's metrics."""

    epoch: int  # 1-based
    train_loss: float  # mean over the epoch's batches, as they trained
    train_acc: float  # % of the epoch's training images classified right, as they trained
    test_loss: float  # on the whole test set after the epoch
    test_acc: float  # %
    lr: float  # the learning rate at the start of the epoch
    seconds: float  # training time of the epoch (the test pass excluded)

    def to_dict(self) -> dict[str, float]:
        """This epoch as JSON holds it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str, fail: Fail) -> Epoch:
        """One epoch checked: exactly EPOCH_KEYS, each a number within EPOCH_BOUNDS; fail(field, problem) words the
        error, `where` (e.g. "epochs[3]") says which epoch."""
        if not isinstance(data, dict):
            raise fail(where, f"a JSON {kind(data)}, expected an object with {', '.join(EPOCH_KEYS)}")
        missing = [key for key in EPOCH_KEYS if key not in data]
        extra = sorted(set(data) - set(EPOCH_KEYS))
        if missing or extra:
            problem = f"missing {', '.join(missing)}" if missing else f"unknown key {shorten(extra[0], 40)!r}"
            raise fail(where, f"{problem}; an epoch record has exactly {', '.join(EPOCH_KEYS)}")
        for key, (low, high, whole) in EPOCH_BOUNDS.items():
            value = data[key]
            if not _number_in(value, low, high) or (whole and not float(value).is_integer()):
                wanted = "a whole number" if whole else "a number"
                raise fail(f"{where}.{key}", f"{shown(value)} is not {wanted} from {low:g} to {high:g}")
        return cls(**{key: int(data[key]) if EPOCH_BOUNDS[key][2] else float(data[key]) for key in EPOCH_KEYS})


EPOCH_KEYS = tuple(f.name for f in dataclasses.fields(Epoch))
# Sane (low, high, whole number) bounds per epoch value; losses are NLL / cross-entropy, so never negative.
EPOCH_BOUNDS = {
    "epoch": (1, 20, True),
    "train_loss": (0.0, 1e6, False),
    "train_acc": (0.0, 100.0, False),
    "test_loss": (0.0, 1e6, False),
    "test_acc": (0.0, 100.0, False),
    "lr": (0.0, 10.0, False),
    "seconds": (0.0, MAX_SECONDS, False),
}
assert set(EPOCH_BOUNDS) == set(EPOCH_KEYS), "every epoch value needs bounds"


def check_epochs(epochs: Any, config: RunConfig, fail: Fail) -> tuple[Epoch, ...]:
    """An epoch list checked: at most the config's epochs, numbered 1, 2, 3, ..., each one as Epoch.from_dict."""
    if not isinstance(epochs, list):
        raise fail("epochs", f"a JSON {kind(epochs)}, expected a list of epoch records")
    if len(epochs) > config.train.epochs:
        raise fail("epochs", f"{len(epochs)} epochs, but its config trains for {config.train.epochs}")
    clean = []
    for position, data in enumerate(epochs):
        epoch = Epoch.from_dict(data, f"epochs[{position}]", fail)
        if epoch.epoch != position + 1:
            raise fail(f"epochs[{position}].epoch", f"{epoch.epoch} out of order; epochs are numbered 1, 2, 3, ...")
        clean.append(epoch)
    return tuple(clean)


@dataclass(frozen=True)
class RunRecord:
    """A run's result as far as it got: what every page, file and table reads of a run."""

    config: RunConfig
    status: Status
    reason: str = ""  # why it stopped or failed; "" when it finished
    params: int | None = None  # the network's parameters; None for a run that ended before it was built
    seconds: float = 0.0  # training time
    epochs: tuple[Epoch, ...] = ()
    label: str = ""  # what the student called it (an exported run's step)

    @classmethod
    def of(cls, run: Any, label: str) -> RunRecord:
        """The record of anything that holds a run's fields (a training's result, a student's snapshot)."""
        return cls(
            config=run.config,
            status=run.status,
            reason=run.reason,
            params=run.params,
            seconds=run.seconds,
            epochs=tuple(run.epochs),
            label=label,
        )

    def to_dict(self) -> dict[str, Any]:
        """The record as a runs file holds it (the Compare page's export, `train --out`, the pack)."""
        return {
            "label": self.label,
            "config": self.config.to_dict(),
            "status": str(self.status),
            "reason": self.reason,
            "params": self.params,
            "seconds": round(self.seconds, 2),
            "epochs": [epoch.to_dict() for epoch in self.epochs],
        }

    @classmethod
    def from_dict(
        cls, data: Any, index: int = 1, statuses: tuple[Status, ...] = ENDED, count_params: bool = True
    ) -> RunRecord:
        """A record read from outside, checked field by field; `statuses` are those it may have (a file holds
        ended runs, the store also going ones). With count_params its parameters are counted from its config and
        must match what it claims: a student's file is not taken at its word, while the store's runs say what the
        network that trained them had. Raises RecordError naming the run (1-based index) and the field."""

        def fail(field: str, problem: str) -> RecordError:
            label = data.get("label") if isinstance(data, dict) else None
            named = f" ({shorten(label, 40)!r})" if isinstance(label, str) and label else ""
            return RecordError(f"Run {index}{named}, {field}: {problem}")

        if not isinstance(data, dict):
            raise fail("record", f"a JSON {kind(data)}, expected an object with the keys {', '.join(RECORD_KEYS)}")
        unknown = sorted(set(data) - set(RECORD_KEYS))
        if unknown:
            raise fail(shorten(unknown[0], 40), f"unknown key; a run record has only {', '.join(RECORD_KEYS)}")
        for key in ("config", "epochs"):
            if key not in data:
                raise fail(key, "missing")
        label = data.get("label", "")
        if not isinstance(label, str) or len(label) > MAX_LABEL_CHARS:
            raise fail("label", f"expected text of at most {MAX_LABEL_CHARS} characters")
        try:
            config = RunConfig.from_dict(data["config"])
        except ConfigError as error:
            raise fail("config", str(error)) from None
        except (TypeError, ValueError, RecursionError) as error:  # belt and braces: no odd value may escape
            raise fail("config", f"not a valid config ({shorten(str(error))})") from None
        status = data.get("status", Status.FINISHED)
        if status not in statuses:
            raise fail("status", f"{shown(status)} is not one of {', '.join(statuses)}")
        reason = data.get("reason", "")
        if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS:
            raise fail("reason", f"expected text of at most {MAX_REASON_CHARS} characters")
        seconds = data.get("seconds", 0.0)
        if not _number_in(seconds, 0.0, MAX_SECONDS):
            raise fail("seconds", f"{shown(seconds)} is not a number from 0 to {MAX_SECONDS:.0f}")
        claimed = params = data.get("params")
        if count_params:
            params = model_params(config)
            if claimed is not None and claimed != params:
                raise fail("params", f"{shown(claimed)} does not match its config, whose network has {params:,}")
        elif claimed is not None and (isinstance(claimed, float) or not _number_in(claimed, 0, math.inf)):
            raise fail("params", f"{shown(claimed)} is not a whole number of parameters")
        epochs = check_epochs(data["epochs"], config, fail)
        if status == Status.FINISHED and len(epochs) != config.train.epochs:
            raise fail(
                "epochs", f"a finished run has all {config.train.epochs} epochs of its config, this one {len(epochs)}"
            )
        return cls(
            config=config,
            status=Status(status),
            reason=reason,
            # A run that ended before its network was built has none to report; a record that leaves them out (a
            # file written by hand) gets its config's count.
            params=None if "params" in data and claimed is None and not epochs else params,
            seconds=float(seconds),
            epochs=epochs,
            label=label,
        )


RECORD_KEYS = ("label", "config", "status", "reason", "params", "seconds", "epochs")
assert set(RECORD_KEYS) == {f.name for f in dataclasses.fields(RunRecord)}, "every record field is in its files"


def model_params(config: RunConfig) -> int:
    """Parameters of a config's network, counted on the meta device (no memory, no initialisation)."""
    with torch.device("meta"):
        return count_params(Net(config.model))


def _number_in(value: Any, low: float, high: float) -> bool:
    """A JSON number (not a boolean), finite and within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    # Compare ints as ints: a 400-digit integer cannot even be converted to a float.
    return (isinstance(value, int) or math.isfinite(value)) and low <= value <= high


def kind(value: Any) -> str:
    """A value's JSON type in words."""
    return {dict: "object", list: "list", str: "string", bool: "true/false", type(None): "null"}.get(
        type(value), "number"
    )


def shown(value: Any) -> str:
    """A value as it was written in the file (text quoted), cut short."""
    return shorten(repr(value), 40)
