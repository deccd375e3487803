"""What every page shares: the job manager, the student's id, their class and the current config (kept in the URL)."""

from __future__ import annotations

import logging
import os
import sqlite3
import uuid
from contextlib import contextmanager
from urllib.parse import urlencode

import streamlit as st
from streamlit.errors import StreamlitSecretNotFoundError

from drill import classroom, controls, pack, presence, presets, runview, stack
from drill.analysis import analyse
from drill.backends import Unavailable
from drill.config import ConfigError, RunConfig, field_choices, field_help, field_range
from drill.jobs import JobManager, make_backend
from drill.lesson import LESSON_PARAM, Lesson, LessonError, secret_of
from drill.presets import get_preset
from drill.run_record import Epoch
from drill.store import RunStore, StoreInUse, default_max_runs, default_path

DEFAULT_PRESET = "quick"
# The student's id lives in a cookie of their browser, so a reload (or a restart) finds their runs again, while the
# address bar, which a student may copy for a classmate, holds nothing that owns them.
OWNER_COOKIE = "drill_owner"
COOKIE_DAYS = 365
# Links made when the id rode in the URL carry it as me=: not a setting, and never taken as an id, since a copied
# address bar would hand over the sender's runs.
OLD_OWNER_PARAM = "me"
NOT_CONFIG = (OLD_OWNER_PARAM, classroom.CLASS_PARAM, LESSON_PARAM)  # the link's keys that are not settings
log = logging.getLogger(__name__)


@st.cache_resource
def manager() -> JobManager:
    """The process-wide job manager, shared by every session, keeping runs in the data directory's store,
    training them on the backend $DRILL_BACKEND names, and serving the recorded-runs pack's."""
    try:
        store = RunStore(default_path(), max_runs=default_max_runs())
    except StoreInUse as error:  # said on every page; this server trains nothing rather than train runs twice
        log.error("%s", error)
        return JobManager(backend=Unavailable(f"This server can't keep runs: {error}"), store=RunStore())
    except (OSError, sqlite3.Error) as error:  # a read-only or full disk: the class goes on, in memory
        log.error("the run store %s cannot be opened: %s", default_path(), error)
        store = RunStore()
        store.problem = (
            f"The run store can't be opened ({error}): runs go on in memory, but they will not survive a restart "
            "of the server."
        )
    return JobManager(backend=make_backend(), store=store, pack=pack.default_dir())


def owner() -> str:
    """This student's id, which owns their runs: the browser's cookie's, when it sent one, else a new one."""
    if "owner" not in st.session_state:
        given = st.context.cookies.get(OWNER_COOKIE, "")
        # Only a browser sends cookies (AppTest's stand-in client gives placeholders), and only ids we hand out count.
        mine = isinstance(given, str) and presence.is_owner_id(given)
        st.session_state.owner = given if mine else uuid.uuid4().hex
    return st.session_state.owner


def keep_owner() -> None:
    """Have the browser keep the student's id in its cookie, when it did not send that id with this session.

    Streamlit reads cookies but can't set them, so a line of script in the page does; the id is 32 hex digits
    (presence.is_owner_id), nothing that could break out of the script."""
    if st.context.cookies.get(OWNER_COOKIE) == owner():
        return
    secure = "; Secure" if (st.context.url or "").startswith("https:") else ""
    cookie = f"{OWNER_COOKIE}={owner()}; Path=/; Max-Age={COOKIE_DAYS * 86400}; SameSite=Strict{secure}"
    st.html(f"<script>document.cookie = {cookie!r};</script>", unsafe_allow_javascript=True)


def share_link() -> str:
    """This page's link with the current config (and class and lesson) and without the student's id: what a teacher
    hands out."""
    return _link(_params(config()))


def lesson_link(step: int) -> str:
    """The link to the current config and class as a lesson taught up to this step: the teacher's."""
    taught = Lesson.of(step, config())
    return _link(_params(config(), taught, taught.token(_secret())))


