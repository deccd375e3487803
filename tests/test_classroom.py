"""drill.classroom: class codes and display names (with fuzz cases), who is in which class, the class's runs as a
leaderboard, its exports, pins, and the teacher's key."""

from __future__ import annotations

import csv
import io
import random
import sqlite3

import pytest
from conftest import wait_until
from test_jobs import FakeRunner, cfg

from drill import classroom
from drill.classroom import ClassError
from drill.jobs import JobManager
from drill.records import check_record
from drill.store import RunStore
from drill.train import EPOCH_KEYS

MESSAGE_CAP = 300  # a message quotes at most a short piece of what it refuses


@pytest.fixture
def manager():
    runner = FakeRunner()
    made = JobManager(max_running=1, runner=runner, data=lambda: "data")
    yield made
    for seed in list(runner.gates):
        runner.release(seed)
    made.shutdown(timeout=60)


def finished(manager: JobManager, owner: str, tests: list[float], seed: int = 1, label: str = "Final"):
    """A finished run of owner's with these test accuracies, one per epoch (registered as an imported record)."""
    config = cfg(seed).replace(train={"epochs": len(tests)})
    epochs = [
        dict(zip(EPOCH_KEYS, (i, 0.1, 99.9, 0.05, acc, 0.01, 1.0), strict=True)) for i, acc in enumerate(tests, 1)
    ]
    record = check_record({"label": label, "config": config.to_dict(), "epochs": epochs})
    return manager.add_finished(owner, record, label=label)


# -- class codes -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("given", "code"), [("ml-101", "ml-101"), ("ML-101", "ml-101"), (" a1 ", "a1"), ("x" * 32,) * 2]
)
def test_a_class_code_of_letters_digits_and_dashes_is_taken_lowered(given, code):
    assert classroom.check_code(given) == code


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("", "is empty"),
        ("<script>alert(1)</script>", "'<' is not allowed"),
        ("a" * 10_240, "10,240 characters long"),
        ("ml\x00101", "U+0000 is not allowed"),
        ("ml\x1b[31m", "U+001B is not allowed"),
        ("ml 101", "' ' is not allowed"),
        ("ml-é", "'é' is not allowed"),
        ("-ml", "a dash can't start, end or double up"),
        ("ml--101", "a dash can't start, end or double up"),
        ("x" * 33, "33 characters long"),
    ],
)
def test_a_bad_class_code_is_refused_saying_what_is_allowed(given, says):
    with pytest.raises(ClassError) as caught:
        classroom.check_code(given)
    message = str(caught.value)
    assert says in message
    assert "1 to 32 letters (a-z), digits and dashes, like ml-101" in message
    assert len(message) < MESSAGE_CAP and "\x00" not in message and "\x1b" not in message


# -- display names -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("given", "name"), [("Ana", "Ana"), ("  Ana   Lee ", "Ana Lee"), ("Zoë O'Brien", "Zoë O'Brien"), ("李雷", "李雷")]
)
def test_a_display_name_is_kept_as_plain_text_with_its_spaces_tidied(given, name):
    assert classroom.check_name(given)[0] == name


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("<b>Ana</b>", "can't hold '<'"),
        ('<img src=x onerror="alert(1)">', "can't hold '<'"),
        ("Ana" * 3414, "10,242 characters long"),
        ("Ana\x00", "can't hold U+0000"),
        ("Ana\nLee", "can't hold U+000A"),
        ("Ana\u202eeL", "can't hold U+202E"),  # right-to-left override: would flip the names after it
        ("A\u200bna", "can't hold U+200B"),  # zero-width space: two names that look alike
        ("Ana|Lee", "can't hold '|'"),
        ("x" * 31, "31 characters long"),
    ],
)
def test_a_bad_display_name_is_refused_saying_what_is_allowed(given, says):
    with pytest.raises(ClassError) as caught:
        classroom.check_name(given)
    message = str(caught.value)
    assert says in message and "**Display name**" in message
    assert "1 to 30 letters, digits, spaces and - _ . '" in message
    assert len(message) < MESSAGE_CAP and message.isprintable()


