"""Lesson links (drill.lesson): what each step shows and hides, the signed lesson= value and its fuzz cases, the
locked values winning over a link's own settings; and on the pages (AppTest) a teacher's lesson link hiding its
controls and keeping their values through page switches and an edited address."""

from __future__ import annotations

import base64
import json
import random
from urllib.parse import parse_qsl, urlsplit

import pytest
from conftest import REPO_ROOT, wait_until
from streamlit.testing.v1 import AppTest

from drill import classroom
from drill.config import RunConfig
from drill.lesson import LESSON_PARAM, TOPICS, Lesson, LessonError, _sign, secret_of
from drill.presets import BY_NAME
from drill.run_record import RunRecord

FINAL = BY_NAME["final"].config
SECRET = secret_of("teach-42")


def test_each_step_hides_the_topics_it_has_not_reached():
    hidden = {step: [t.title for t in Lesson.of(step, FINAL).hidden_topics] for step in range(1, 6)}
    assert hidden == {
        1: ["Batch norm", "Dropout", "Augmentation", "Head", "LR schedule"],
        2: ["Batch norm", "Dropout", "Augmentation", "Head", "LR schedule"],
        3: ["Dropout", "Augmentation", "Head", "LR schedule"],
        4: ["Head", "LR schedule"],
        5: [],
    }
    third = Lesson.of(3, FINAL)
    assert third.shows("model.batch_norm") and third.shows("model.layers") and third.shows("train.lr")
    assert not any(third.shows(f) for f in ("model.dropout", "augment.rotation", "model.head", "train.max_lr"))
    assert third.shows_layer("bn") and not third.shows_layer("dropout")
    assert dict(third.locked)["model.dropout"] == 0.02 and dict(third.locked)["train.schedule"] == "onecycle"
    for step in (0, 6, -1):
        with pytest.raises(LessonError, match="one of 1 to 5"):
            Lesson.of(step, FINAL)


def test_every_config_field_a_topic_names_exists():
    fields = {f"{section}.{name}" for section, values in RunConfig().to_dict().items() for name in values}
    assert {field for topic in TOPICS for field in topic.fields} <= fields


def test_the_hidden_note_names_each_hidden_topic_with_its_locked_values():
    note = Lesson.of(3, FINAL).hidden_note()
    assert "**Dropout** (Dropout rate 0.02)" in note
    assert "**Augmentation** (Rotation 7, Shift 0.05)" in note
    assert "**Head** (GAP → 1x1 conv)" in note and "**LR schedule** (OneCycleLR)" in note
    assert "Batch norm" not in note
    assert Lesson.of(5, FINAL).hidden_note() == "Every control is shown: the lesson has reached them all."


def test_a_lesson_survives_its_token_and_the_token_holds_only_values_away_from_defaults():
    for step in range(1, 6):
        lesson = Lesson.of(step, FINAL)
        assert Lesson.from_token(lesson.token(SECRET), SECRET) == lesson
    token = Lesson.of(3, RunConfig()).token(SECRET)
    body = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert body == {"step": 3, "locked": {}}
    assert "teach-42" not in Lesson.of(1, FINAL).token(SECRET)


def _forged(token: str) -> str:
    """The token with its payload re-encoded to lock dropout at 0.5 under the old signature."""
    payload, signature = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=="))
    body["locked"]["model.dropout"] = 0.5
    forged = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    return f"{forged}.{signature}"


@pytest.mark.parametrize(
    "tamper",
    [
        _forged,
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),
        lambda t: t[: len(t) // 2],
        lambda t: t.split(".")[0],
        lambda t: "",
        lambda t: t + "é",
        lambda t: "x" * 10_240,
        lambda t: t.replace(".", "\x00"),
        lambda t: "<script>alert(1)</script>." + t.split(".")[1],
    ],
)
def test_a_changed_or_made_up_lesson_is_refused_with_a_message(tamper):
    with pytest.raises(LessonError) as caught:
        Lesson.from_token(tamper(Lesson.of(3, FINAL).token(SECRET)), SECRET)
    message = str(caught.value)
    assert "every control is shown" in message and "Ask your teacher" in message and len(message) < 300


