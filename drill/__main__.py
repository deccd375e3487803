"""The command line: python -m drill data | presets | summary | train | consistency | record | report | bench | ..."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

from drill.analysis import LAST_K, TARGET_ACC, analyse
from drill.config import ConfigError, RunConfig
from drill.data import DataUnavailable
from drill.pack import PACK_DIR
from drill.presets import BY_NAME, LESSON, PRESETS, get_preset, matching_preset
from drill.proof import Proof
from drill.run_record import RunRecord, Status
from drill.summary import summarize


class UsageError(Exception):
    """A bad argument: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def load_config(args, base: RunConfig | None = None) -> RunConfig:
    """The config named by --preset or --config (or base), with --epochs/--seed/--subset applied."""
    if base is not None:
        cfg = base
    elif args.config:
        try:
            text = Path(args.config).read_text()
        except OSError as error:
            raise UsageError(f"cannot read --config {args.config}: {error.strerror}") from None
        except UnicodeDecodeError:
            raise UsageError(f"cannot read --config {args.config}: it is not a UTF-8 text (JSON) file") from None
        cfg = RunConfig.from_json(text)
    else:
        cfg = get_preset(args.preset).config
    changes = {k: getattr(args, k) for k in ("epochs", "seed", "subset") if getattr(args, k, None) is not None}
    return cfg.replace(train=changes) if changes else cfg


def cmd_presets(args) -> None:
    rows = [
        {"name": p.name, "title": p.title, "params": summarize(p.config.model).total_params, "target": p.target}
        for p in PRESETS
    ]
    listing(rows, args.json, {"name": 12, "params": 8})


def cmd_gallery(args) -> None:
    """The write-ups' networks the builder reconstructs exactly, with their parameters (counted here and as the
    write-up reports them) and the link settings that load each into the builder."""
    from drill.gallery import NETWORKS

    rows = [
        {
            "name": n.name,
            "title": n.title,
            "source": n.source,
            "params": summarize(n.config.model).total_params,
            "reported_params": n.params,
            "reported": n.reported,
            "query": n.config.to_query(),
            "notes": n.notes,
        }
        for n in NETWORKS
    ]
    listing(rows, args.json, {"name": 16, "params": 10, "reported_params": 10})


def listing(rows: list[dict], as_json: bool, widths: dict[str, int]) -> None:
    """Rows as JSON, or as a table: these columns (the name left-aligned, counts right-aligned), then the title."""
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    align = {column: "<" if column == "name" else ">" for column in widths}
    print(" ".join(f"{column.split('_')[0]:{align[column]}{w}}" for column, w in widths.items()) + "  title")
    for row in rows:
        cells = (f"{row[c]:{align[c]}{w}{',' if isinstance(row[c], int) else ''}}" for c, w in widths.items())
        print(" ".join(cells) + f"  {row['title']}")


def cmd_summary(args) -> None:
    summary = summarize(load_config(args).model)
    if args.json:
        layers = [row.as_dict() for row in summary.rows]
        print(json.dumps({"layers": layers, "total_params": summary.total_params}, indent=2))
        return
    print(f"{'layer':<18} {'type':<18} {'output':<14} {'params':>8} {'RF':>4} {'jump':>5}")
    for r in summary.rows:
        shape = "x".join(map(str, r.output_shape))
        print(f"{r.name:<18} {r.kind:<18} {shape:<14} {r.params:>8,} {r.rf:>4} {r.jump:>5}")
    print(
        f"total params {summary.total_params:,}; mult-adds per image {summary.mult_adds:,}; "
        f"estimated memory per image {summary.memory_mb:.2f} MB"
    )


