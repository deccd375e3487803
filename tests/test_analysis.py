"""The Analysis a run gets, over a table of cases: first whether it learned, then whether it fitted the training
images, and only then what its train/test gap says; and counts read as English ("1 epoch", not "1 epochs")."""

from __future__ import annotations

import pytest

from drill.analysis import analyse
from drill.run_record import Epoch


def epochs(*pairs: tuple[float, float]) -> list[dict]:
    """Epoch records of (train accuracy, test accuracy) pairs."""
    return [
        Epoch(epoch=i, train_loss=0.1, train_acc=train, test_loss=0.1, test_acc=test, lr=0.01, seconds=10.0)
        for i, (train, test) in enumerate(pairs, 1)
    ]


@pytest.mark.parametrize(
    "train, test, expected, not_expected",
    [
        (9.9, 9.8, "It did not learn: 9.80% test is about chance (10% for ten digits)", "no overfitting"),
        (10.2, 9.8, "It did not learn", "overfits"),
        (11.4, 19.0, "It did not learn", "capacity to spare"),
        (52.0, 53.8, "It underfits: train accuracy is 52.00%", "capacity to spare"),
        (97.08, 97.73, "It underfits: train accuracy is 97.08%", "no overfitting"),
        (90.0, 80.0, "It underfits", "overfits"),
        (99.5, 99.0, "Train accuracy is 0.50 points above test: the model overfits", "underfits"),
        (98.6, 99.2, "Test accuracy is 0.60 points above train", "underfits"),
        (99.3, 99.2, "Train and test accuracy are within 0.3 points: no overfitting", "underfits"),
    ],
)
def test_the_analysis_judges_learning_then_fit_then_the_gap(train, test, expected, not_expected):
    text = analyse(epochs((train, test)), 7_000).text
    assert expected in text and not_expected not in text, text


def test_a_run_that_learned_once_and_then_fell_back_is_still_judged_by_its_last_epoch():
    text = analyse(epochs((96.0, 97.0), (99.4, 99.3), (10.1, 9.8)), 7_000).text
    assert "It underfits: train accuracy is 10.10%" in text and "Best test 99.30% after 3 epochs" in text


def test_counts_of_one_read_as_english():
    one = analyse(epochs((99.3, 99.2)), 7_000).text
    assert "after 1 epoch;" in one and "1 epochs" not in one
    held = analyse(epochs((99.6, 99.5)), 7_000, k=1).text
    assert "It holds >= 99.4% in each of the last 1 epoch (99.50)." in held