def test_random_tokens_are_refused_and_never_raise_anything_else():
    rng = random.Random(17)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=%é\x00<>"
    for _ in range(500):
        token = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 300)))
        with pytest.raises(LessonError):
            Lesson.from_token(token, SECRET)


def test_a_lesson_from_another_server_or_none_without_a_teacher_key_is_refused():
    token = Lesson.of(3, FINAL).token(secret_of("another-server"))
    with pytest.raises(LessonError, match="not one this server's teacher made"):
        Lesson.from_token(token, SECRET)
    with pytest.raises(LessonError, match="no teacher key"):
        Lesson.from_token(token, None)
    assert secret_of(None) is None and secret_of("") is None


def test_a_signed_lesson_for_other_controls_is_refused_saying_so():
    def signed(body: object) -> str:
        payload = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
        return f"{payload}.{_sign(SECRET, payload)}"

    for body in (
        {"step": 3, "locked": {"model.batch_norm": "off"}},  # taught at step 3: not a hidden control
        {"step": 3, "locked": {"model.dropout": "lots"}},
        {"step": 3, "locked": {"model.dropout": True}},
        {"step": 9, "locked": {}},
        {"step": 3},
        [1, 2],
    ):
        with pytest.raises(LessonError, match="made for other controls"):
            Lesson.from_token(signed(body), SECRET)


def test_the_locked_values_win_over_a_configs_and_the_layers_own_settings_are_dropped():
    lesson = Lesson.of(3, FINAL)
    edited = FINAL.replace(
        model={"dropout": 0.3, "layers": "10:drop=0.1,10:bn=after,16,M,T10,10,16,16"},
        augment={"rotation": 30.0},
        train={"lr": 0.05},
    )
    kept, notes = lesson.apply(edited)
    assert kept.model.dropout == 0.02 and kept.augment.rotation == 7.0
    assert kept.model.layers == "10,10:bn=after,16,M,T10,10,16,16"  # batch norm is taught by step 3; dropout isn't
    assert kept.train.lr == 0.05  # a visible control keeps the student's value
    assert "**Dropout rate**" in notes[0] and "**Rotation**" in notes[0]
    assert "dropped" in notes[1]
    assert lesson.apply(FINAL) == (FINAL, [])
    early, _ = Lesson.of(2, FINAL).apply(edited)
    assert early.model.layers == "10,10,16,M,T10,10,16,16" and early.model.batch_norm == "before_relu"


def test_the_links_settings_leave_out_the_hidden_controls():
    params = Lesson.of(3, FINAL).visible_params(FINAL)
    assert params["bn"] == "before_relu" and params["layers"] == FINAL.model.layers
    assert not {"drop", "rot", "shift", "head", "sched", "maxlr"} & set(params)


# -- on the pages (AppTest) --------------------------------------------------------------------------------------
PAGE_TIMEOUT = 120


def tab(query: dict[str, str] | None = None, page: str | None = None) -> AppTest:
    """A fresh tab opened on a link with this query, switched to a page."""
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=PAGE_TIMEOUT)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    at.run()
    assert not at.exception, at.exception
    return switch(at, page) if page else at


def switch(at: AppTest, page: str) -> AppTest:
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, at.exception
    return at


def widget_labels(at: AppTest) -> set[str]:
    kinds = ("slider", "selectbox", "number_input", "toggle", "text_input", "button_group", "select_slider")
    return {w.label for kind in kinds for w in at.get(kind)}


def notes(at: AppTest) -> str:
    return "\n".join(e.value for kind in (at.info, at.warning, at.error, at.caption) for e in kind)


