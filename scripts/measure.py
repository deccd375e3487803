"""Small measurements the README and docs/ quote, each written under results/ with its date, machine and command.

    .venv/bin/python scripts/measure.py gc --out results/gc-pause.json
    .venv/bin/python scripts/measure.py dropout --out results/dropout-cost.json
    .venv/bin/python scripts/measure.py cache --out results/cache-load.json

gc: how long one full garbage collection takes in a process that has run each page of the app once. Streamlit runs
one after every script run (fragments included), holding the GIL, unless `runner.postScriptGC` is false (as
.streamlit/config.toml sets it). A server many students use holds more objects, so its collections take longer.
dropout: a training step of the final network with its dropout, with nn.Dropout in its place, and without dropout.
cache: loading MNIST from the data directory's cache, as every new server process does.
checkpoint: the bytes of a run's checkpoint (model, optimizer, schedule, generators) for every lesson step.
workers: resident memory of a training worker process (DRILL_BACKEND=processes) after a run, and of this process.
ray: a one-node Ray cluster's idle memory, and a training actor's after a run (only inside a loopback-only network
namespace: `unshare -n sh -c 'ip link set lo up; .venv/bin/python scripts/measure.py ray'`).
Each takes well under a minute.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drill.pack import machine_name  # noqa: E402

PAGES = ("views/drilldown.py", "views/build.py", "views/train.py", "views/compare.py", "views/inspect.py")


def milliseconds(times: list[float]) -> dict[str, float]:
    """Median, min and max of durations in seconds, as ms."""
    return {
        f"{name}_ms": round(f(times) * 1000, 1)
        for name, f in (("median", statistics.median), ("min", min), ("max", max))
    }


def gc_pause(repeats: int) -> dict:
    """ms per full gc.collect() once every page has run in this process."""
    from streamlit.testing.v1 import AppTest

    os.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    for page in PAGES:
        at.switch_page(page).run()
        if at.exception:
            raise SystemExit(f"{page} raised: {at.exception}")
    gc.collect()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        gc.collect()
        times.append(time.perf_counter() - started)
    what = "one full gc.collect() after each page ran once (AppTest)"
    return {"what": what, "tracked_objects": len(gc.get_objects()), **milliseconds(times), "repeats": repeats}


def dropout_cost(repeats: int) -> dict:
    """ms per training step of the final network: its dropout, nn.Dropout in its place, no dropout at all."""
    import torch
    from torch import nn

    from drill.bench import timed_step
    from drill.model import Dropout, build_model, set_generator
    from drill.presets import BY_NAME
    from drill.train import make_optimizer

    # One thread, as each run has when two train side by side on two cores; two threads on a shared machine swing
    # several-fold with what else runs.
    torch.set_num_threads(1)
    cfg = BY_NAME["final"].config
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(cfg.train.batch_size, 1, 28, 28, generator=generator)
    y = torch.randint(0, 10, (cfg.train.batch_size,), generator=generator)

    def variant(replace) -> tuple:
        model = build_model(cfg.model)
        for block in model.features:
            if isinstance(block, nn.Sequential) and isinstance(getattr(block, "dropout", None), Dropout):
                block.dropout = replace(block.dropout)
        set_generator(model, generator)
        return model, make_optimizer(model.parameters(), cfg.train)

    variants = {
        "drill": variant(lambda dropout: dropout),
        "nn.Dropout": variant(lambda dropout: nn.Dropout(dropout.p)),
        "none": variant(lambda dropout: nn.Identity()),
    }

    def step(model, optimizer) -> float:
        return timed_step(model, optimizer, x, y, cfg.model.log_softmax)

    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_number in range(repeats + 3):
        # Round-robin, so a machine that slows down or speeds up meanwhile weighs on every variant alike.
        for name, (model, optimizer) in variants.items():
            elapsed = step(model, optimizer)
            if round_number >= 3:
                times[name].append(elapsed)
    median = {name: statistics.median(values) for name, values in times.items()}
    none = median["none"]
    return {
        "what": f"a training step of the final network (batch {cfg.train.batch_size}, dropout {cfg.model.dropout})",
        "threads": torch.get_num_threads(),
        "step_ms": {name: round(value * 1000, 1) for name, value in median.items()},
        "dropout_share_of_step": {
            name: round((median[name] - none) / median[name], 3) for name in ("drill", "nn.Dropout")
        },
        "repeats": repeats,
    }


def cache_load(repeats: int) -> dict:
    """Seconds to load MNIST from the cache (checksum, torch.load, verification), as a new process does."""
    from drill import data

    data.load_mnist()  # builds the cache if it is not there yet
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        data._load_uncached(data.data_dir())
        times.append(time.perf_counter() - started)
    return {"what": "MNIST from the data directory's cache", **milliseconds(times), "repeats": repeats}


def checkpoint_size(repeats: int) -> dict:
    """KB of each lesson step's checkpoint after its first epoch (a short one: the size depends on the network)."""
    from drill import data
    from drill.presets import PRESETS
    from drill.train import train

    mnist = data.load_mnist()
    sizes = {}
    for preset in PRESETS:
        short = preset.config.replace(train={"subset": 256, "epochs": 2, "batch_size": 64, "schedule": "none"})
        result = train(short, mnist, pause=lambda: True)
        sizes[preset.name] = round(len(result.checkpoint.to_bytes()) / 1024, 1)
    return {"what": "KB of a run's checkpoint after its first epoch, per lesson step", "kb": sizes}