def _link(params: dict[str, str]) -> str:
    base = (st.context.url or "").split("?")[0]
    return f"{base}?{urlencode(params)}" if params else base


def teacher_key() -> str | None:
    """The server's teacher key: $DRILL_TEACHER_KEY, else teacher_key in Streamlit's secrets; None when unset."""
    if key := os.environ.get(classroom.TEACHER_KEY_ENV):
        return key
    try:
        return st.secrets.get("teacher_key") or None
    except StreamlitSecretNotFoundError:  # no secrets file at all
        return None


def is_teacher() -> bool:
    """Whether this tab's teacher key was checked (on the Class page)."""
    return bool(st.session_state.get("teacher"))


def _secret() -> bytes | None:
    return secret_of(teacher_key())


def lesson() -> Lesson | None:
    """The lesson this tab is on: the link's `lesson=`, read once a session so it survives page switches as the
    config does; None shows every control. A lesson= that can't be used is said once, on the page."""
    if "lesson" not in st.session_state:
        given = st.query_params.get(LESSON_PARAM, "")
        st.session_state.lesson, st.session_state.lesson_token = None, given
        if given:
            try:
                st.session_state.lesson = Lesson.from_token(given, _secret())
            except LessonError as error:
                st.session_state.lesson_notes = [str(error)]
    return st.session_state.lesson


def shows(field: str) -> bool:
    """Whether the page draws this field's control (a dotted name): all but those a lesson has not reached."""
    taught = lesson()
    return taught is None or taught.shows(field)


def lesson_note() -> None:
    """On a page with controls, what the lesson hides and the values it keeps them at."""
    if (taught := lesson()) is not None and taught.hidden_topics:
        st.info(taught.hidden_note(), icon="📚")


def _in_lesson(cfg: RunConfig) -> RunConfig:
    """cfg as the lesson allows it (its hidden controls at their locked values), saying what that changed; raises
    ConfigError when the locked values can't go with cfg."""
    taught = lesson()
    if taught is None:
        return cfg
    cfg, notes = taught.apply(cfg)
    if notes:
        st.session_state.lesson_notes = notes
    return cfg


def link_params() -> dict[str, str]:
    """The query of this tab's link to its current config: what a page switch puts in the address bar."""
    return _params(config())


def _params(cfg: RunConfig, taught: Lesson | None = None, token: str = "") -> dict[str, str]:
    """The link's query for cfg: its settings (in a lesson, the visible ones), the class and the lesson (this tab's
    unless given)."""
    if taught is None:
        taught, token = lesson(), st.session_state.get("lesson_token", "")
    if taught is None:
        return cfg.to_query_params() | _class_params()
    return taught.visible_params(cfg) | _class_params() | {LESSON_PARAM: token}


def class_code() -> str | None:
    """The class this tab is in: the link's `class=`, read once a session so it survives page switches as the
    config does (or the code typed on the Class page); without one, the class the student joined last (their
    runs are its); None outside a class. A code that can't be used is said once, on the page."""
    if "class_code" not in st.session_state:
        given = st.query_params.get(classroom.CLASS_PARAM, "")
        code = next(iter(manager().store.classes_of(owner())), None)
        if given:
            try:
                code = classroom.check_code(given)
            except classroom.ClassError as error:
                code, st.session_state.class_error = None, f"{error} You are in no class."
        st.session_state.class_code = code
    return st.session_state.class_code


def set_class(code: str) -> None:
    """Put this tab in a class (a checked code) and its code in the URL."""
    st.session_state.class_code = code
    _sync_url(config())


def _class_params() -> dict[str, str]:
    code = class_code()
    return {classroom.CLASS_PARAM: code} if code else {}