def make_lesson_link(monkeypatch, preset: str, step: int) -> dict[str, str]:
    """The query of a lesson link a teacher made at this step from a preset's model, in class ml-<random>."""
    monkeypatch.setenv(classroom.TEACHER_KEY_ENV, "teach-42")
    code = f"ml-{random.Random().randrange(10**6)}"
    teacher = tab({classroom.CLASS_PARAM: code}, "class_page")
    next(w for w in teacher.text_input if w.label == "Teacher key").input("teach-42").run()
    next(w for w in teacher.sidebar.selectbox if w.label == "Preset").set_value(preset).run()
    next(w for w in teacher.sidebar.selectbox if w.label == "Taught so far").set_value(step).run()
    assert not teacher.exception, teacher.exception
    link = next(c.value for c in teacher.sidebar.code if f"{LESSON_PARAM}=" in c.value)
    assert "teach-42" not in link
    query = dict(parse_qsl(urlsplit(link).query))
    assert query[classroom.CLASS_PARAM] == code
    return query


@pytest.fixture
def lesson_link(monkeypatch) -> dict[str, str]:
    """A lesson link made at step 3 from the final step's model."""
    query = make_lesson_link(monkeypatch, "final", 3)
    assert "drop" not in query
    return query


def test_a_lesson_link_hides_its_controls_and_keeps_their_values_through_page_switches(lesson_link):
    student = tab(lesson_link, "build")
    assert {"Batch norm", "Layer stack"} & widget_labels(student) == {"Batch norm"}
    assert not {"Dropout rate", "Dropout kind", "Head"} & widget_labels(student)
    assert "**Dropout** (Dropout rate 0.02)" in notes(student)
    for page in ("train", "compare", "build", "drilldown", "train"):
        switch(student, page)
        cfg = student.session_state["config"]
        assert (cfg.model.dropout, cfg.augment.rotation, cfg.model.head, cfg.train.schedule) == (
            0.02,
            7.0,
            "gap_conv",
            "onecycle",
        ), page
        assert student.query_params[LESSON_PARAM] == lesson_link[LESSON_PARAM], page
        assert "drop" not in student.query_params, page
    assert not {"Rotation (± degrees)", "LR schedule", "Peak LR (max_lr)"} & widget_labels(student)
    assert {"Epochs", "Learning rate"} <= widget_labels(student)
    switch(student, "drilldown")
    loads = {b.key for b in student.button if b.label == "Load into the builder"}
    assert {"load_skeleton", "load_lean", "load_batchnorm"} <= loads and not {"load_regularised", "load_final"} & loads
    assert "Later in the lesson" in notes(student)
    presets = next(w for w in student.sidebar.selectbox if w.label == "Preset").options
    assert not any("Regularised" in option or "Stretch" in option for option in presets)


def test_a_visible_control_changes_and_a_hidden_one_stays_locked(lesson_link):
    student = tab(lesson_link, "build")
    next(w for w in student.get("button_group") if w.label == "Batch norm").set_value("after_relu").run()
    assert student.session_state["config"].model.batch_norm == "after_relu"
    assert student.query_params["bn"] == "after_relu"
    assert student.session_state["config"].model.dropout == 0.02


def test_an_edited_address_on_another_page_cannot_change_a_hidden_value(lesson_link):
    edited = lesson_link | {"drop": "0.4", "rot": "30", "sched": "none", "lr": "0.05"}
    student = tab(edited)
    assert "Set by the lesson" in notes(student) and "**Dropout rate**" in notes(student)  # said once, on arrival
    switch(student, "train")
    cfg = student.session_state["config"]
    assert (cfg.model.dropout, cfg.augment.rotation, cfg.train.schedule) == (0.02, 7.0, "onecycle")
    assert cfg.train.lr == 0.05  # the learning rate is taught: the link's value is taken


def test_a_tampered_lesson_shows_every_control_and_says_why(lesson_link):
    student = tab(lesson_link | {LESSON_PARAM: _forged(lesson_link[LESSON_PARAM])})
    assert "not one this server's teacher made" in notes(student)
    switch(student, "build")
    assert {"Batch norm", "Dropout rate", "Head"} <= widget_labels(student)
    assert LESSON_PARAM not in student.query_params


