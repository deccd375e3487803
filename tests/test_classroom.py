"""drill.classroom: class codes and display names (with fuzz cases), who is in which class, the class's runs as a
leaderboard, its exports, pins, and the teacher's key."""

from __future__ import annotations

import csv
import io
import random
import sqlite3

import pandas as pd
import pytest
from conftest import REPO_ROOT, wait_until
from streamlit.testing.v1 import AppTest
from test_jobs import FakeRunner, cfg

from drill import classroom
from drill.classroom import ClassError
from drill.jobs import JobManager
from drill.run_record import Epoch, RunRecord, Status
from drill.store import RunStore

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
        Epoch(epoch=i, train_loss=0.1, train_acc=99.9, test_loss=0.05, test_acc=acc, lr=0.01, seconds=1.0)
        for i, acc in enumerate(tests, 1)
    ]
    record = RunRecord(config=config, status=Status.FINISHED, params=6_520, epochs=tuple(epochs), label=label)
    return manager.add_finished(owner, record)


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
    assert {r["ticket_id"] for r in rows} == {holds.id, wobbles.id, running.id, queued.id}
    by_id = {r["ticket_id"]: r for r in rows}
    assert rows[0]["ticket_id"] == holds.id  # holds 99.4% in each of its last 4 and is under the budget
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
    assert [e.run.ticket_id for e in classroom.pinned(store, "ml-101", classroom.entries(manager, "ml-101"))] == [
        first.id
    ]
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


# -- the Class page (AppTest) -------------------------------------------------------------------------------------
PAGE_TIMEOUT = 120


def class_session(code: str | None, page: str | None = "class_page"):
    """A fresh tab opened on a link (with class=code when given), switched to a page."""
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=PAGE_TIMEOUT)
    if code is not None:
        at.query_params[classroom.CLASS_PARAM] = code
    at.run()
    assert not at.exception, at.exception
    return switch(at, page) if page else at


def switch(at, page: str):
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, at.exception
    return at


def by_label(widgets, label: str):
    return next(w for w in widgets if w.label == label)


def pick_name(at, name: str):
    by_label(at.text_input, "Display name").input(name)
    by_label(at.button, "Change my name" if "Change my name" in labels(at) else "Join the class").click().run()
    assert not at.exception, at.exception
    return at


def labels(at) -> list[str]:
    return [b.label for b in at.button] + [b.label for b in at.get("download_button")]


def shown_text(at) -> str:
    return "\n".join(e.value for kind in (at.error, at.warning, at.success, at.info, at.caption) for e in kind)


def class_table(at) -> pd.DataFrame:
    return next(d.value for d in at.dataframe if "Student" in d.value.columns)


@pytest.fixture
def lesson(monkeypatch):
    """Two students of class ml-<random> with a finished run each, a third student outside it with a run; the
    teacher key set."""
    from views import common

    monkeypatch.setenv(classroom.TEACHER_KEY_ENV, "teach-42")
    code = f"ml-{random.Random().randrange(10**6)}"
    ana, bo, cy = class_session(code), class_session(code), class_session(None)
    pick_name(ana, "Ana")
    pick_name(bo, "Bo")
    manager = common.manager()
    owners = [at.session_state["owner"] for at in (ana, bo, cy)]
    runs = [finished(manager, owner, [99.5] * 4, seed=100 + i) for i, owner in enumerate(owners)]
    return code, (ana, bo, cy), runs


def test_the_class_page_shows_the_class_runs_only_and_no_teacher_buttons_without_the_key(lesson):
    code, (ana, bo, cy), runs = lesson
    for at in (ana, bo):
        switch(at, "class_page")
        table = class_table(at)
        assert sorted(table["Student"]) == ["Ana", "Bo"] and len(table) == 2
        assert not {"Stop this run", "Clear the class"} & set(labels(at))
        assert not any(label.startswith(("Pin", "Download")) for label in labels(at))
        assert "Load into my builder" in labels(at)
    assert "owner" not in "".join(class_table(ana).columns).lower()
    assert any("You are in no class" in info.value for info in switch(cy, "class_page").info)
    assert ana.query_params[classroom.CLASS_PARAM] == code
    switch(ana, "build")
    assert ana.query_params[classroom.CLASS_PARAM] == code  # the class code survives a page switch


def test_a_taken_or_bad_display_name_is_refused_with_a_message(lesson):
    code, (ana, bo, cy), runs = lesson
    for typed, says in [
        ("ANA", "is taken in class"),
        ("<script>alert(1)</script>", "can't hold '<'"),
        ("x" * 10_240, "10,240 characters long"),
        ("Bo\x07", "can't hold U+0007"),
    ]:
        pick_name(bo, typed)
        assert any(says in e.value for e in bo.error), (typed, [e.value for e in bo.error])
    assert sorted(class_table(bo)["Student"]) == ["Ana", "Bo"]
    pick_name(bo, "Bo the Second")
    assert sorted(class_table(bo)["Student"]) == ["Ana", "Bo the Second"]


