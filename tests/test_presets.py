"""The presets' measured texts come from the run files in results/: they state what the files hold, and when a file
is missing, unreadable or of another config they say so instead of failing the page. Runs are labelled and named
after the presets they are (or were edited from)."""

from __future__ import annotations

import json
import shutil
import statistics
from types import SimpleNamespace

import pytest
from conftest import REPO_ROOT

from drill.analysis import LAST_K, TARGET_ACC
from drill.presets import BY_NAME, MEASURED_RUNS, STRETCH_ATTEMPTS, measured, run_label
from drill.records import run_names, write_up

RESULTS = REPO_ROOT / "results"


def runs_in(file: str) -> list[dict]:
    data = json.loads((RESULTS / file).read_text())
    return data["runs"] if "runs" in data else [data]


@pytest.mark.parametrize("name", sorted(MEASURED_RUNS))
def test_the_measured_text_states_what_its_files_hold(name, tmp_path):
    text = measured(name, RESULTS, tmp_path / "no-pack")  # the recorded-runs pack's own text: tests/test_pack.py
    runs = [run for file in MEASURED_RUNS[name] for run in runs_in(file)]
    accs = [[epoch["test_acc"] for epoch in run["epochs"]] for run in runs]
    assert all(f"results/{file}" in text for file in MEASURED_RUNS[name])
    if len(runs) > 1:
        held = sum(all(acc >= TARGET_ACC for acc in run[-LAST_K:]) for run in accs)
        assert f"{held} of {len(runs)} seeds hold >= {TARGET_ACC}%" in text
        assert all(f"{min(run[-LAST_K:]):.2f}-{max(run[-LAST_K:]):.2f}" in text for run in accs)
        assert f"mean last epoch {statistics.mean(run[-1] for run in accs):.2f}%" in text
    elif len(accs[0]) < LAST_K:
        assert " / ".join(f"{acc:.2f}" for acc in accs[0]) + "% test" in text
    else:
        best_train = max(epoch["train_acc"] for epoch in runs[0]["epochs"])
        assert f"best {max(accs[0]):.2f}% test, train {best_train:.2f}%" in text
        assert f"last {LAST_K} epochs {min(accs[0][-LAST_K:]):.2f}-{max(accs[0][-LAST_K:]):.2f}%" in text


def test_the_stretch_text_sets_the_smaller_networks_tried_against_it():
    # As results/stretch-attempts/ holds them (docs/stretch.md's table): the best config of each size.
    expected = "6,204 parameters 1 of 3, 5,738 2 of 3, 4,964 at best 1 of 2, 4,600 0 of 1"
    assert f"seeds that held it with fewer parameters: {expected}" in BY_NAME["stretch"].measured


def test_a_missing_unreadable_or_foreign_file_is_said_not_raised(tmp_path):
    (tmp_path / "lean.json").write_text('{"config": ')
    shutil.copy(RESULTS / "batchnorm.json", tmp_path / "skeleton.json")
    (tmp_path / STRETCH_ATTEMPTS).mkdir()
    shutil.copy(RESULTS / STRETCH_ATTEMPTS / "6618.json", tmp_path / STRETCH_ATTEMPTS)
    assert (
        measured("regularised", tmp_path, tmp_path / "no-pack") == "not measured: results/regularised.json is missing"
    )
    assert measured("lean", tmp_path, tmp_path / "no-pack").startswith(
        "not measured: results/lean.json could not be read ("
    )
    assert measured("skeleton", tmp_path, tmp_path / "no-pack") == (
        "not measured: results/skeleton.json holds runs of another config: train the step again to measure it"
    )
    assert "; no smaller network in results/stretch-attempts/" in measured("stretch", tmp_path, tmp_path / "no-pack")
    assert measured("stretch", tmp_path, tmp_path / "no-pack").startswith("3 of 3 seeds hold")


def test_a_run_is_labelled_by_its_preset_or_the_preset_it_was_edited_from():
    final = BY_NAME["final"]
    assert run_label(final.config.replace(train={"seed": 4}), "quick") == final.title  # a seed is not an edit
    edited = final.config.replace(model={"dropout": 0.1})
    assert run_label(edited, "final") == "5. + GAP, 1x1 transitions and OneCycleLR (edited)"
    assert run_label(edited, None) == run_label(edited, "no such preset") == "custom"


def test_runs_are_named_as_a_person_names_them():
    final, lean = BY_NAME["final"].config, BY_NAME["lean"].config
    edited = final.replace(model={"dropout": 0.1})

    def run(number, config, label="", proof=""):
        return SimpleNamespace(
            ticket_id=f"ticket-{number}",
            config=config,
            label=label,
            proof=proof,
            status="finished",
            reason="",
            params=1,
            epochs=(),
        )

    runs = [
        run(1, final),
        run(2, lean),
        run(3, final.replace(train={"seed": 2})),
        run(4, edited, BY_NAME["final"].title + " (edited)"),
        run(5, final, proof="proof-a"),
        run(6, final.replace(train={"seed": 2}), proof="proof-a"),
        run(7, edited, "a config from a file"),
    ]
    assert list(run_names(runs).values()) == [
        "Final #1, seed 1",
        "Lean, seed 1",  # the student's only Lean run: no number
        "Final #2, seed 2",
        "Final (edited), seed 1",
        "Final #3, seed 1",  # a proof's seeds share their number
        "Final #3, seed 2",
        "a config from a file, seed 1",
    ]
    assert [name for name, _ in write_up(runs)][-3:] == [
        "Final (edited), seed 1",
        "Final #3, seeds 1-2",
        "a config from a file, seed 1",
    ]
