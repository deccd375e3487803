"""Benchmark (not a test): Start to a run's first curve point on the threads backend and on a Ray cluster, side by
side in one process, through the job manager the app uses, with no browser and no page poll in the way.

The load test times the first point as a page sees it, so the page's poll (1-4 s) is in it; this times the manager's
own first epoch event, alternating the backends run by run, with the server warm as a class finds it (MNIST loaded,
the Ray backend's warm actors up). Ray is started here, so run it in a loopback-only namespace, pinned to one core:

    unshare -n sh -c 'ip link set lo up && taskset -c 1 python tests/first_point.py --repeats 7 \
        --out results/first-point'
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conftest import simulated_cluster  # noqa: E402

from drill.backends import ThreadBackend  # noqa: E402
from drill.data import load_mnist  # noqa: E402
from drill.jobs import JobManager  # noqa: E402
from drill.pack import machine_name  # noqa: E402
from drill.presets import get_preset  # noqa: E402
from drill.raybackend import RayBackend  # noqa: E402
from drill.run_record import ACTIVE  # noqa: E402

TIMEOUT_S = 600.0  # one run's first point; far beyond what a 1-epoch run of 6,000 images takes on one core
WARM_TIMEOUT_S = 120.0


def first_point(manager: JobManager, config) -> tuple[float, float]:
    """(seconds from submit to the first epoch event, that epoch's own training seconds) of one run."""
    started = time.perf_counter()
    ticket = manager.submit("bench", config)
    while True:
        snapshot = manager.snapshot(ticket.id)
        if snapshot.epochs:
            return time.perf_counter() - started, snapshot.epochs[0].seconds
        if snapshot.status not in ACTIVE:
            raise RuntimeError(f"a bench run {snapshot.status}: {snapshot.reason}")
        if time.perf_counter() - started > TIMEOUT_S:
            raise RuntimeError(f"no first point after {TIMEOUT_S:.0f} s")
        manager.touch("bench")
        time.sleep(0.01)


def wait_warm(backend: RayBackend) -> None:
    """Until the backend's warm actors have loaded MNIST, as on a server started before the class came."""
    import ray

    deadline = time.monotonic() + WARM_TIMEOUT_S
    while time.monotonic() < deadline:
        with backend._lock:
            idle = list(backend._idle)
        if idle and len(idle) >= min(backend._warm, backend.slots()):
            ray.get([actor.warm.remote() for actor in idle], timeout=WARM_TIMEOUT_S)
            return
        time.sleep(0.1)
    raise RuntimeError(f"the Ray backend's warm actors were not up after {WARM_TIMEOUT_S:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="runs per backend (odd: the median is one run)")
    parser.add_argument("--subset", type=int, default=6000, help="training images of each 1-epoch quick run")
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    args = parser.parse_args()

    load_mnist()  # the Train page's preview has loaded it on a server a class uses
    base = get_preset("quick").config.replace(train={"epochs": 1, "subset": args.subset, "threads": 1})
    times: dict[str, list[tuple[float, float]]] = {"threads": [], "ray": []}
    with simulated_cluster(1) as (cluster, _):
        managers = {
            "threads": JobManager(backend=ThreadBackend(1)),
            "ray": JobManager(backend=RayBackend(cluster.address, warm=1)),
        }
        try:
            wait_warm(managers["ray"].backend)
            for repeat in range(args.repeats):
                for name, manager in managers.items():
                    # A seed of its own each time: an identical run would be served from the store, not trained.
                    seed = 7000 + 2 * repeat + (name == "ray")
                    first, epoch = first_point(manager, base.replace(train={"seed": seed}))
                    times[name].append((first, epoch))
                    print(f"{name} #{repeat + 1}: first point {first:.2f} s, epoch {epoch:.2f} s", flush=True)
        finally:
            for manager in managers.values():
                manager.shutdown(timeout=60)

    report = {"machine": machine_name(), "repeats": args.repeats, "subset": args.subset}
    for name, pairs in times.items():
        report[name] = {
            "first_point_s": [round(first, 3) for first, _ in pairs],
            "epoch_s": [round(epoch, 3) for _, epoch in pairs],
            "first_point_median_s": round(statistics.median(first for first, _ in pairs), 2),
            "outside_the_epoch_median_s": round(statistics.median(first - epoch for first, epoch in pairs), 2),
        }
    gap = report["ray"]["first_point_median_s"] - report["threads"]["first_point_median_s"]
    report["ray_minus_threads_s"] = round(gap, 2)
    lines = [
        f"Start to first curve point, {args.repeats} one-epoch quick runs of {args.subset:,} images per backend, "
        f"alternating, one core, {report['machine']}",
        "",
        "| backend | first point, median | of it outside the epoch, median | every run |",
        "|---|---:|---:|---|",
    ]
    for name in times:
        row = report[name]
        runs = ", ".join(f"{s:.2f}" for s in row["first_point_s"])
        lines.append(
            f"| {name} | {row['first_point_median_s']:.2f} s | {row['outside_the_epoch_median_s']:.2f} s | {runs} |"
        )
    lines += ["", f"Ray minus threads, medians: {gap:+.2f} s"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out + ".json").write_text(json.dumps(report, indent=2))
        Path(args.out + ".md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
