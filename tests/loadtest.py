"""A classroom on one server: N real browser sessions against a real `streamlit run` on loopback.

Each session opens the Build page of the quick demo, flips a toggle, goes to Train and clicks Start, then waits for
its first curve point and its Result. In "same" mode every student asks for the same run (a class on one step); in
"different" mode each asks for its own seed, so every run trains and most wait in the queue. The server's memory
and thread count are sampled throughout; the run store is read afterwards to check that every student's run is
there, finished with its full history, none lost and none trained twice.

    python tests/loadtest.py --sessions 30 --mode same --out results/load-same
    python tests/loadtest.py --sessions 30 --mode different --out results/load-different

and, with the server and its training on core 0 and the browsers on core 1, each backend (Ray's simulated nodes
are started here, so only in a loopback-only network namespace):

    python tests/loadtest.py --sessions 30 --mode different --epochs 1 --subset 6000 --max-jobs 1 --alone-first \
        --server-cores 0 --browser-cores 1 --backend threads --out results/load-threads-pinned
    unshare -n sh -c 'ip link set lo up && python tests/loadtest.py --sessions 30 --mode different --epochs 1 \
        --subset 6000 --alone-first --server-cores 0 --browser-cores 1 --backend ray --out results/load-ray-pinned'

writes OUT.json and OUT.md. tests/test_load.py runs a small version of both modes in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conftest import simulated_cluster  # noqa: E402
from streamlit_server import CHROMIUM, CHROMIUM_ARGS, serve  # noqa: E402

from drill import liveness  # noqa: E402
from drill.backends import default_slots  # noqa: E402
from drill.presets import BY_NAME  # noqa: E402

IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
STATUS = re.compile(r"is queued: \d+ run\(s\) ahead|: running|: finished")
QUEUED = re.compile(r"is queued: (\d+) run\(s\) ahead")
EPOCH_POINT = re.compile(r"Epoch \d+ of \d+: train")
MEMORY_LIMIT_MB = 1536
# A run's status shows in the full rerun that Start makes. A page that shows it only much later had lost its live
# view, and its student saw nothing happen (the page then caught up when the run ended).
STATUS_LIMIT_S = 60.0
CONSOLE_KEPT = 40
SOLO = 999  # the session number of the run trained alone before the class (--alone-first)
SOLO_SEED = 100 + SOLO
WARM_UP_PAGES = (("", "drill-down"), ("/build", "Build"), ("/train", "Train"), ("/compare", "Compare"))


@contextlib.contextmanager
def on_cores(cores: str | None):
    """This process, and every process it starts meanwhile, on these cores (e.g. "1"); all of them when None."""
    before = os.sched_getaffinity(0)
    if cores:
        os.sched_setaffinity(0, {int(core) for core in cores.split(",")})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used, all its threads (user + system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The processes a process started (the server's training workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def cpu_split(pid: int) -> dict[str, float]:
    """CPU seconds so far of the server process (serving, and training on the threads backend) and of its workers."""
    return {"server": cpu_seconds(pid), "workers": sum(cpu_seconds(child) for child in children(pid))}


def process_stats(pid: int) -> tuple[float, int]:
    """(resident memory in MB, thread count) of a process, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["Threads"])


class Sampler(threading.Thread):
    """Samples the server every 0.2 s until stopped: its memory and threads (keeping the peaks), and how busy its
    cores are while runs wait in the queue (the store holds more active runs than there are training slots)."""

    def __init__(self, pid: int, store: Path, slots: int):
        super().__init__(daemon=True)
        self.pid, self.store, self.slots = pid, store, slots
        self.peak_rss_mb = 0.0
        self.peak_threads = 0
        self.queued_s = self.queued_cpu_s = 0.0
        self.done = threading.Event()

    def waiting(self) -> int:
        """How many runs wait for a training slot (0 while the store can't be read)."""
        try:
            with contextlib.closing(sqlite3.connect(f"file:{self.store}?mode=ro", uri=True, timeout=1)) as db:
                active = db.execute("SELECT count(*) FROM runs WHERE status IN ('queued', 'running')").fetchone()[0]
        except sqlite3.Error:
            return 0
        return max(0, active - self.slots)

    def run(self) -> None:
        then, cpu_then, waiting = time.monotonic(), sum(cpu_split(self.pid).values()), False
        while not self.done.wait(0.2):
            try:
                rss, threads = process_stats(self.pid)
                now, cpu_now = time.monotonic(), sum(cpu_split(self.pid).values())
            except (OSError, KeyError):
                return
            self.peak_rss_mb = max(self.peak_rss_mb, rss)
            self.peak_threads = max(self.peak_threads, threads)
            if waiting:  # the interval began with runs waiting
                self.queued_s += now - then
                self.queued_cpu_s += cpu_now - cpu_then
            then, cpu_then, waiting = now, cpu_now, self.waiting() > 0


