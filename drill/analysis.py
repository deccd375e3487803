"""Verdicts on a run, as a student writes them up: overfitting gap, consistency over the last epochs, budget."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from drill.run_record import Epoch

TARGET_ACC = 99.4  # % test accuracy the drill-down asks for
PARAM_BUDGET = 8000  # the exercise's limit: fewer than this many parameters
EPOCH_BUDGET = 15
LAST_K = 4  # "consistently": at or above the target in each of the last K epochs
OVERFIT_GAP = 0.3  # train accuracy above test by more than this many points reads as overfitting
CHANCE = 10.0  # % a network that guesses gets right: ten digits
# A run whose test accuracy stays below this learned next to nothing; a gap between two guesses means nothing.
LEARNED = 20.0
# Below this train accuracy a network has not fitted MNIST yet (the lesson's small networks reach 98.5-99.5%): its
# train/test gap is not the question, more training or capacity is. Above it the gap reads as over- or underfitting.
FITTED = 98.0


@dataclass(frozen=True)
class Verdict:
    """What a run showed, in numbers and in words."""

    params: int
    epochs_run: int
    best_train: float | None
    best_test: float | None
    last_test: float | None
    last_k: tuple[float, ...]  # test accuracy of the last K epochs
    consistent: bool  # >= target in each of the last K epochs (and at least K epochs ran)
    gap: float | None  # train minus test accuracy in the last epoch
    within_params: bool
    within_epochs: bool
    text: str  # the Analysis paragraph

    @property
    def meets_target(self) -> bool:
        """All three of the exercise's conditions hold."""
        return self.consistent and self.within_params and self.within_epochs


def analyse(epochs: Sequence[Epoch], params: int, k: int = LAST_K, target: float = TARGET_ACC) -> Verdict:
    """The verdict on a run's epochs."""
    train = [e.train_acc for e in epochs]
    test = [e.test_acc for e in epochs]
    last_k = tuple(test[-k:]) if len(test) >= k else ()
    consistent = bool(last_k) and all(acc >= target for acc in last_k)
    gap = train[-1] - test[-1] if epochs else None
    within_params = params < PARAM_BUDGET
    within_epochs = len(epochs) <= EPOCH_BUDGET
    text = _words(epochs, params, k, target, last_k, consistent, gap, within_params, within_epochs)
    return Verdict(
        params,
        len(epochs),
        max(train, default=None),
        max(test, default=None),
        test[-1] if test else None,
        last_k,
        consistent,
        gap,
        within_params,
        within_epochs,
        text,
    )


def _words(epochs, params, k, target, last_k, consistent, gap, within_params, within_epochs) -> str:
    """The Analysis paragraph for a verdict: first whether the run learned at all, then whether it has fitted the
    training set, and only then what its train/test gap says."""
    if not epochs:
        return "No epoch finished, so there is nothing to analyse yet."
    sentences = []
    train, test = epochs[-1].train_acc, epochs[-1].test_acc
    if max(e.test_acc for e in epochs) < LEARNED:
        sentences.append(
            f"It did not learn: {test:.2f}% test is about chance ({CHANCE:.0f}% for ten digits). Lower the Learning "
            "rate, turn on Batch norm, or train on more images."
        )
    elif train < FITTED:
        sentences.append(
            f"It underfits: train accuracy is {train:.2f}%, so the network has not fitted the training images yet. "
            "Train more epochs or on more images, raise the Learning rate, or give the network more channels."
        )
    elif gap > OVERFIT_GAP:
        sentences.append(
            f"Train accuracy is {gap:.2f} points above test: the model overfits; "
            "regularise (batch norm, dropout, augmentation) or cut capacity."
        )
    elif gap < -OVERFIT_GAP:
        sentences.append(
            f"Test accuracy is {-gap:.2f} points above train: regularisation (dropout, augmentation) "
            "makes training harder than the test; no overfitting, capacity to spare."
        )
    else:
        sentences.append(f"Train and test accuracy are within {OVERFIT_GAP} points: no overfitting.")
    best = max(e.test_acc for e in epochs)
    if consistent:
        sentences.append(f"It holds >= {target}% in each of the last {plural(k, 'epoch')} ({_accs(last_k)}).")
    elif last_k:
        hits = sum(acc >= target for acc in last_k)
        sentences.append(
            f"Best test {best:.2f}%; {hits} of the last {plural(k, 'epoch')} reach {target}% ({_accs(last_k)}): "
            "not yet consistent."
        )
    else:
        sentences.append(
            f"Best test {best:.2f}% after {plural(len(epochs), 'epoch')}; too few epochs to judge consistency."
        )
    budget = "within" if within_params else "over"
    sentences.append(f"{params:,} parameters: {budget} the {PARAM_BUDGET:,} budget.")
    if not within_epochs:
        sentences.append(f"{len(epochs)} epochs is more than the {EPOCH_BUDGET} allowed.")
    return " ".join(sentences)


def plural(count: int, word: str) -> str:
    """A count and its noun, e.g. "1 epoch", "4 epochs"; "the last 1 epochs" reads wrong."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def _accs(values) -> str:
    """Accuracies as a short list, e.g. 99.41, 99.45."""
    return ", ".join(f"{v:.2f}" for v in values)