def test_random_names_are_either_kept_printable_or_refused_with_a_message():
    rng = random.Random(17)
    alphabet = "Ana <>&\"'|-_.\x00\x07\n\t\u200b\u202eé李" + "x" * 10
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        try:
            name, key = classroom.check_name(text)
        except ClassError as error:
            assert str(error).isprintable() and len(str(error)) < MESSAGE_CAP
        else:
            assert name.isprintable() and 0 < len(name) <= classroom.MAX_NAME_CHARS
            assert not set(name) & set('<>&"|') and key == name.casefold()


def test_a_display_name_is_unique_in_its_class_changeable_and_free_in_another_class():
    store = RunStore()
    assert classroom.join(store, "ml-101", "owner-a", "Ana") == "Ana"
    with pytest.raises(ClassError, match=r"\*\*Display name\*\* 'ANA' is taken in class ml-101: pick another"):
        classroom.join(store, "ml-101", "owner-b", " ANA ")
    assert classroom.join(store, "ML-101", "owner-b", "Bo") == "Bo"
    assert classroom.join(store, "ml-101", "owner-a", "ana") == "ana"  # one's own name in other letters
    classroom.join(store, "ml-101", "owner-a", "Ana Lee")
    classroom.join(store, "ml-101", "owner-c", "Ana")  # the old name is free again
    classroom.join(store, "ml-202", "owner-d", "Bo")
    assert [(m.owner, m.name) for m in store.members("ml-101")] == [
        ("owner-a", "Ana Lee"),
        ("owner-b", "Bo"),
        ("owner-c", "Ana"),
    ]
    with pytest.raises(ClassError, match="is empty"):
        classroom.join(store, "ml-101", "owner-a", "")
    assert classroom.member(store, "ml-101", "owner-a").name == "Ana Lee"
    assert classroom.member(store, "ml-101", "owner-d") is None


def test_a_store_made_before_classes_gains_their_tables_and_keeps_its_runs(tmp_path, manager):
    path = tmp_path / "runs.sqlite"
    old = RunStore(path)
    old.save_ticket(finished(manager, "owner-a", [99.5] * 4).row())
    old.close()
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE members")
        db.execute("DROP TABLE pins")
    store = RunStore(path)
    assert len(store.tickets("owner-a")) == 1
    classroom.join(store, "ml-101", "owner-a", "Ana")
    assert [m.name for m in store.members("ml-101")] == ["Ana"]


# -- the class's runs --------------------------------------------------------------------------------------------
def test_the_leaderboard_holds_the_class_runs_since_joining_and_nobody_elses(manager):
    store = manager.store
    finished(manager, "owner-a", [99.0] * 4, seed=9)  # before Ana joined: private
    classroom.join(store, "ml-101", "owner-a", "Ana")
    classroom.join(store, "ml-101", "owner-b", "Bo")
    classroom.join(store, "ml-202", "owner-c", "Cy")
    holds = finished(manager, "owner-a", [99.3, 99.45, 99.5, 99.41, 99.6], seed=2)
    wobbles = finished(manager, "owner-b", [99.5, 99.3, 99.6, 99.5], seed=3)
    finished(manager, "owner-c", [99.9] * 4, seed=4)  # another class
    finished(manager, "owner-z", [99.9] * 4, seed=5)  # in no class
    running = manager.submit("owner-b", cfg(6), label="Final")
    queued = manager.submit("owner-a", cfg(7))
    wait_until(lambda: manager.snapshot(running.id).status == "running", what="Bo's run to start")

    found = classroom.entries(manager, "ml-101")
    rows = classroom.leaderboard(found)
    assert {r["id"] for r in rows} == {holds.id, wobbles.id, running.id, queued.id}
    by_id = {r["id"]: r for r in rows}
    assert rows[0]["id"] == holds.id  # holds 99.4% in each of its last 4 and is under the budget
    assert by_id[holds.id][classroom.HOLDS] and by_id[holds.id]["Best test"] == 99.6
    assert by_id[holds.id]["accuracy"] == 99.41 and by_id[holds.id]["accuracy_kind"].startswith("held")
    assert not by_id[wobbles.id][classroom.HOLDS] and by_id[wobbles.id]["accuracy"] == 99.6
    assert by_id[holds.id]["Student"] == "Ana" and by_id[running.id]["Student"] == "Bo"
    assert by_id[holds.id]["Status"] == "finished"
    assert by_id[running.id]["Status"] == "running epoch 1 of 1"
    assert by_id[queued.id]["Status"] == "queued, #1 in line"
    assert by_id[queued.id]["Step"] == "Custom" and by_id[holds.id]["Step"] == "Final"
    assert "owner-" not in repr([{k: v for k, v in r.items() if k != "config"} for r in rows])

    manager.stop(running.id, reason="stopped by the teacher")
    wait_until(
        lambda: (
            classroom.row(classroom.Entry("Bo", manager.snapshot(running.id), ""))["Status"]
            == "stopped: stopped by the teacher"
        ),
        what="the stopped run's status",
    )
    assert classroom.steps(store, "ml-101", classroom.entries(manager, "ml-101")) == {"Custom": 1, "Final": 1}
    assert classroom.steps(store, "ml-202", []) == {classroom.NO_RUN: 1}


