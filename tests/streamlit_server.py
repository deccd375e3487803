"""A real `streamlit run app.py` on a free loopback port, for the browser and load tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from conftest import wait_until

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.read().strip() == b"ok"
    except OSError:
        return False


@contextlib.contextmanager
def serve(extra_env: dict[str, str] | None = None, log_path: Path | None = None, cores: str | None = None):
    """Start the app (on these CPU cores only, e.g. "0", when given), wait until it answers its health check, yield
    (base URL, process), stop it afterwards."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, **(extra_env or {})}
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "app.py",
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]
    if cores:
        command = ["taskset", "-c", cores, *command]  # its worker processes inherit the cores
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: process.poll() is not None or _healthy(url), 90, what="streamlit health check")
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with {process.returncode}; see {log_path}")
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log_path:
            log.close()
