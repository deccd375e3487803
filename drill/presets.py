"""The drill-down's steps, as the seed write-ups tell them: each with its Target, what changed and the band reported;
and what this lab's own runs of each step gave, read from the run files in results/."""

from __future__ import annotations

import dataclasses
import functools
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from drill import gallery
from drill.analysis import LAST_K, OVERFIT_GAP, TARGET_ACC, Verdict, analyse
from drill.config import AugmentConfig, ModelConfig, RunConfig, TrainConfig
from drill.run_record import RunRecord

RESULTS = Path(__file__).resolve().parent.parent / "results"


@dataclass(frozen=True)
class Preset:
    """One step of the lesson."""

    name: str  # short id used in URLs and on the command line
    title: str
    target: str  # the step's Target, as a student would write it
    change: str  # what changes from the previous step
    config: RunConfig
    seed_band: str  # what the seed write-ups report for this step
    step: int  # position in the lesson; 0 for presets outside it
    short: str  # the step as a person names a run of it: "Final #2, seed 1"

    @property
    def menu_name(self) -> str:
        """The preset in a narrow menu (the sidebar's), where the title is cut off: "5. Final"."""
        return f"{self.step}. {self.short}" if self.step else self.short

    @property
    def measured(self) -> str:
        """What this lab's own runs of the step gave: the recorded-runs pack's, else results/'s (see measured())."""
        return measured(self.name)


_SGD = TrainConfig(epochs=15, batch_size=128, optimizer="sgd", lr=0.01, momentum=0.9)
_LEAN = ModelConfig(layers="8,12,M,12,16,M", head="fc")
_BN = ModelConfig(layers=_LEAN.layers, head="fc", batch_norm="before_relu")
_REGULARISED = ModelConfig(layers=_LEAN.layers, head="fc", batch_norm="before_relu", dropout=0.05)
_ROTATE = AugmentConfig(rotation=7.0)
# A small random shift on top of the rotation, and batches of 64 (twice the steps): measured to hold >= 99.4% in each
# of the last 4 epochs for 3 of 3 seeds, where rotation alone at batch 128 held it for 1 of 3 (results/).
_ROTATE_SHIFT = AugmentConfig(rotation=7.0, translate=0.05)
# Dropout eased to 0.02: at 0.05 on top of rotation this small network trained below its test accuracy all run long.
_FINAL = ModelConfig(layers="10,10,16,M,T10,10,16,16", head="gap_conv", batch_norm="before_relu", dropout=0.02)
# The smallest network measured to hold the bar for 3 of 3 seeds: the final step with 14 channels where it has 16.
# Smaller ones missed it by 0.01-0.11 points (results/stretch-attempts/).
_STRETCH = dataclasses.replace(_FINAL, layers="10,10,14,M,T10,10,14,14")
_ONECYCLE = TrainConfig(
    epochs=15, batch_size=64, optimizer="sgd", lr=0.01, momentum=0.9, schedule="onecycle", max_lr=0.1, pct_start=0.2
)

