"""The class's fair queue, as a pure policy: which waiting run gets the next free slot, each one's place, and when
a running run should give its slot up. No threads and no clocks here, so every rule is testable on its own."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FairQueue:
    """Runs waiting for a slot: new ones first, then paused ones, each in the order they came.

    A class that starts at once should see first curve points after about one epoch per run ahead, not after whole
    runs: so while a new run waits, every running run is asked to pause at its next epoch end (wants_turns), and a
    paused run waits behind every new one.
    """

    fresh: list[str] = field(default_factory=list)  # run ids that have not trained yet
    # run ids that trained some epochs and gave their slot up, and a proof's seeds after its first (drill.proof)
    paused: list[str] = field(default_factory=list)

    def add(self, run_id: str, started: bool = False) -> None:
        """Queue a run: a new one, or (started) one that paused after an epoch or waits as a proof's later seed."""
        (self.paused if started else self.fresh).append(run_id)

    def remove(self, run_id: str) -> bool:
        """Take a run out of the queue; whether it was in it."""
        for part in (self.fresh, self.paused):
            if run_id in part:
                part.remove(run_id)
                return True
        return False

    def pop_next(self) -> str | None:
        """The run that gets the next free slot, taken out of the queue."""
        for part in (self.fresh, self.paused):
            if part:
                return part.pop(0)
        return None

    def order(self) -> list[str]:
        """Every queued run id, in the order they will get a slot."""
        return self.fresh + self.paused

    def positions(self) -> dict[str, int]:
        """Run id -> 1-based place in the queue."""
        return {run_id: place for place, run_id in enumerate(self.order(), start=1)}

    def wants_turns(self) -> bool:
        """Whether running runs should pause at their next epoch end: a run that has not trained yet waits."""
        return bool(self.fresh)

    def clear(self) -> list[str]:
        """Empty the queue; the run ids it held, in order."""
        held = self.order()
        self.fresh.clear()
        self.paused.clear()
        return held

    def __contains__(self, run_id: str) -> bool:
        return run_id in self.fresh or run_id in self.paused

    def __len__(self) -> int:
        return len(self.fresh) + len(self.paused)
