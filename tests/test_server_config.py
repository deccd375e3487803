"""The server settings a classroom depends on (.streamlit/config.toml), as Streamlit itself reads them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

READ = (
    "import json, sys, streamlit.config as c; c.get_config_options(force_reparse=True); "
    "print(json.dumps({name: c.get_option(name) for name in sys.argv[1:]}))"
)


@pytest.fixture(scope="module")
def options() -> dict:
    """The options as `streamlit run` sees them from the repo root (in a fresh process: the config is global)."""
    names = ["runner.postScriptGC", "server.fileWatcherType", "client.toolbarMode"]
    shown = subprocess.run(
        [sys.executable, "-c", READ, *names], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(shown.stdout)


def test_no_full_garbage_collection_after_every_script_run(options):
    # Each collection held the GIL for 100-170 ms per page poll: a class watching one run starved its training.
    assert options["runner.postScriptGC"] is False


def test_the_served_app_does_not_poll_its_source_files(options):
    assert options["server.fileWatcherType"] == "none"


def test_a_served_app_shows_no_deploy_button(options):
    assert options["client.toolbarMode"] == "viewer"
