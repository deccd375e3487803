"""A config proven over seeds: the exercise's 99.4% "consistently shown in your last few epochs, and not a one-time
achievement", judged as `python -m drill consistency` judges it, for the app's "Prove it over seeds" (its seeds are
ordinary runs of the job manager, drill.jobs.JobManager.prove) and for the command line alike."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from drill.analysis import LAST_K, TARGET_ACC, analyse, plural
from drill.run_record import ACTIVE, Epoch, Status

MIN_SEEDS, MAX_SEEDS = 2, 5
DEFAULT_SEEDS = 3


def seeds(count: int) -> list[int]:
    """The seeds a proof of `count` seeds trains: 1 to count, the seeds the recorded-runs pack and classmates train
    too, so their runs are shared rather than trained again."""
    if isinstance(count, bool) or not isinstance(count, int) or not MIN_SEEDS <= count <= MAX_SEEDS:
        raise ValueError(f"Seeds {count!r} is not allowed: a proof trains {MIN_SEEDS} to {MAX_SEEDS} seeds")
    return list(range(1, count + 1))


@dataclass(frozen=True)
class Seed:
    """One seed's run of a proof, as far as it got."""

    seed: int
    status: Status
    reason: str
    params: int | None
    epochs: tuple[Epoch, ...]
    queue_position: int | None = None

    @classmethod
    def of(cls, run: Any) -> Seed:
        """A seed from anything with a run's fields (a RunRecord, a job manager Snapshot or Run)."""
        return cls(
            seed=run.config.train.seed,
            status=run.status,
            reason=run.reason,
            params=run.params,
            epochs=tuple(run.epochs),
            queue_position=getattr(run, "queue_position", None),
        )

    def held(self, k: int) -> bool:
        """Whether this seed trained to the end at >= the target in each of its last k epochs."""
        return self.status == Status.FINISHED and analyse(list(self.epochs), self.params or 0, k).consistent


@dataclass(frozen=True)
class Proof:
    """A config's runs over seeds, in seed order, and the verdict on them."""

    seeds: tuple[Seed, ...]
    k: int = LAST_K

    @classmethod
    def of(cls, runs: list[Any], k: int = LAST_K) -> Proof:
        return cls(seeds=tuple(sorted((Seed.of(run) for run in runs), key=lambda s: s.seed)), k=k)

    @property
    def going(self) -> bool:
        """Whether a seed is still queued or training."""
        return any(s.status in ACTIVE for s in self.seeds)

    @property
    def held_by(self) -> int:
        """How many seeds hold the target in each of the last k epochs."""
        return sum(s.held(self.k) for s in self.seeds)

    @property
    def proven(self) -> bool:
        """Every seed trained to the end and held the target: the config is proven."""
        return bool(self.seeds) and self.held_by == len(self.seeds)

    def last_tests(self) -> list[float]:
        """Each ended seed's last-epoch test accuracy."""
        return [s.epochs[-1].test_acc for s in self.seeds if s.epochs and s.status not in ACTIVE]

    def table(self) -> str:
        """Markdown: seed, parameters, the test accuracy of each of the last k epochs (fewer when the runs are
        shorter; "-" where a seed has no such epoch) and pass, one row per seed."""
        total = max((len(s.epochs) for s in self.seeds), default=0)
        numbers = range(max(1, total - self.k + 1), total + 1)
        lines = [
            f"| seed | params | {''.join(f'epoch {n} | ' for n in numbers)}pass |",
            "|---:|---:|" + "---:|" * len(numbers) + ":---:|",
        ]
        for s in self.seeds:
            tests = {e.epoch: e.test_acc for e in s.epochs}
            cells = "".join(f"{tests[n]:.2f} | " if n in tests else "- | " for n in numbers)
            passed = "yes" if s.held(self.k) else s.status if s.status != Status.FINISHED else "no"
            lines.append(f"| {s.seed} | {s.params or 0:,} | {cells}{passed} |")
        return "\n".join(lines)

    def summary(self) -> str:
        """The command line's one-line verdict: how many seeds hold, and the mean last-epoch accuracy."""
        last = self.last_tests()
        mean = statistics.mean(last) if last else float("nan")
        return (
            f"{self.held_by} of {len(self.seeds)} seeds hold >= {TARGET_ACC}% in each of the last "
            f"{plural(self.k, 'epoch')}; mean last-epoch test accuracy {mean:.2f}%"
        )

    def verdict(self) -> str:
        """The proof's verdict in words, for the page and the write-up: while seeds train, how far it is; then how
        many held, the mean and spread of their last epochs, and what happened to any seed that did not finish."""
        count = len(self.seeds)
        done = [s for s in self.seeds if s.status not in ACTIVE]
        if self.going:
            return (
                f"{len(done)} of {count} seeds done, {self.held_by} holding >= {TARGET_ACC}% in each of the last "
                f"{plural(self.k, 'epoch')} so far; the verdict comes when every seed has ended."
            )
        last = self.last_tests()
        spread = (
            f"mean last-epoch test accuracy {statistics.mean(last):.2f}% (seeds range {min(last):.2f}-{max(last):.2f}%)"
            if last
            else "no seed finished an epoch"
        )
        head = "Proven: it" if self.proven else "Not proven: it"
        text = (
            f"{head} holds >= {TARGET_ACC}% in each of the last {plural(self.k, 'epoch')} for {self.held_by} of "
            f"{count} seeds; {spread}."
        )
        for s in self.seeds:
            if s.status in (Status.FAILED, Status.STOPPED):
                text += f" Seed {s.seed} {s.status}: {s.reason}."
        if not self.proven and self.held_by:
            text += " One run that passes can be luck: this config does not pass consistently yet."
        return text