PY_SPY_RATE = 100  # samples a second


class GilProfile(threading.Thread):
    """Once a third of the class's runs wait in the queue (every tab is open and polling by then, and the queue stays
    full for a while), py-spy samples the server for `seconds` twice: as it is (a thread is sampled only
    while it is not blocked, so the training thread's samples against those asked for are the share of time it could
    run: waiting for the GIL counts as blocked) and with --gil (only the thread holding the GIL is sampled: by whom
    it is held, and for how much of the time). The server's CPU over each window is measured beside it."""

    def __init__(self, pid: int, sampler: Sampler, seconds: int, work: Path, sessions: int):
        super().__init__(daemon=True)
        self.pid, self.sampler, self.seconds, self.work = pid, sampler, seconds, work
        self.enough = max(1, sessions // 3)
        self.report: dict = {}

    def run(self) -> None:
        while not self.sampler.done.is_set() and self.sampler.waiting() < self.enough:
            self.sampler.done.wait(0.5)
        for mode, flags in (("unblocked", []), ("holding the GIL", ["--gil"])):
            if self.sampler.done.is_set():
                return
            out = self.work / f"py-spy-{len(self.report)}.txt"
            command = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(self.pid), "--nonblocking"]
            command += ["--duration", str(self.seconds), "--rate", str(PY_SPY_RATE), "--threads", *flags]
            cpu_before, began = cpu_seconds(self.pid), time.monotonic()
            done = subprocess.run(
                [*command, "--format", "raw", "-o", str(out)],
                capture_output=True,
                text=True,
                timeout=self.seconds + 120,
            )
            busy = (cpu_seconds(self.pid) - cpu_before) / (time.monotonic() - began)
            if done.returncode != 0 or not out.exists():
                self.report[mode] = {"error": (done.stderr or done.stdout).strip().splitlines()[-1:]}
                continue
            self.report[mode] = {
                "share_of_time": spy_shares(out.read_text(), self.seconds * PY_SPY_RATE),
                "server_core_busy": round(busy, 2),
            }


def spy_shares(raw: str, asked: int) -> dict[str, float]:
    """From py-spy's raw output (`thread (TID): NAME;frame;...;frame COUNT` a line), the share of the samples asked
    for that each kind of thread took, largest first."""
    by_thread = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        by_thread[_thread_kind(stack.split(";", 1)[0].split(": ", 1)[-1])] += int(count)
    return {kind: round(n / asked, 3) for kind, n in by_thread.most_common()}


def _thread_kind(name: str) -> str:
    """A sampled thread by what it does: training, a session's script run, or the rest of the server."""
    if name.startswith("drill-"):
        return "training"
    if "ScriptRunner" in name:
        return "script runs (Streamlit)"
    return "server (event loop, others)"


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile by the nearest-rank method (None for no values)."""
    if not values:
        return None
    ranked = sorted(values)
    return ranked[max(0, math.ceil(q / 100 * len(ranked)) - 1)]


def session_config(n: int, mode: str, epochs: int | None, subset: int | None):
    """The quick demo, with the student's own seed in "different" mode (and always for the solo run)."""
    changes = {k: v for k, v in (("epochs", epochs), ("subset", subset)) if v}
    if mode == "different" or n == SOLO:
        changes["seed"] = 100 + n
    return BY_NAME["quick"].config.replace(train=changes)