def run_one(
    cfg: RunConfig, quiet: bool = False, threads: int | None = None, prefix: str = "", checkpoint: Path | None = None
):
    """Train one config with a tqdm bar per epoch (unless prefixed: runs side by side) and a line per epoch.

    With a checkpoint file, the run goes on from it when it exists, and writes it after every epoch but the last
    (removed once the run finishes), so a run cut short (Ctrl-C) goes on when the same command is given again.
    """
    from tqdm import tqdm

    from drill.checkpoint import Checkpoint
    from drill.data import load_mnist
    from drill.train import train

    data = load_mnist()
    bar = None
    resume = None
    if checkpoint is not None and checkpoint.exists():
        try:
            resume = Checkpoint.from_bytes(checkpoint.read_bytes())
        except ValueError as error:
            raise UsageError(f"{checkpoint} cannot be resumed from: {error}; delete it to start over") from None
        print(f"resuming after epoch {len(resume.epochs)} from {checkpoint}", flush=True)

    def report(event, payload):
        nonlocal bar
        if event == "checkpoint" and checkpoint is not None:
            partial = checkpoint.with_name(checkpoint.name + ".partial")
            partial.write_bytes(payload["blob"])
            partial.replace(checkpoint)  # a Ctrl-C mid-write leaves the previous checkpoint whole
        if quiet:
            return
        if event == "batch" and not prefix:
            if bar is None:
                bar = tqdm(total=payload["batches"], desc=f"epoch {payload['epoch']}", leave=False, file=sys.stderr)
            bar.update(1)
            bar.set_postfix(loss=f"{payload['loss']:.4f}", refresh=False)
        elif event == "epoch":
            if bar is not None:
                bar.close()
                bar = None
            print(
                f"{prefix}epoch {payload['epoch']:>2}  train {payload['train_acc']:6.2f}%  "
                f"test {payload['test_acc']:6.2f}%  loss {payload['test_loss']:.4f}  lr {payload['lr']:.4g}  "
                f"{payload['seconds']:.1f}s",
                flush=True,
            )

    result = train(cfg, data, report, threads=threads, resume=resume, checkpoints=checkpoint is not None)
    if bar is not None:
        bar.close()
    if checkpoint is not None and result.status == Status.FINISHED:
        checkpoint.unlink(missing_ok=True)
    return result


def cmd_train(args) -> int:
    cfg = load_config(args)
    try:
        result = run_one(cfg, checkpoint=Path(args.checkpoint) if args.checkpoint else None)
    except KeyboardInterrupt:
        again = (
            "give the same command again to go on from its last finished epoch"
            if args.checkpoint
            else ("with --checkpoint FILE a run cut short goes on where it stopped")
        )
        print(f"interrupted: {again}", file=sys.stderr)
        return 130
    verdict = analyse(result.epochs, result.params, k=args.last_k)
    if args.out:
        Path(args.out).write_text(json.dumps(result.record().to_dict(), indent=2))
    print(f"{result.status}{': ' + result.reason if result.reason else ''} in {result.seconds:.0f}s")
    if result.epochs:
        print(
            f"params {result.params:,}; best test {verdict.best_test:.2f}%; last test {verdict.last_test:.2f}%; "
            f">= {TARGET_ACC}% in each of the last {args.last_k}: {'yes' if verdict.consistent else 'no'}"
        )
    return 0 if result.status == Status.FINISHED else 1


def cmd_consistency(args) -> int:
    """Train one config over several seeds (`--jobs` of them side by side) and tabulate the last K epochs of each."""
    from concurrent.futures import ThreadPoolExecutor

    base = load_config(args)
    if args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs} is not allowed: 1 or more runs side by side")
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    started = time.perf_counter()

    def one(seed: int):
        prefix = f"seed {seed}: " if args.jobs > 1 else ""
        if not prefix:
            print(f"seed {seed}", flush=True)
        return run_one(base.replace(train={"seed": seed}), quiet=args.quiet, threads=threads, prefix=prefix)

    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(one, args.seeds))
    elapsed = time.perf_counter() - started
    proof = Proof.of(runs, args.last_k)
    print(f"\n{proof.table()}\n\n{proof.summary()}; {elapsed / 60:.1f} min in all")
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "runs": [r.record().to_dict() for r in runs],
                    "last_k": args.last_k,
                    "minutes": round(elapsed / 60, 1),
                },
                indent=2,
            )
        )
    return 0 if proof.proven else 1