PRESETS: tuple[Preset, ...] = (
    Preset(
        "skeleton",
        "1. The heavy skeleton",
        "Get the set-up right: data, transforms, a working train/test loop and a network that learns.",
        "Wide convolutions and a fully connected head; no batch norm, dropout, augmentation or schedule.",
        RunConfig(ModelConfig(layers="32p,64p,M,128,M", head="fc", bias=True), AugmentConfig(), _SGD),
        "147k-6.4M parameters, 99.0-99.3% test; train accuracy far above test (99.8-99.9%)",
        1,
        "Skeleton",
    ),
    Preset(
        "lean",
        "2. A lean skeleton",
        "Strip the network to fit the 8,000-parameter budget and see what it costs.",
        "Channels cut to 8-16, two max-pools; still a fully connected head.",
        RunConfig(_LEAN, AugmentConfig(), _SGD),
        "4.6k-7.7k parameters, 98.2-98.3% test",
        2,
        "Lean",
    ),
    Preset(
        "batchnorm",
        "3. + Batch norm",
        "Lift accuracy with the same few parameters: normalise every conv's output.",
        "Batch norm after every convolution, before its ReLU.",
        RunConfig(_BN, AugmentConfig(), _SGD),
        "about 99.2% test, and the model overfits (train 99.5-99.6%)",
        3,
        "Batch norm",
    ),
    Preset(
        "regularised",
        "4. + Dropout and augmentation",
        "Close the train/test gap: regularise with dropout and random rotation.",
        "Dropout 0.05 after every conv block; training images rotated by up to +-7 degrees.",
        RunConfig(_REGULARISED, _ROTATE, _SGD),
        "99.2-99.4% test, reached once, not consistently; the train/test gap closes",
        4,
        "Regularised",
    ),
    Preset(
        "final",
        "5. + GAP, 1x1 transitions and OneCycleLR",
        "Under 8,000 parameters, >= 99.4% test in each of the last epochs, within 15 epochs.",
        "Deeper stack with a 1x1 transition after the max-pool, a GAP + 1x1 conv head instead of the FC layer, "
        "a OneCycleLR schedule peaking at 0.1 over batches of 64, dropout eased to 0.02 (at 0.05 the network "
        "underfits), and a random shift of up to 5% on top of the rotation.",
        RunConfig(_FINAL, _ROTATE_SHIFT, _ONECYCLE),
        "6,750-8,172 parameters; 99.4-99.57% in the last epochs with OneCycleLR",
        5,
        "Final",
    ),
    Preset(
        "stretch",
        "6. Stretch: fewer parameters",
        "The same bar (>= 99.4% in each of the last epochs, 15 epochs) with as few parameters as hold it; the "
        "aim was 5,000.",
        "The final step's recipe with 14 channels where it has 16: 6,618 parameters.",
        RunConfig(_STRETCH, _ROTATE_SHIFT, _ONECYCLE),
        "6,750 parameters is the smallest in the write-ups (99.50% best, 99.4% in 5 of its last 6 epochs)",
        6,
        "Stretch",
    ),
    Preset(
        "quick",
        "Quick demo",
        "See a curve within seconds: the final network on 6,000 images for 3 epochs.",
        "The final step's network, trained on a stratified 10% of the training set.",
        RunConfig(_FINAL, _ROTATE, dataclasses.replace(_ONECYCLE, epochs=3, subset=6000)),
        "a demo, not a step: about 97-98% after 3 short epochs",
        0,
        "Quick demo",
    ),
)

BY_NAME = {preset.name: preset for preset in PRESETS}
BY_TITLE = {preset.title: preset for preset in PRESETS}
EDITED = " (edited)"
LESSON = tuple(preset for preset in PRESETS if preset.step)


def get_preset(name: str) -> Preset:
    """The preset with this name; KeyError lists the names there are."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no preset {name!r}; the presets are: {', '.join(BY_NAME)}") from None


def matching_preset(cfg: RunConfig) -> str | None:
    """The name of the preset this config is (seed and threads aside), if any."""
    for preset in PRESETS:
        if preset.config.replace(train={"seed": cfg.train.seed, "threads": cfg.train.threads}) == cfg:
            return preset.name
    return None


def preset_of(run) -> Preset | None:
    """The preset a run's config is (anything with a .config), if any: its Step and Target come from it."""
    return BY_NAME.get(matching_preset(run.config) or "")


# The runs behind each preset's measured text: files that `train --out` or `consistency --out` wrote into results/.
MEASURED_RUNS = {
    "skeleton": ("skeleton.json",),
    "lean": ("lean.json",),
    "batchnorm": ("batchnorm.json",),
    "regularised": ("regularised.json",),
    "final": ("final-seed1.json", "final-seed2.json", "final-seed3.json"),
    "stretch": ("stretch-attempts/6618.json",),
    "quick": ("quick.json",),
}
# The smaller networks tried for the stretch step, which its text sets against it.
STRETCH_ATTEMPTS = "stretch-attempts"


class _Unreadable(Exception):
    """A results file that is missing or does not hold this preset's runs; the message says which and why."""


@dataclass(frozen=True)
class _Run:
    """One run as a results file holds it, with the verdict on its epochs."""

    config: RunConfig
    params: int
    verdict: Verdict
    test_accs: tuple[float, ...]

    @classmethod
    def of(cls, record: RunRecord) -> _Run:
        """A run from its record, as `train --out` and the pack keep it."""
        return cls(
            config=record.config,
            params=record.params,
            verdict=analyse(record.epochs, record.params),
            test_accs=tuple(epoch.test_acc for epoch in record.epochs),
        )


def _runs_in(results: Path, file: str) -> list[_Run]:
    """The runs a results file holds (one `train --out` run, or the list `consistency --out` writes)."""
    try:
        data = json.loads((results / file).read_text())
        records = data["runs"] if isinstance(data, dict) and "runs" in data else [data]
        return [_Run.of(RunRecord.from_dict(record, index)) for index, record in enumerate(records, start=1)]
    except FileNotFoundError:
        raise _Unreadable(f"results/{file} is missing") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise _Unreadable(f"results/{file} could not be read ({error})") from None