@pytest.mark.parametrize(
    ("link", "says"),
    [
        ("<b>x</b>", "'<' is not allowed"),
        ("c" * 10_240, "10,240 characters long"),
        ("ml\x00101", "U+0000 is not allowed"),
    ],
)
def test_a_bad_class_code_in_the_link_is_said_and_puts_the_student_in_no_class(link, says):
    at = class_session(link, page=None)
    assert any(says in w.value and "You are in no class" in w.value for w in at.warning)
    assert classroom.CLASS_PARAM not in at.query_params
    assert any("You are in no class" in info.value for info in switch(at, "class_page").info)


def test_a_classmates_config_loads_into_ones_own_builder(lesson):
    code, (ana, bo, cy), runs = lesson
    switch(ana, "class_page")
    choice = by_label(ana.selectbox, "A run of the class")
    choice.set_value(runs[1].id).run()
    by_label(ana.button, "Load into my builder").click().run()
    assert not ana.exception
    assert ana.session_state["config"] == runs[1].run.config
    assert "Loaded" in shown_text(ana) and "`Bo`" in shown_text(ana)


def test_with_the_teacher_key_the_teacher_stops_pins_and_exports(lesson):
    from views import common

    code, (ana, bo, cy), runs = lesson
    teacher = class_session(code)
    by_label(teacher.text_input, "Teacher key").input("teach-4").run()  # a near miss unlocks nothing
    assert any("is not this server's" in e.value for e in teacher.error)
    assert "Stop this run" not in labels(teacher)
    by_label(teacher.text_input, "Teacher key").input("teach-42").run()
    assert {"Stop this run", "Clear the class"} <= set(labels(teacher))
    assert "Download the class's table (CSV)" in labels(teacher)
    # The key itself is kept nowhere: not in the link, not in the session (only that it matched).
    assert "teach-42" not in repr(dict(teacher.query_params)) + repr(teacher.session_state)

    manager = common.manager()
    going = manager.submit(
        bo.session_state["owner"],
        cfg(random.Random().randrange(10**6)).replace(train={"epochs": 3, "subset": 6000}),
        label="Bo's long run",
    )
    teacher.run()
    by_label(teacher.selectbox, "A run of the class").set_value(going.id).run()
    by_label(teacher.button, "Stop this run").click().run()
    assert not teacher.exception
    stopped = wait_until(
        lambda: (s := manager.snapshot(going.id)).status not in ("queued", "running") and s,
        timeout=120,
        what="the teacher's stop to end the run",
    )
    assert stopped.status == "stopped" and "stopped by the teacher" in stopped.reason

    by_label(teacher.selectbox, "A run of the class").set_value(runs[0].id).run()
    by_label(teacher.button, "Pin on everyone's Compare page").click().run()
    for at, sees in ((bo, True), (cy, False)):
        switch(at, "compare")
        pinned = [d.value for d in at.dataframe if "Ana: Final, seed 100" in d.value.index]
        assert bool(pinned) == sees


def test_the_scatter_draws_the_target_box_and_names_student_and_config_on_hover(manager):
    from drill.charts import class_chart

    classroom.join(manager.store, "ml-101", "owner-a", "Ana")
    finished(manager, "owner-a", [99.5] * 4, seed=2)
    spec = class_chart(classroom.leaderboard(classroom.entries(manager, "ml-101"))).to_dict()
    box, dots = spec["layer"]
    assert box["mark"]["type"] == "rect"
    [corners] = spec["datasets"][box["data"]["name"]]
    assert (corners["x2"], corners["y"], corners["y2"]) == (8000, 99.4, 100)
    [point] = spec["datasets"][dots["data"]["name"]]
    assert (point["Student"], point["accuracy"]) == ("Ana", 99.5) and "seed=2" in point["Config"]
    assert {"Student", "Config"} <= {t["field"] for t in dots["encoding"]["tooltip"]}


def test_a_student_who_joined_finds_the_class_from_a_link_without_it(lesson):
    code, (ana, bo, cy), runs = lesson
    again = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=PAGE_TIMEOUT)
    again.session_state["owner"] = ana.session_state["owner"]  # Ana's browser, back on a plain link
    switch(again.run(), "class_page")
    assert again.query_params[classroom.CLASS_PARAM] == code
    assert sorted(class_table(again)["Student"]) == ["Ana", "Bo"]