def init_config() -> None:
    """On a session's first run, take the config from the URL (or the default preset); a bad link falls back.

    On later runs, put the config back into the URL: moving between pages clears the query string.
    """
    if "config" in st.session_state:
        _sync_url(st.session_state.config)
        return
    lesson()  # read before the URL is rewritten below
    # Every value of every key, so a setting given twice is refused as it is on every other path, not taken once.
    pairs = [(key, value) for key in st.query_params if key not in NOT_CONFIG for value in st.query_params.get_all(key)]
    cfg = _default_in_lesson()
    if pairs:
        try:
            cfg = _in_lesson(RunConfig.from_query(urlencode(pairs)))
        except ConfigError as error:
            st.session_state.link_error = controls.config_message(error, {})
    st.session_state.config = cfg
    st.session_state.config_version = 0
    _sync_url(cfg)


def _default_in_lesson() -> RunConfig:
    """The default model, under the lesson if it allows it; a lesson that allows not even that is left."""
    cfg = get_preset(DEFAULT_PRESET).config
    try:
        return _in_lesson(cfg)
    except ConfigError as error:
        st.session_state.lesson = None
        st.session_state.lesson_notes = [f"The lesson link can't be used ({error}), so every control is shown."]
        return cfg


def config() -> RunConfig:
    """The current config."""
    return st.session_state.config


def version() -> int:
    """Bumped whenever the config is replaced from outside the widgets, so keyed widgets re-read it."""
    return st.session_state.get("config_version", 0)


def set_config(cfg: RunConfig, from_widgets: bool = True) -> bool:
    """Make cfg current (as the lesson allows it) and put it in the URL; from_widgets=False also resets the widgets
    to it. A config the lesson can't take leaves the current one, says why, and gives False."""
    try:
        cfg = _in_lesson(cfg)
    except ConfigError as error:
        message = controls.config_message(error, {})
        st.session_state.lesson_notes = [f"That model can't be loaded in this lesson: {message} The model stays."]
        return False
    st.session_state.config = cfg
    if not from_widgets:
        st.session_state.config_version = version() + 1
    _sync_url(cfg)
    return True


def run_label() -> str:
    """The label a run of the current config starts with: its preset, or the sidebar's preset it was edited from."""
    return presets.run_label(config(), st.session_state.get("preset_name"))


def load_preset(name: str) -> bool:
    """Make a preset the current config and the sidebar's base, resetting every widget to it; False when the lesson
    can't take it (and says why)."""
    if not set_config(get_preset(name).config, from_widgets=False):
        return False
    st.session_state.preset_name = name
    return True


def _sync_url(cfg: RunConfig) -> None:
    params = _params(cfg)
    if params != st.query_params.to_dict():
        st.query_params.clear()
        st.query_params.update(params)


def apply_config(**sections) -> tuple[RunConfig | None, ConfigError | None]:
    """The current config with these sections changed: (it, None) and made current if valid, else (None, why).

    A model toggle that changes drops the layers' own settings of it (drill.stack.follow_toggles); the stack
    editor's widgets then start over from the new stack."""
    cfg = config()
    given = sections.get("model", {}).get("layers", cfg.model.layers)
    if "model" in sections:
        sections["model"] = stack.follow_toggles(cfg.model, sections["model"])
    try:
        new = _in_lesson(cfg.replace(**sections))
    except ConfigError as error:
        return None, error
    # A stack whose own settings the lesson dropped resets the editors to it, even when the model is unchanged.
    if new != cfg or new.model.layers != given:
        set_config(new, from_widgets=new.model.layers == given)
    return new, None


def _key(section, name: str, key: str | None = None) -> str:
    """A widget's key (the field's dotted name unless given), tied to the config version so a new config resets it."""
    return f"{key or f'{section.SECTION}.{name}'}_{version()}"


def _bound(section, name: str, key: str | None = None) -> dict:
    """The options that tie a widget to its config field: key, help text, and a change callback.

    The callback applies the change before whatever runs next: a student who flips a toggle and at once opens
    another page (before this page has rerun) keeps the change, where the page's own read would never happen.
    """
    widget_key = _key(section, name, key)
    help_text = field_help(section, name)
    return {"key": widget_key, "help": help_text, "on_change": _keep, "args": (section, name, widget_key)}