def cmd_record(args) -> int:
    """Train the lesson's steps over seeds into the recorded-runs pack (drill.pack), `--jobs` side by side; a run the
    pack already holds, and that today's code still computes, is kept unless --again."""
    from concurrent.futures import ThreadPoolExecutor

    from drill import pack
    from drill.data import load_mnist

    if args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs} is not allowed: 1 or more runs side by side")
    directory = Path(args.pack)
    data = load_mnist()
    held = {run.name: run for run in pack.read(directory)[0]}
    wanted = [(get_preset(step), seed) for step in args.steps for seed in args.seeds]
    print(f"recording into {directory} on {pack.machine_name()}, {args.jobs} run(s) side by side, 1 thread each")
    started = time.perf_counter()

    def one(item) -> str:
        preset, seed = item
        name, config = f"{preset.name}-seed{seed}", load_config(args, preset.config).replace(train={"seed": seed})
        old = held.get(name)
        if not args.again and old is not None and old.config == config and pack.verify(old, data) is None:
            return f"{name}: kept ({old.provenance})"
        run = pack.record(config, data, name, preset.title)
        pack.write(run, directory)
        verdict = analyse(run.record.epochs, run.record.params)
        return (
            f"{name}: {run.record.params:,} params, best test {verdict.best_test:.2f}%, last "
            f"{verdict.last_test:.2f}%, {run.recorded['seconds'] / 60:.1f} min"
        )

    with ThreadPoolExecutor(args.jobs) as pool:
        for line in pool.map(one, wanted):
            print(line, flush=True)
    runs, problems = pack.read(directory)
    print(
        f"the pack: {len(runs)} runs, {pack.size(directory) / 2**20:.2f} MB; "
        f"{(time.perf_counter() - started) / 60:.1f} min in all"
    )
    for problem in problems:
        print(f"not usable: {problem}", file=sys.stderr)
    return 1 if problems else 0


def cmd_bench(args) -> int:
    """One full epoch of a preset through the seeds' pipeline and through drill's, then the app's other waits."""
    from drill import bench
    from drill.data import data_dir, load_mnist
    from drill.train import device_type

    cfg = load_config(args).replace(train={"device": args.device})
    data = load_mnist()
    print(f"drill's runs train on: {device_type(args.device)} (--device {args.device})", flush=True)
    seeds_s = bench.seeds_epoch(cfg, data, data_dir() / "torchvision-idx", workers=args.workers)
    print(
        f"seeds' pipeline (torchvision + PIL + DataLoader, {args.workers} workers): {seeds_s:.1f} s/epoch", flush=True
    )
    drill_times = [bench.drill_epoch(cfg, data) for _ in range(args.repeats)]
    drill_s = statistics.median(drill_times)
    print(
        f"drill's pipeline: {drill_s:.1f} s/epoch (median of {args.repeats}: "
        f"{', '.join(f'{t:.1f}' for t in drill_times)})"
    )
    print(f"speed-up: {seeds_s / drill_s:.1f}x")
    print(f"test pass (10,000 images): {bench.eval_seconds(cfg, data):.2f} s (median of 5)", flush=True)
    quick = get_preset("quick").config.replace(train={"device": args.device})
    print(f"quick demo, Start to first test point: {bench.first_point_seconds(quick, data):.1f} s", flush=True)
    shared = cfg.replace(train={"subset": args.subset or 12_000})
    alone, pair = bench.throughput(shared, data, 1), bench.throughput(shared, data, 2)
    print(
        f"throughput ({shared.train.subset:,} images a run): 1 job {alone:.0f} images/s, "
        f"2 jobs side by side {pair:.0f} images/s ({pair / alone:.2f}x)"
    )
    return 0