async def one_session(browser, url: str, n: int, args) -> dict:
    """One student: open the app, flip a toggle, start a run, wait for its first point and its Result."""
    out: dict = {"session": n}
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    page.set_default_timeout(args.timeout * 1000)
    console: list[str] = []  # the browser's side of a failure: Streamlit's frontend logs its errors here
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"[:500]))
    try:
        query = session_config(n, args.mode, args.epochs, args.subset).to_query()
        out["stage"] = "first render"
        opened = time.monotonic()
        await page.goto(f"{url}/build?{query}")
        await page.get_by_role("heading", name=re.compile("Build")).first.wait_for()
        out["first_render_s"] = time.monotonic() - opened
        await page.wait_for_selector(IDLE)
        out["stage"] = "toggle"
        await page.get_by_text("Bias in convolutions", exact=True).click()
        # The toggle has landed once the link holds it (a student sees the parameter count change first).
        await page.wait_for_url(re.compile(r"[?&]bias=1(&|$)"))
        await page.wait_for_selector(IDLE)
        out["stage"] = "Train page"
        await page.locator("[data-testid='stSidebarNav']").get_by_text("Train", exact=True).click()
        start = page.get_by_test_id("stMainBlockContainer").get_by_role("button", name="Start", exact=True)
        await start.wait_for()
        out["train_render_s"] = time.monotonic() - opened - out["first_render_s"]
        await page.wait_for_selector(IDLE)
        out["stage"] = "run status after Start"
        clicked = time.monotonic()
        await start.click()
        status = (await page.get_by_text(STATUS).first.inner_text()).strip()
        out["status_s"] = time.monotonic() - clicked
        out["status_after_start"] = status
        if match := QUEUED.search(status):
            out["queue_position"] = int(match.group(1)) + 1
        out["stage"] = "first curve point"
        await page.get_by_text(EPOCH_POINT).first.wait_for()
        out["first_point_s"] = time.monotonic() - clicked
        out["stage"] = "Result"
        await page.get_by_text("Result:").first.wait_for()
        out["finished_s"] = time.monotonic() - clicked
        del out["stage"]
        out["exceptions_on_page"] = await page.locator("[data-testid='stException']").count()
    except Exception as error:  # a session that fails is a finding of the report, not a crash of the script
        out["error"] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
        out["screenshot"] = str(args.work / f"session-{n}.png")
        out["url"] = page.url
        out["console"] = console[-CONSOLE_KEPT:]
        await page.screenshot(path=out["screenshot"], full_page=True)
    finally:
        await context.close()
    return out


async def drive(url: str, args, warm_up: bool = False, solo: bool = False) -> list[dict]:
    """Run every session at once; with solo, one session of its own seed alone; with warm_up, open each page once
    in one tab and close it."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            if solo:
                return [await one_session(browser, url, SOLO, args)]
            if not warm_up:
                return await asyncio.gather(*(one_session(browser, url, n, args) for n in range(args.sessions)))
            context = await browser.new_context()
            page = await context.new_page()
            page.set_default_timeout(args.timeout * 1000)
            for path, heading in WARM_UP_PAGES:
                await page.goto(url + path)
                await page.get_by_role("heading", name=re.compile(heading)).first.wait_for()
                await page.wait_for_selector(IDLE)
            await context.close()
            return []
        finally:
            await browser.close()


def epoch_seconds(path: Path, seeds: set[int]) -> list[float]:
    """Training seconds of every epoch of the runs with these seeds in the store (the test pass left out)."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT config, epochs FROM runs").fetchall()
    return [
        epoch["seconds"]
        for config, epochs in rows
        if json.loads(config)["train"]["seed"] in seeds
        for epoch in json.loads(epochs)
    ]