def test_exports_are_plain_tables_and_csv_cells_never_read_as_formulas(manager):
    classroom.join(manager.store, "ml-101", "owner-a", "-Ana")
    classroom.join(manager.store, "ml-101", "owner-b", "Bo")
    finished(manager, "owner-a", [99.5] * 4, seed=2)
    finished(manager, "owner-b", [99.0] * 4, seed=3, label="=HYPERLINK(1)")  # an imported run's label is free text
    rows = classroom.leaderboard(classroom.entries(manager, "ml-101"))
    parsed = list(csv.reader(io.StringIO(classroom.csv_text(rows))))
    assert parsed[0] == list(classroom.COLUMNS)
    assert [line[0] for line in parsed[1:]] == ["'-Ana", "Bo"]
    assert parsed[2][2] == "'=HYPERLINK(1)"
    assert parsed[1][5] == "yes" and parsed[2][5] == "no"
    table = classroom.markdown(rows).splitlines()
    assert table[0] == "| " + " | ".join(classroom.COLUMNS) + " |" and len(table) == 4
    assert table[2].startswith("| -Ana | Final, seed 2 | Final |") and "99.50%" in table[2]


def test_pins_show_the_class_runs_the_teacher_chose_and_clearing_forgets_the_class(manager):
    store = manager.store
    classroom.join(store, "ml-101", "owner-a", "Ana")
    first = finished(manager, "owner-a", [99.5] * 4, seed=2)
    finished(manager, "owner-a", [99.0] * 4, seed=3)
    outsider = finished(manager, "owner-z", [99.9] * 4, seed=4)
    store.pin("ml-101", first.id)
    store.pin("ml-101", outsider.id)  # not the class's: never shown as its pin
    assert [e.run.id for e in classroom.pinned(store, "ml-101", classroom.entries(manager, "ml-101"))] == [first.id]
    store.pin("ml-101", first.id, pinned=False)
    assert classroom.pinned(store, "ml-101", classroom.entries(manager, "ml-101")) == []
    store.clear_class("ml-101")
    assert classroom.entries(manager, "ml-101") == [] and store.members("ml-101") == []
    assert len(manager.snapshots("owner-a")) == 2  # the runs stay their student's


def test_the_teacher_key_matches_only_itself_and_no_key_makes_no_teacher():
    assert classroom.key_matches("s3cret-key", "s3cret-key")
    assert not classroom.key_matches("s3cret-kez", "s3cret-key")
    assert not classroom.key_matches("", "")
    assert not classroom.key_matches("anything", None)
    assert not classroom.key_matches("", "s3cret-key")
    assert not classroom.key_matches("ключ", "s3cret-key")  # not ASCII: still compared, not raised
