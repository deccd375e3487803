"""Tests for drill.proof: the verdict over seeds in its cases, the table as the command line prints it, and the
Compare page's one row for a proof."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from drill.proof import Proof, Seed, seeds
from drill.records import markdown_table, write_up
from drill.run_record import Epoch


def epochs(*tests: float, train: float = 99.3) -> tuple[dict, ...]:
    """Epoch records whose test accuracies are these (in epoch order)."""
    return tuple(
        Epoch(epoch=i, train_loss=0.05, train_acc=train, test_loss=0.03, test_acc=acc, lr=0.01, seconds=20.0)
        for i, acc in enumerate(tests, 1)
    )


HOLDS = epochs(99.1, 99.42, 99.45, 99.41, 99.47)
MISSES = epochs(99.1, 99.42, 99.38, 99.41, 99.47)


def seed(number: int, history=HOLDS, status: str = "finished", reason: str = "") -> Seed:
    return Seed(number, status, reason, 7_416, history)


def test_the_seeds_of_a_proof_are_one_to_its_count():
    assert seeds(2) == [1, 2] and seeds(5) == [1, 2, 3, 4, 5]
    for wrong in (1, 6, 0, -3, True, 3.0, "3"):
        with pytest.raises(ValueError, match="a proof trains 2 to 5 seeds"):
            seeds(wrong)


def test_every_seed_holding_proves_the_config_with_the_mean_and_range():
    proof = Proof((seed(1), seed(2, epochs(99.2, 99.5, 99.44, 99.43, 99.51)), seed(3)))
    assert proof.proven and proof.held_by == 3 and not proof.going
    assert proof.verdict() == (
        "Proven: it holds >= 99.4% in each of the last 4 epochs for 3 of 3 seeds; mean last-epoch test accuracy "
        "99.48% (seeds range 99.47-99.51%)."
    )


def test_one_seed_that_passes_is_not_a_proof():
    proof = Proof((seed(1), seed(2, MISSES), seed(3, MISSES)))
    assert not proof.proven and proof.held_by == 1
    assert proof.verdict().startswith("Not proven: it holds >= 99.4% in each of the last 4 epochs for 1 of 3 seeds")
    assert "can be luck" in proof.verdict()


def test_a_failed_seed_is_named_with_its_reason_and_fails_the_proof():
    reason = "the run diverged: the loss exploded to 3.4e+06 in epoch 1, batch 2"
    proof = Proof((seed(1), seed(2, epochs(), "failed", reason)))
    assert not proof.proven
    assert proof.verdict().endswith(
        f"Seed 2 failed: {reason}. One run that passes can be luck: this config does not pass consistently yet."
    )
    table = proof.table().splitlines()
    assert table[0] == "| seed | params | epoch 2 | epoch 3 | epoch 4 | epoch 5 | pass |"
    assert table[2:] == [
        "| 1 | 7,416 | 99.42 | 99.45 | 99.41 | 99.47 | yes |",
        "| 2 | 7,416 | - | - | - | - | failed |",
    ]
    # A seed cut short shows its epochs under their own numbers; runs shorter than k show the epochs they have.
    cut = Proof((seed(1), seed(2, epochs(98.0, 98.5), "failed", reason))).table().splitlines()
    assert cut[3] == "| 2 | 7,416 | 98.50 | - | - | - | failed |"
    short = Proof((seed(1, epochs(97.0, 98.0)), seed(2, epochs(97.5)))).table().splitlines()
    assert short[0] == "| seed | params | epoch 1 | epoch 2 | pass |"
    assert short[2:] == ["| 1 | 7,416 | 97.00 | 98.00 | no |", "| 2 | 7,416 | 97.50 | - | no |"]


def test_a_proof_still_training_says_how_far_it_is_and_gives_no_verdict():
    proof = Proof((seed(1), seed(2, epochs(99.0), "running"), seed(3, (), "queued")))
    assert proof.going and not proof.proven
    assert proof.verdict() == (
        "1 of 3 seeds done, 1 holding >= 99.4% in each of the last 4 epochs so far; the verdict comes when every "
        "seed has ended."
    )


def test_a_proof_is_one_row_of_the_write_up_beside_the_students_other_runs():
    def run(number, proof="", history=HOLDS):
        config = SimpleNamespace(train=SimpleNamespace(seed=number))
        return SimpleNamespace(
            ticket_id=f"ticket-{number}{proof}",
            label="6. Final",
            config=config,
            status="finished",
            reason="",
            params=7_416,
            epochs=history,
            proof=proof,
        )

    runs = [run(1), run(1, "proof-a"), run(2, "proof-a", MISSES), run(3, "proof-a")]
    rows = write_up(runs, lambda _: None)
    assert [name for name, _ in rows] == ["6. Final #1, seed 1", "6. Final #2, seeds 1-3"]
    row = rows[1][1]
    assert row["Step"] == "6. Final, proof over 3 seeds"
    assert row["Last 4"] == "2 of 3 seeds hold (no)" and row["Status"] == "not proven" and not row["Consistent"]
    assert row["Best test"] == 99.47 and row["Analysis"].startswith("Not proven")
    assert "| 6. Final, proof over 3 seeds |" in markdown_table([r for _, r in rows])