def cmd_calibrate(args) -> int:
    """Time every preset (and variations on them) for a slice of an epoch on one thread, fit the epoch-cost model
    the pages estimate with, and write the coefficients with the estimate's error per config."""
    import torch

    from drill import cost, pack
    from drill.data import load_mnist

    data = load_mnist()
    load, started, before = os.getloadavg()[0], time.perf_counter(), _cpu_times()
    print(f"calibrating on {pack.machine_name()}, 1 thread, cores {sorted(os.sched_getaffinity(0))}", flush=True)
    measured = cost.calibrate(data, lambda line: print(line, flush=True), args.slice_s, args.repeats, args.whole)
    others = {cpu: times for cpu, times in _cpu_times().items() if cpu not in os.sched_getaffinity(0)}
    busy = {cpu: round((b - before[cpu][0]) / max(t - before[cpu][1], 1), 2) for cpu, (b, t) in others.items()}
    presets = {row["name"]: row for row in measured["configs"] if row["name"] in BY_NAME}
    errors = [row["error"] for row in presets.values()]
    figures = {
        "command": "python -m drill calibrate --out results/epoch-cost.json",
        "date": time.strftime("%Y-%m-%d"),
        "machine": pack.machine_name(),
        "torch": torch.__version__,
        "threads": 1,
        "load_average_before": round(load, 2),
        # What else ran meanwhile: a class's server trains a run on every core, and runs side by side slow each other.
        "other_cores_busy": busy,
        "largest_train_spread": max(row["train_spread"] for row in measured["configs"]),
        "what": (
            "CPU seconds of an epoch (its training images, then the 10,000-image test pass) on one thread: measured, "
            f"a slice of the epoch (median of {args.repeats}) scaled to the whole; estimated, drill.cost's fitted "
            "model. The wall clock also counts other processes' turns on the core (wall_over_cpu, per config)"
        ),
        "tolerance": args.tolerance,
        "presets": {name: {**row["epoch_s"], "error": row["error"]} for name, row in presets.items()},
        "largest_preset_error": max(errors, key=abs),
        "minutes": round((time.perf_counter() - started) / 60, 1),
        **measured,
    }
    print("\n| config | measured s/epoch | estimated | error |\n|---|---:|---:|---:|")
    for row in measured["configs"]:
        print(
            f"| {row['name']} | {row['epoch_s']['measured']:.1f} | {row['epoch_s']['estimated']:.1f} | "
            f"{row['error']:+.0%} |"
        )
    outside = [name for name, error in zip(presets, errors, strict=True) if abs(error) > args.tolerance]
    print(
        f"\npresets: errors {min(errors):+.0%} to {max(errors):+.0%}; "
        + (f"outside +-{args.tolerance:.0%}: {', '.join(outside)}" if outside else f"all within +-{args.tolerance:.0%}")
    )
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=1) + "\n")
    return 0


def _cpu_times() -> dict[int, tuple[int, int]]:
    """Per CPU, (busy, total) clock ticks since boot, from /proc/stat (empty where there is none)."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return {}
    times = {}
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            ticks = [int(field) for field in fields]
            times[int(name[3:])] = (sum(ticks) - ticks[3] - ticks[4], sum(ticks))  # idle and iowait are not busy
    return times


def cmd_contention(args) -> int:
    """A run's epoch beside busy Python threads in the serving process: trained in a thread there, and in a worker
    process, each measured alone and beside them, all in one process pinned to the same cores."""
    from drill import bench
    from drill.backends import ProcessBackend, ThreadBackend
    from drill.data import load_mnist

    if args.cores:
        os.sched_setaffinity(0, args.cores)  # the worker processes inherit it
    cfg = load_config(args).replace(train={"subset": args.subset, "threads": 1})
    load_mnist()  # cached for the thread backend's runs; each worker process loads its own
    busy = (args.busy, args.work_ms, args.period)
    print(
        f"{cfg.train.subset:,} images, 1 torch thread; cores {sorted(os.sched_getaffinity(0))}; "
        f"beside: {args.busy} threads of {args.work_ms:g} ms of Python every {args.period:g} s; "
        f"switch interval {sys.getswitchinterval() * 1000:g} ms",
        flush=True,
    )
    print("| trained in | alone | beside the threads | ratio |\n|---|---:|---:|---:|")
    for name, make in (
        ("a thread of the server", lambda: ThreadBackend(1)),
        ("a worker process", lambda: ProcessBackend(1)),
    ):
        times = []
        for beside in (False, True):
            with bench.busy_threads(*busy) if beside else contextlib.nullcontext():
                times.append(bench.epoch_on_backend(cfg, make()))
        print(f"| {name} | {times[0]:.1f} s | {times[1]:.1f} s | {times[1] / times[0]:.2f}x |", flush=True)
    return 0


def cmd_plan(args) -> int:
    """How long a class waits on N machines of C cores, worked out from a measured epoch time of one run on one core.

    With turns, the slots give every run its first epoch before any run its second: the last student's first point
    comes after ceil(students / slots) epochs, and, all runs being the same length, the last run ends after that many
    times its epochs (idealised: no other load, every machine as fast as the one measured).
    """
    import math

    print(
        f"{args.students} students, one {args.epochs}-epoch run each, {args.epoch_s:g} s an epoch on one core "
        f"(one run per core)\n\n| machines x cores | slots | last student's first point | every run finished |"
        "\n|---|---:|---:|---:|"
    )
    for machines, cores in args.layouts:
        slots = machines * cores
        waves = math.ceil(args.students / slots)
        first, whole = waves * args.epoch_s, waves * args.epochs * args.epoch_s
        print(f"| {machines} x {cores} | {slots} | {_duration(first)} | {_duration(whole)} |")
    return 0


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _layout(text: str) -> tuple[int, int]:
    machines, _, cores = text.partition("x")
    if not (machines.isdigit() and cores.isdigit() and int(machines) > 0 and int(cores) > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: MACHINESxCORES, e.g. 1x2 or 8x4")
    return int(machines), int(cores)


def cmd_profile(args) -> int:
    """Milliseconds per training step of a config, and where they go (torch's profiler)."""
    import torch

    from drill.bench import step_profile
    from drill.config import TRAIN_SIZE
    from drill.train import batches_per_epoch

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args)
    timed = step_profile(cfg, steps=args.steps)
    steps = batches_per_epoch(cfg.train, TRAIN_SIZE)
    print(f"{timed.median_ms:.1f} ms per training step (median of {args.steps}, {torch.get_num_threads()} threads)")
    # The floor an epoch cannot go under while the convolutions run at this speed, whatever else is made faster.
    print(
        f"convolutions, forward and backward: {timed.conv_ms:.1f} ms a step; an epoch of {steps} steps spends "
        f"{timed.conv_ms * steps / 1000:.1f} s in them\n"
    )
    print(timed.table)
    return 0