def store_check(path: Path, sessions: int, epochs: int) -> dict:
    """What the run store holds after the load: tickets, distinct runs, and whether each run is complete."""
    with sqlite3.connect(path) as db:
        tickets = db.execute("SELECT count(*), count(DISTINCT owner) FROM tickets").fetchone()
        runs = db.execute("SELECT id, status, epochs, batch_losses FROM runs").fetchall()
    complete = [r for r in runs if r[1] == "finished" and len(json.loads(r[2])) == epochs and json.loads(r[3])]
    return {
        "tickets": tickets[0],
        "students_with_tickets": tickets[1],
        "runs": len(runs),
        "runs_complete": len(complete),
        "statuses": sorted({r[1] for r in runs}),
        "every_student_has_one_ticket": tickets == (sessions, sessions),
    }


def settle_threads(url: str, pid: int, baseline: int, args) -> float | None:
    """Seconds until the server's threads are back to the baseline after the tabs closed (None: not within grace).

    Streamlit's server keeps idle worker threads (AnyIO's pool) and lets go of those idle over 10 s only when new
    work arrives, so between checks one tab visits the pages, as the next student would.
    """
    closed = time.monotonic()
    while time.monotonic() - closed < args.grace:
        if process_stats(pid)[1] <= baseline:
            return time.monotonic() - closed
        asyncio.run(drive(url, args, warm_up=True))
    return None


def run_load(args) -> dict:
    """Serve the app, drive the sessions, and gather the report."""
    work = args.work = Path(tempfile.mkdtemp(prefix="drill-load-"))
    store = work / "runs.sqlite"
    log = work / "streamlit.log"
    env = {"DRILL_RUNS_DB": str(store), "DRILL_BACKEND": args.backend}
    if args.max_jobs:
        env["DRILL_MAX_JOBS"] = str(args.max_jobs)
    slots = args.ray_nodes if args.backend == "ray" else args.max_jobs or default_slots()
    with contextlib.ExitStack() as stack:
        if args.backend == "ray" and not args.ray_address:  # it trains on the server's cores, as threads would
            with on_cores(args.server_cores):
                cluster, _ = stack.enter_context(simulated_cluster(args.ray_nodes))
            args.ray_address = cluster.address
        if args.backend == "ray":
            env["RAY_ADDRESS"] = args.ray_address
        url, process = stack.enter_context(serve(extra_env=env, log_path=log, cores=args.server_cores))
        with on_cores(args.browser_cores):  # the browsers this process starts from here on run on these cores
            # The baseline is the idle server as one tab browses it: Streamlit and torch start their worker threads on
            # first use and keep them, and the web server's pool of idle workers (AnyIO's) varies by a thread or two
            # from visit to visit, so the most seen over three visits.
            baseline_threads = 0
            for _ in range(3):
                asyncio.run(drive(url, args, warm_up=True))
                baseline_threads = max(baseline_threads, process_stats(process.pid)[1])
            alone, solo = None, {}
            if args.alone_first:  # one student's run with nobody else on the server: what "slower" is measured by
                (solo,) = asyncio.run(drive(url, args, solo=True))
                alone = epoch_seconds(store, {SOLO_SEED})
            sampler = Sampler(process.pid, store, slots)
            sampler.start()
            profile = GilProfile(process.pid, sampler, args.py_spy, work, args.sessions)
            if args.py_spy:
                profile.start()
            cpu_before = cpu_split(process.pid)
            began = time.monotonic()
            results = asyncio.run(drive(url, args))
            elapsed = time.monotonic() - began
            cpu_used = {part: round(t - cpu_before[part], 1) for part, t in cpu_split(process.pid).items()}
            threads_back_s = settle_threads(url, process.pid, baseline_threads, args)
            final_rss, final_threads = process_stats(process.pid)
            sampler.done.set()
            sampler.join()
            if args.py_spy:
                profile.join()
    epochs = session_config(0, args.mode, args.epochs, args.subset).train.epochs
    renders = [r["first_render_s"] for r in results if "first_render_s" in r]
    first_points = [r["first_point_s"] for r in results if "first_point_s" in r]
    statuses = [r["status_s"] for r in results if "status_s" in r]
    class_seeds = {session_config(n, args.mode, args.epochs, args.subset).train.seed for n in range(args.sessions)}
    under_load = epoch_seconds(store, class_seeds)
    server_cores = len(args.server_cores.split(",")) if args.server_cores else os.cpu_count()
    report = {
        "mode": args.mode,
        "sessions": args.sessions,
        "backend": args.backend,
        "ray_nodes": args.ray_nodes if args.backend == "ray" else None,
        "server_cores": args.server_cores or "all",
        "browser_cores": args.browser_cores or "all",
        "config": session_config(0, args.mode, args.epochs, args.subset).to_dict(),
        "seconds": round(elapsed, 1),
        "sessions_failed": [r for r in results if failed(r)],
        "first_render_p50_s": percentile(renders, 50),
        "first_render_p95_s": percentile(renders, 95),
        "status_p50_s": percentile(statuses, 50),
        "status_max_s": max(statuses) if statuses else None,
        "first_point_p50_s": percentile(first_points, 50),
        "first_point_last_s": max(first_points) if first_points else None,
        "queue_positions_seen": sorted(r["queue_position"] for r in results if "queue_position" in r),
        "epoch_alone_s": percentile(alone, 50) if alone else None,
        "first_point_alone_s": solo.get("first_point_s"),
        "epoch_under_load_p50_s": percentile(under_load, 50),
        "server_cpu_s": cpu_used,
        "server_cpu_s_per_session": round(sum(cpu_used.values()) / args.sessions, 1),
        "server_cores_busy": round(sum(cpu_used.values()) / elapsed / server_cores, 2),
        "runs_waiting_s": round(sampler.queued_s, 1),
        "server_cores_busy_while_runs_wait": (
            round(sampler.queued_cpu_s / sampler.queued_s / server_cores, 2) if sampler.queued_s else None
        ),
        "py_spy": profile.report,
        "peak_rss_mb": round(sampler.peak_rss_mb, 1),
        "final_rss_mb": round(final_rss, 1),
        "memory_under_limit": sampler.peak_rss_mb < MEMORY_LIMIT_MB,
        "baseline_threads": baseline_threads,
        "peak_threads": sampler.peak_threads,
        "final_threads": final_threads,
        "threads_back_to_baseline_s": threads_back_s,
        "live_views_redrawn": log.read_text(errors="replace").count(liveness.LIVE_VIEW_REDRAWN),
        "store": store_check(store, args.sessions + args.alone_first, epochs),  # the solo student counts too
        "per_session": results,
    }
    return report