def _keep(section, name: str, widget_key: str) -> None:
    value = st.session_state.get(widget_key)
    if value is not None:
        apply_config(**{section.SECTION: {name: value}})  # an invalid value is explained when the page draws


# Each field's widget is labelled by drill.controls.LABELS, the names its messages use.


def field_slider(section, name: str, value, step, *, key: str | None = None) -> float | int:
    """A slider over a config field's declared range, keyed to the config version, with the field's help text."""
    low, high = field_range(section, name)
    cast = int if isinstance(value, int) and not isinstance(value, bool) and isinstance(step, int) else float
    return st.slider(
        _label(section, name), cast(low), cast(high), cast(value), cast(step), **_bound(section, name, key)
    )


def field_number(section, name: str, value, step, fmt: str | None = None) -> float | int:
    """A number box over a config field's declared range (for values a slider can't place well, like 0.0005)."""
    low, high = field_range(section, name)
    cast = int if isinstance(step, int) else float
    bounds = (cast(low), cast(high), cast(value), cast(step))
    return st.number_input(_label(section, name), *bounds, format=fmt, **_bound(section, name))


def field_choice(section, name: str, value: str, *, key=None, dropdown=False, **options) -> str:
    """A segmented control (or, with dropdown, a select box) over a config field's choices, shown by their labels."""
    choices = field_choices(section, name)
    labels = controls.VALUE_LABELS[f"{section.SECTION}.{name}"]
    shared = {"format_func": labels.get, **_bound(section, name, key)}
    if dropdown:
        return st.selectbox(_label(section, name), choices, index=choices.index(value), **shared, **options)
    return st.segmented_control(_label(section, name), choices, default=value, required=True, **shared, **options)


def field_text(section, name: str, value: str, *, key: str | None = None) -> str:
    """A text box for a free-text config field (validated when the config is made), with the field's help text."""
    return st.text_input(_label(section, name), value, **_bound(section, name, key))


def field_toggle(section, name: str, value: bool, *, key: str | None = None) -> bool:
    """A toggle for a config flag, with the field's help text."""
    return st.toggle(_label(section, name), value, **_bound(section, name, key))


def field_widgets(section, current, fields) -> dict:
    """One widget per (field, step, "slider"/"number"[, format]) control, reading and returning the values."""
    make = {"slider": field_slider, "number": field_number}
    values = {}
    for name, step, kind, *fmt in fields:
        values[name] = make[kind](section, name, getattr(current, name), step, *fmt)
    return values


def _label(section, name: str) -> str:
    return controls.LABELS[f"{section.SECTION}.{name}"]


def config_error(error: ConfigError, sections: dict[str, dict], kept: str) -> None:
    """A config the page's widgets make that can't be used, told in the page's labels, then what stays current."""
    st.error(f"{controls.config_message(error, controls.changed_fields(config(), sections))} {kept}")


def show_result(epochs: list[Epoch], params: int | None) -> None:
    """A run's Result line and its Analysis, in green once it meets the target."""
    verdict = analyse(epochs, params or 0)
    st.markdown(runview.result_line(verdict, epochs))
    (st.success if verdict.meets_target else st.info)(f"**Analysis:** {verdict.text}")


def file_upload(label: str, types: list[str], key: str, max_bytes: int):
    """A file uploader that refuses files over max_bytes (Streamlit takes the limit in whole MB)."""
    return st.file_uploader(label, type=types, key=key, max_upload_size=max_bytes // 2**20)


@contextmanager
def explained(what: str):
    """Turn any error in a part of a page into a message there: no traceback reaches the page."""
    try:
        yield
    except Exception as error:
        log.exception("%s failed", what)
        st.error(f"{what} failed ({type(error).__name__}: {error}).")