def cmd_report(args) -> int:
    """The write-up table (Markdown) of runs saved by `train --out` or `consistency --out`."""
    import dataclasses

    from drill.records import markdown_table, table_row

    rows, groups = [], {}
    for path in args.files:
        try:
            data = json.loads(Path(path).read_text())
            found = data["runs"] if isinstance(data, dict) and "runs" in data else [data]
            for index, raw in enumerate(found, start=1):
                run = RunRecord.from_dict(raw, index)
                config, minutes = run.config, run.seconds / 60
                label = f"seed {config.train.seed}, {len(run.epochs)} epochs in {minutes:.0f} min"
                run = dataclasses.replace(run, label=label)
                name = matching_preset(config)
                rows.append(table_row(run, BY_NAME[name] if name else None, k=args.last_k))
                # One consistency table per config: the runs of a step over its seeds.
                same = config.replace(train={"seed": 1, "threads": 0}).to_query() or "(the defaults)"
                title = BY_NAME[name].title if name else f"config ?{same}"
                groups.setdefault(same, (title, []))[1].append(run)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UsageError(f"{path} is not a run saved by train/consistency --out ({error})") from None
    print(markdown_table(rows, k=args.last_k), end="")
    for title, runs in groups.values():
        proof = Proof.of(runs, args.last_k)
        print(f"\n**{title}**\n\n{proof.table()}\n\n{proof.summary()}")
    return 0