def failed(result: dict) -> bool:
    """A session failed if it stopped with an error, showed a traceback, or showed its run's status late."""
    return "error" in result or bool(result.get("exceptions_on_page")) or result.get("status_s", 0) > STATUS_LIMIT_S


def failure_stage(result: dict) -> str:
    """Where a failed session was: the wait it timed out in, or what else made it fail."""
    if "stage" in result:
        return result["stage"]
    if result.get("exceptions_on_page"):
        return "a traceback on the page"
    return f"run status shown after {result['status_s']:.0f} s"


def failures(bad: list[dict]) -> str:
    """How many sessions failed and at which stage, e.g. "2 (Result: 2)"."""
    stages = Counter(failure_stage(r) for r in bad)
    return f"{len(bad)} ({', '.join(f'{stage}: {count}' for stage, count in stages.items())})" if bad else "0"


def markdown(report: dict) -> str:
    """The report's headline figures as a Markdown table."""

    def secs(value) -> str:
        return "-" if value is None else f"{value:.1f} s"

    store = report["store"]
    rows = [
        ("sessions (mode)", f"{report['sessions']} ({report['mode']})"),
        ("sessions with an error, a traceback or a late status", failures(report["sessions_failed"])),
        ("first render, median / p95", f"{secs(report['first_render_p50_s'])} / {secs(report['first_render_p95_s'])}"),
        (
            "Start to the run's status shown, median / max",
            f"{secs(report['status_p50_s'])} / {secs(report['status_max_s'])}",
        ),
        (
            "Start to first curve point, median / last student",
            f"{secs(report['first_point_p50_s'])} / {secs(report['first_point_last_s'])}",
        ),
        ("queue positions shown", ", ".join(map(str, report["queue_positions_seen"])) or "none (no one queued)"),
        (
            "backend; server cores / browser cores",
            f"{report['backend']}"
            + (f" ({report['ray_nodes']} simulated nodes on the server's cores)" if report["ray_nodes"] else "")
            + f"; {report['server_cores']} / {report['browser_cores']}",
        ),
        ("Start to first curve point of a run alone, before the class", secs(report["first_point_alone_s"])),
        (
            "a run's epoch: alone / median under the load",
            f"{secs(report['epoch_alone_s'])} / {secs(report['epoch_under_load_p50_s'])}",
        ),
        (
            "server CPU: its process / its training workers (per session)",
            f"{report['server_cpu_s']['server']:.0f} s / {report['server_cpu_s']['workers']:.0f} s "
            f"({report['server_cpu_s_per_session']:.1f} s)",
        ),
        ("server cores busy during the load", f"{report['server_cores_busy']:.0%}"),
        (
            "server cores busy while runs waited in the queue (for how long)",
            "-"
            if report["server_cores_busy_while_runs_wait"] is None
            else f"{report['server_cores_busy_while_runs_wait']:.0%} ({secs(report['runs_waiting_s'])})",
        ),
        *(
            (
                f"py-spy while runs waited: share of time each kind of thread was {mode}",
                "; ".join(f"{kind} {share:.0%}" for kind, share in found.get("share_of_time", {}).items())
                + (f" (server core busy {found['server_core_busy']:.0%})" if "server_core_busy" in found else "")
                or f"py-spy failed: {found.get('error')}",
            )
            for mode, found in report["py_spy"].items()
        ),
        ("server memory, peak (limit 1,536 MB)", f"{report['peak_rss_mb']:.0f} MB"),
        (
            "server threads: baseline / peak / after",
            f"{report['baseline_threads']} / {report['peak_threads']} / {report['final_threads']}",
        ),
        ("threads back to baseline after the tabs closed", secs(report["threads_back_to_baseline_s"])),
        ("live views lost and redrawn by the heartbeat", str(report["live_views_redrawn"])),
        ("tickets / runs trained / runs complete", f"{store['tickets']} / {store['runs']} / {store['runs_complete']}"),
        ("whole load", secs(report["seconds"])),
    ]
    return "\n".join(["| figure | value |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)]) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=30)
    parser.add_argument("--mode", choices=("same", "different"), default="same")
    parser.add_argument("--epochs", type=int, help="override the quick demo's epochs")
    parser.add_argument("--subset", type=int, help="override the quick demo's training images")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds any one wait of a session may take")
    parser.add_argument("--grace", type=float, default=330, help="seconds for the threads to return to baseline")
    parser.add_argument("--backend", choices=("threads", "processes", "ray"), default="threads", help="DRILL_BACKEND")
    parser.add_argument(
        "--ray-nodes", type=int, default=2, help="with --backend ray: simulated one-CPU nodes (needs `unshare -n`)"
    )
    parser.add_argument("--ray-address", help="with --backend ray: a running cluster to use instead")
    parser.add_argument("--max-jobs", type=int, help="DRILL_MAX_JOBS: runs training at once")
    parser.add_argument("--server-cores", help="CPU cores for the server and its workers, e.g. 0")
    parser.add_argument("--browser-cores", help="CPU cores for the browsers, e.g. 1")
    parser.add_argument("--alone-first", action="store_true", help="time one run alone before the class")
    parser.add_argument(
        "--py-spy", type=int, default=0, metavar="SECONDS", help="profile the server this long while runs wait"
    )
    parser.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"loadtest: {CHROMIUM} is missing (scripts/test.sh installs it when run as root)", file=sys.stderr)
        return 2
    report = run_load(args)
    table = markdown(report)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
        args.out.with_suffix(".md").write_text(table)
    return 0 if not report["sessions_failed"] and report["store"]["every_student_has_one_ticket"] else 1


if __name__ == "__main__":
    sys.exit(main())