def resident_mb(pid: int) -> float:
    """A process's resident memory in MB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise ValueError(f"no VmRSS for process {pid}")


def tiny_run(manager, owner: str = "measure") -> None:
    """One short real run through a job manager, to its end."""
    from drill.jobs import ACTIVE
    from drill.presets import get_preset

    ticket = manager.submit(owner, get_preset("final").config.replace(train={"subset": 1000, "epochs": 1}))
    while manager.snapshot(ticket.id).status in ACTIVE:
        manager.touch(owner)
        time.sleep(0.1)


def worker_memory(repeats: int) -> dict:
    """MB resident in a worker process after a run, and in the serving process that started it."""
    import torch  # noqa: F401 (the server has it loaded before any run)

    from drill.backends import ProcessBackend
    from drill.jobs import JobManager

    before = resident_mb(os.getpid())
    backend = ProcessBackend(1)
    manager = JobManager(backend=backend)
    try:
        tiny_run(manager)
        [worker] = backend._idle
        return {
            "what": "resident memory after one run of the final step on 1,000 images",
            "worker_mb": resident_mb(worker.process.pid),
            "server_before_mb": before,
            "server_after_mb": resident_mb(os.getpid()),
        }
    finally:
        manager.shutdown()


def ray_memory(repeats: int) -> dict:
    """MB resident in a one-node Ray cluster idle, in a training actor after a run, and gained by this driver."""
    import socket

    if [name for _, name in socket.if_nameindex()] != ["lo"]:
        raise SystemExit("start this inside a loopback-only network namespace (see the docstring)")
    from ray.cluster_utils import Cluster

    from drill.jobs import JobManager
    from drill.raybackend import RayBackend

    def tree_mb() -> float:
        """MB resident in every process this one started, and theirs."""
        parents = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
        tree, grew = {os.getpid()}, True
        while grew:
            more = {pid for pid, parent in parents.items() if parent in tree} - tree
            tree, grew = tree | more, bool(more)
        return round(sum(resident_mb(pid) for pid in tree - {os.getpid()} if Path(f"/proc/{pid}").exists()), 1)

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False, "object_store_memory": 100 * 2**20},
    )
    try:
        idle = tree_mb()
        driver_before = resident_mb(os.getpid())
        manager = JobManager(backend=RayBackend(cluster.address, warm=0))
        tiny_run(manager)
        import ray

        actor = manager.backend._idle[0]
        pid, _ = ray.get(actor.where.remote())
        figures = {
            "what": "a one-node Ray cluster (1 CPU) and the final step on 1,000 images",
            "cluster_idle_mb": idle,
            "actor_after_run_mb": resident_mb(pid),
            "cluster_with_actor_mb": tree_mb(),
            "driver_gain_mb": round(resident_mb(os.getpid()) - driver_before, 1),
        }
        manager.shutdown()
        return figures
    finally:
        cluster.shutdown()


MEASUREMENTS = {
    "gc": (gc_pause, 20),
    "dropout": (dropout_cost, 100),
    "cache": (cache_load, 5),
    "checkpoint": (checkpoint_size, 1),
    "workers": (worker_memory, 1),
    "ray": (ray_memory, 1),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=list(MEASUREMENTS))
    parser.add_argument("--repeats", type=int, help="timings to take the median of")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    measure, repeats = MEASUREMENTS[args.what]
    figures = {
        "command": " ".join(["python", "scripts/measure.py", *sys.argv[1:]]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": machine_name(),
        # The machine may be shared: how busy it was says how far the timings are from an idle one's.
        "load_average_before": round(os.getloadavg()[0], 2),
        **measure(args.repeats or repeats),
    }
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