def cmd_data(args) -> int:
    """Fetch, verify and cache real MNIST (the first time), then say where it is."""
    from drill.data import data_dir, load_mnist

    started = time.perf_counter()
    data = load_mnist()
    print(
        f"MNIST ready in {data_dir()}: {len(data.train_images):,} training and {len(data.test_images):,} test "
        f"images ({time.perf_counter() - started:.1f} s)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m drill", description="Drill-Down Lab: the MNIST drill-down from the command line.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def with_config(p, training=False):
        source = p.add_mutually_exclusive_group(required=True)
        source.add_argument("--preset", choices=list(BY_NAME), help="a preset by name")
        source.add_argument("--config", metavar="FILE.json", help="a config saved as JSON")
        if training:
            p.add_argument("--epochs", type=int, help="override the number of epochs")
            p.add_argument("--subset", type=int, help="train on the first N images, stratified")
            p.add_argument("--last-k", type=int, default=LAST_K, help="epochs that must all reach the target")

    p = sub.add_parser("data", help="fetch, verify and cache real MNIST")
    p.set_defaults(func=cmd_data)
    p = sub.add_parser("presets", help="list the presets")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_presets)
    p = sub.add_parser("gallery", help="the write-ups' networks the builder reconstructs, with their parameters")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_gallery)
    p = sub.add_parser("summary", help="the layer table of a config")
    with_config(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_summary)
    p = sub.add_parser("train", help="train a config")
    with_config(p, training=True)
    p.add_argument("--seed", type=int)
    p.add_argument("--out", metavar="RUN.json", help="write the config and every epoch here")
    p.add_argument(
        "--checkpoint", metavar="FILE", help="go on from this checkpoint if it exists; keep it after every epoch"
    )
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("consistency", help="train a config over several seeds and check the last K epochs")
    with_config(p, training=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--jobs", type=int, default=1, help="seeds trained side by side, sharing the cores")
    p.add_argument("--out", metavar="RUNS.json")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    p.set_defaults(func=cmd_consistency)
    p = sub.add_parser("report", help="a Markdown write-up table of saved runs")
    p.add_argument("files", nargs="+", metavar="RUN.json")
    p.add_argument("--last-k", type=int, default=LAST_K, help="epochs that must all reach the target")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("record", help="train the lesson's steps over seeds into the recorded-runs pack")
    p.add_argument("--steps", nargs="+", choices=list(BY_NAME), default=[preset.name for preset in LESSON])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--jobs", type=int, default=1, help="runs trained side by side, one thread each")
    p.add_argument("--pack", default=str(PACK_DIR), help="the pack's folder (default: the one the app ships)")
    p.add_argument("--again", action="store_true", help="train runs the pack already holds again")
    p.add_argument("--epochs", type=int, help="override the steps' epochs (a smoke test)")
    p.add_argument("--subset", type=int, help="override the steps' training images (a smoke test)")
    p.set_defaults(func=cmd_record)
    p = sub.add_parser(
        "bench", help="one epoch: the seeds' pipeline vs drill's, side by side; test pass, first point, 2 jobs"
    )
    p.add_argument("--preset", choices=list(BY_NAME), default="final")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for the seeds' pipeline")
    p.add_argument("--repeats", type=int, default=3, help="drill epochs to take the median of")
    p.add_argument("--subset", type=int, help="time an epoch of N images instead of the preset's (a smoke test)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where drill's runs train")
    p.set_defaults(func=cmd_bench, config=None)
    p = sub.add_parser("calibrate", help="time the presets on one thread and fit the epoch estimate the pages show")
    p.add_argument("--slice-s", type=float, default=3.0, help="seconds of training timed per repeat")
    p.add_argument("--repeats", type=int, default=5, help="timed slices to take the median of")
    p.add_argument(
        "--whole", nargs="*", choices=list(BY_NAME), default=["lean", "final"], help="presets also timed a whole epoch"
    )
    p.add_argument("--tolerance", type=float, default=0.3, help="the error on the presets aimed for (0.3: +-30%%)")
    p.add_argument("--out", metavar="FILE.json", help="write the coefficients and the errors here")
    p.set_defaults(func=cmd_calibrate)
    p = sub.add_parser("contention", help="a run's epoch beside busy Python threads: in a thread vs a worker process")
    p.add_argument("--preset", choices=list(BY_NAME), default="quick")
    p.add_argument("--subset", type=int, default=6000, help="training images in the timed epoch")
    p.add_argument("--busy", type=int, default=30, help="busy Python threads beside the run (a class's tabs)")
    p.add_argument("--work-ms", type=float, default=20.0, help="Python work per wake-up of each busy thread")
    p.add_argument("--period", type=float, default=2.0, help="seconds between a busy thread's wake-ups")
    p.add_argument("--cores", type=int, nargs="*", help="pin everything to these cores (e.g. 0)")
    p.set_defaults(func=cmd_contention, config=None)
    p = sub.add_parser("plan", help="how long a class waits on N machines of C cores, from a measured epoch time")
    p.add_argument("--epoch-s", type=float, required=True, help="one epoch of one run on one core, test pass included")
    p.add_argument("--students", type=int, default=30)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("layouts", nargs="+", type=_layout, metavar="MACHINESxCORES")
    p.set_defaults(func=cmd_plan)
    p = sub.add_parser("profile", help="ms per training step and the ops that take them")
    with_config(p)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.set_defaults(func=cmd_profile)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args) or 0
    except (UsageError, ConfigError) as error:
        print(f"drill: error: {error}", file=sys.stderr)
        return 2
    except DataUnavailable as error:
        print(f"drill: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