def test_without_the_teacher_key_there_is_no_lesson_link_to_make(lesson_link):
    student = tab(lesson_link)
    assert not any(w.label == "Taught so far" for w in student.sidebar.selectbox)


def test_the_readme_names_the_steps_each_topic_comes_in_at():
    by_step: dict[int, list[str]] = {}
    for topic in TOPICS:
        by_step.setdefault(topic.step, []).append(
            {"Head": "the head", "LR schedule": "the LR schedule"}.get(topic.title, topic.title.lower())
        )
    said = ", ".join(f"{' and '.join(titles)} at {step}" for step, titles in by_step.items())
    readme = " ".join((REPO_ROOT / "README.md").read_text().split())
    assert f"(the steps bring in: {said})" in readme


def test_a_layers_own_setting_the_lesson_has_not_reached_is_dropped_from_the_stack_text_too(monkeypatch):
    student = tab(make_lesson_link(monkeypatch, "lean", 2), "build")
    next(w for w in student.text_input if w.label == "Compact stack").input("8:bn=before,12,M,12,16,M").run()
    assert not student.exception, student.exception
    assert student.session_state["config"].model.layers == "8,12,M,12,16,M"
    assert next(w for w in student.text_input if w.label == "Compact stack").value == "8,12,M,12,16,M"
    assert "batch norm settings were dropped" in notes(student)


def test_the_teacher_is_warned_when_the_model_is_not_the_steps_preset(monkeypatch):
    monkeypatch.setenv(classroom.TEACHER_KEY_ENV, "teach-42")
    teacher = tab({classroom.CLASS_PARAM: "ml-warn"}, "class_page")
    next(w for w in teacher.text_input if w.label == "Teacher key").input("teach-42").run()
    next(w for w in teacher.sidebar.selectbox if w.label == "Taught so far").set_value(2).run()
    assert "is not the preset *2. A lean skeleton*" in notes(teacher)
    next(w for w in teacher.sidebar.selectbox if w.label == "Preset").set_value("lean").run()
    assert "is not the preset" not in notes(teacher)


def test_a_lesson_that_has_reached_every_topic_offers_every_preset(monkeypatch):
    student = tab(make_lesson_link(monkeypatch, "final", 5))
    presets = next(w for w in student.sidebar.selectbox if w.label == "Preset").options
    assert len(presets) == len(BY_NAME)


def test_proving_a_step_in_a_lesson_proves_it_with_the_lessons_values(lesson_link):
    from views import common

    student = tab(lesson_link)
    lean = BY_NAME["lean"].config
    epochs = [
        {"epoch": i, "train_loss": 0.1, "train_acc": 98.0, "test_loss": 0.1, "test_acc": 98.2, "lr": 0.01, "seconds": 1}
        for i in range(1, lean.train.epochs + 1)
    ]
    manager = common.manager()
    manager.add_finished(
        student.session_state["owner"],
        RunRecord.from_dict({"label": "Lean", "config": lean.to_dict(), "epochs": epochs}),
    )
    switch(student, "drilldown")
    next(b for b in student.button if b.key == "prove_lean").click().run()
    assert not student.exception, student.exception
    proving = manager.snapshot(student.session_state["train_job"])
    try:
        expected, _ = Lesson.from_token(lesson_link[LESSON_PARAM], SECRET).apply(lean)
        assert proving.config.replace(train={"seed": lean.train.seed}) == expected
        assert proving.config.model.dropout == 0.02 and proving.config.train.schedule == "onecycle"
    finally:
        for run in manager.snapshots(student.session_state["owner"]):
            manager.stop(run.ticket_id)
    wait_until(lambda: manager.active_count(student.session_state["owner"]) == 0, timeout=300, what="the proof to stop")
