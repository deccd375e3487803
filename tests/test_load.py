"""A small class through tests/loadtest.py: real browsers against a real server, both modes, every figure checked.

The 30-session runs that docs/class-load.md reports are made by the same script (see its docstring); here 4 students
train 1-epoch runs on 2,000 images, so CI stays short.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import need, need_module
from loadtest import parse_args, run_load, spy_shares
from streamlit_server import CHROMIUM

pytestmark = pytest.mark.browser

SMALL_CLASS = ["--sessions", "4", "--epochs", "1", "--subset", "2000", "--timeout", "300", "--grace", "120"]


@pytest.fixture(autouse=True)
def needs_chromium():
    need(Path(CHROMIUM).exists(), "Debian's chromium is not installed (scripts/test.sh installs it when run as root)")
    need_module("playwright.async_api", "the playwright package is not installed (requirements-dev.txt)")


def check_common(report: dict) -> None:
    assert report["sessions_failed"] == []
    assert all(r["status_after_start"] for r in report["per_session"])
    assert report["store"]["every_student_has_one_ticket"], report["store"]
    assert report["store"]["statuses"] == ["finished"]
    assert report["memory_under_limit"], report["peak_rss_mb"]
    assert report["threads_back_to_baseline_s"] is not None, (report["baseline_threads"], report["final_threads"])


def test_a_class_on_the_same_step_trains_one_run_and_everyone_gets_its_curves():
    report = run_load(parse_args([*SMALL_CLASS, "--mode", "same"]))
    check_common(report)
    assert report["store"]["runs"] == report["store"]["runs_complete"] == 1


def test_a_class_on_different_configs_trains_every_run_to_the_end():
    report = run_load(parse_args([*SMALL_CLASS, "--mode", "different"]))
    check_common(report)
    assert report["store"]["runs"] == report["store"]["runs_complete"] == 4


def test_a_class_pinned_apart_from_its_browsers_trains_in_worker_processes_and_reports_the_cpu_split():
    pinned = ["--backend", "processes", "--max-jobs", "1", "--server-cores", "0", "--browser-cores", "1"]
    report = run_load(parse_args([*SMALL_CLASS, "--mode", "different", "--alone-first", *pinned]))
    check_common(report)
    assert report["store"]["runs"] == report["store"]["runs_complete"] == 5  # the class's four and the one alone
    assert (report["backend"], report["server_cores"], report["browser_cores"]) == ("processes", "0", "1")
    # The workers did the training: their CPU time is most of the server's (each run is 1 epoch of 2,000 images).
    assert report["server_cpu_s"]["workers"] > 0 and report["epoch_alone_s"] and report["epoch_under_load_p50_s"]
    assert 0 < report["server_cores_busy"]
    # Whether runs ever waited depends on how far apart the tabs clicked; when they did, the core's busy share
    # is a share of one core.
    busy = report["server_cores_busy_while_runs_wait"]
    assert 0 < busy <= 1.05 if report["runs_waiting_s"] else busy is None, (busy, report["runs_waiting_s"])
    assert report["first_point_alone_s"] > 0


def test_py_spys_samples_become_shares_of_time_by_kind_of_thread():
    raw = (
        "thread (11): drill-job-1;train (train.py:300);forward (model.py:150) 30\n"
        "thread (11): drill-job-1;train (train.py:301) 10\n"
        "thread (12): ScriptRunner.scriptThread;_run_script (exec_code.py:88) 25\n"
        "thread (13): MainThread;run_forever (base_events.py:607) 5\n"
    )
    expected = {"training": 0.4, "script runs (Streamlit)": 0.25, "server (event loop, others)": 0.05}
    assert spy_shares(raw, 100) == expected


@pytest.mark.ray
def test_a_class_on_a_ray_cluster_trains_every_run_there_and_the_server_trains_none(ray_cluster):
    cluster, _ = ray_cluster
    ray = ["--backend", "ray", "--ray-address", cluster.address, "--alone-first"]
    report = run_load(parse_args([*SMALL_CLASS, "--mode", "different", *ray]))
    check_common(report)
    assert report["store"]["runs"] == report["store"]["runs_complete"] == 5
    assert report["server_cpu_s"]["workers"] == 0  # no training process of the server's own
    assert report["first_point_alone_s"] is not None