@functools.cache
def measured(name: str, results: Path = RESULTS, pack_dir: Path | None = None) -> str:
    """What the preset's runs gave, in a line: those of the recorded-runs pack (the server's, or pack_dir) or those in
    results/, whichever holds more seeds of it (the pack when even); says so when a file is missing or holds
    another config.

    Read on first use and kept, so the text always matches the files and costs a page nothing.
    """
    from drill import pack  # here: the pack reads runs as drill.records does, which imports this module

    files = MEASURED_RUNS.get(name, ())
    runs, source, problem = [], ", ".join(f"results/{file}" for file in files), "no runs of it in results/"
    try:
        for file in files:
            found = _runs_in(results, file)
            if any(matching_preset(run.config) != name for run in found):
                raise _Unreadable(f"results/{file} holds runs of another config: train the step again to measure it")
            runs += found
    except _Unreadable as error:
        runs, problem = [], str(error)
    directory = pack_dir or pack.default_dir()
    recorded = [run for run in _pack_runs(directory) if matching_preset(run.config) == name]
    if recorded and len(recorded) >= len(runs):
        recorded.sort(key=lambda run: run.config.train.seed)
        runs, source = [_Run.of(run.record) for run in recorded], f"the recorded-runs pack, {recorded[0].provenance}"
    if not runs:
        return f"not measured: {problem}"
    text = _describe(runs)
    if name == "stretch":
        text += "; " + _smaller(results, runs[0].params)
    return f"{text} ({source})"


@functools.cache
def _pack_runs(directory: Path | None) -> list:
    """A pack's runs, read once for every step's band (no pack: none)."""
    from drill import pack

    return pack.read(directory)[0] if directory is not None else []


def _describe(runs: list[_Run]) -> str:
    """A step's runs in numbers: one seed's best, gap and last epochs; or how many seeds hold the bar."""
    seeds = ", ".join(str(run.config.train.seed) for run in runs)
    if len(runs) > 1:
        held = sum(run.verdict.consistent for run in runs)
        spans = " / ".join(f"{min(run.verdict.last_k):.2f}-{max(run.verdict.last_k):.2f}" for run in runs)
        mean = statistics.mean(run.verdict.last_test for run in runs)
        return (
            f"{held} of {len(runs)} seeds hold >= {TARGET_ACC}% in each of the last {LAST_K} epochs "
            f"({spans}%, seeds {seeds}); mean last epoch {mean:.2f}%"
        )
    (run,) = runs
    verdict = run.verdict
    if not verdict.last_k:
        accuracies = " / ".join(f"{acc:.2f}" for acc in run.test_accs)
        return f"{accuracies}% test after epochs 1-{verdict.epochs_run} (seed {seeds})"
    gap = "overfits" if verdict.gap > OVERFIT_GAP else "no overfitting"
    hits = sum(acc >= TARGET_ACC for acc in verdict.last_k)
    return (
        f"best {verdict.best_test:.2f}% test, train {verdict.best_train:.2f}%: {gap}; last {LAST_K} epochs "
        f"{min(verdict.last_k):.2f}-{max(verdict.last_k):.2f}%, {hits} of them >= {TARGET_ACC}% (seed {seeds})"
    )


def _smaller(results: Path, params: int) -> str:
    """How many seeds held the bar for each smaller network tried (the best of its configs), largest first."""
    held: dict[int, dict[str, list[bool]]] = {}
    for path in sorted((results / STRETCH_ATTEMPTS).glob("*.json")):
        for run in _runs_in(results, f"{STRETCH_ATTEMPTS}/{path.name}"):
            if run.params < params:
                config = run.config.replace(train={"seed": 1, "threads": 0}).to_query()
                held.setdefault(run.params, {}).setdefault(config, []).append(run.verdict.consistent)
    if not held:
        return f"no smaller network in results/{STRETCH_ATTEMPTS}/"
    parts = []
    for number, (size, configs) in enumerate(sorted(held.items(), reverse=True)):
        passed, seeds = max((sum(seeds), len(seeds)) for seeds in configs.values())
        unit = " parameters" if number == 0 else ""
        parts.append(f"{size:,}{unit} {'at best ' if len(configs) > 1 else ''}{passed} of {seeds}")
    return f"seeds that held it with fewer parameters: {', '.join(parts)}"


def run_label(cfg: RunConfig, base: str | None) -> str:
    """The label a run starts with: its preset's (or write-up network's) title, else that of the preset it was
    edited from (the sidebar's base), marked edited; "custom" only for a config from nowhere (an imported one)."""
    name = matching_preset(cfg)
    if name:
        return BY_NAME[name].title
    if network := gallery.matching(cfg):
        return network.title
    return BY_NAME[base].title + EDITED if base in BY_NAME else "custom"
