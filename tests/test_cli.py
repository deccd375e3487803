"""Tests for the command line (python -m drill), run as a real subprocess from the repository root."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from drill.__main__ import main
from drill.analysis import TARGET_ACC
from drill.config import RunConfig
from drill.presets import PRESETS, get_preset
from drill.run_record import EPOCH_KEYS
from drill.summary import summarize


def drill(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m drill ARGS` from the repository root (DRILL_DATA_DIR and the rest of the environment kept)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}  # one thread: see one_torch_thread
    return subprocess.run(
        [sys.executable, "-m", "drill", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_presets_table():
    result = drill("presets")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["name", "params", "title"]
    assert len(lines) == 1 + len(PRESETS)
    for line, preset in zip(lines[1:], PRESETS, strict=True):
        name, params, *title = line.split()
        assert name == preset.name
        assert params == f"{summarize(preset.config.model).total_params:,}"
        assert " ".join(title) == preset.title


def test_presets_json():
    result = drill("presets", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert rows == [
        {"name": p.name, "title": p.title, "params": summarize(p.config.model).total_params, "target": p.target}
        for p in PRESETS
    ]
    assert {row["name"]: row["params"] for row in rows}["final"] == 7_570


def test_gallery_lists_the_write_ups_networks_with_the_parameters_they_report(capsys):
    assert main(["gallery", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(row["name"], row["params"], row["reported_params"]) for row in rows] == [
        ("wu004-skeleton", 6_379_786, 6_379_786),
        ("wu003-gap", 25_290, 25_290),
    ]
    assert all(RunConfig.from_query(row["query"]) for row in rows)  # each link loads into the builder
    assert main(["gallery"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["name", "params", "reported", "title"] and "6,379,786  6,379,786" in table[1]


def layer_dicts(cfg: RunConfig) -> list[dict]:
    return [row.as_dict() for row in summarize(cfg.model).rows]


def test_summary_of_a_preset_as_json():
    result = drill("summary", "--preset", "final", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    cfg = get_preset("final").config
    assert data == {"layers": layer_dicts(cfg), "total_params": summarize(cfg.model).total_params}
    assert data["total_params"] == 7_570
    assert data["layers"][0] == {
        "name": "conv1.conv",
        "type": "Conv2d",
        "output_shape": [10, 26, 26],
        "params": 90,
        "rf": 3,
        "jump": 1,
        "start": 1.5,
    }


def test_summary_table():
    result = drill("summary", "--preset", "lean")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["layer", "type", "output", "params", "RF", "jump"]
    assert lines[1].split() == ["conv1.conv", "Conv2d", "8x26x26", "72", "3", "1"]
    assert lines[-1].startswith("total params 6,520; mult-adds per image ")
    assert len(lines) == 2 + len(summarize(get_preset("lean").config.model).rows)


def test_summary_of_a_config_file(tmp_path: Path):
    cfg = RunConfig().replace(model={"layers": "8,16,M,T8,16,16,16", "head": "gap_conv", "batch_norm": "after_relu"})
    path = tmp_path / "mine.json"
    path.write_text(cfg.to_json())
    result = drill("summary", "--config", str(path), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data == {"layers": layer_dicts(cfg), "total_params": summarize(cfg.model).total_params}
    # 7,272 weights (see test_model) + batch norm's 2 * (8 + 16 + 8 + 16 + 16 + 16) = 160.
    assert data["total_params"] == 7_432
    assert [layer["name"] for layer in data["layers"]][:3] == ["conv1.conv", "conv1.relu", "conv1.bn"]


def test_train_a_preset_and_write_the_run(tmp_path: Path):
    out = tmp_path / "RUN.json"
    result = drill("train", "--preset", "quick", "--subset", "2000", "--epochs", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    run = json.loads(out.read_text())
    expected = get_preset("quick").config.replace(train={"subset": 2000, "epochs": 1})
    assert RunConfig.from_dict(run["config"]) == expected
    assert (run["status"], run["reason"], run["params"]) == ("finished", "", 7_570)
    assert len(run["epochs"]) == 1 and set(run["epochs"][0]) == set(EPOCH_KEYS)
    assert run["epochs"][0]["epoch"] == 1 and 0 <= run["epochs"][0]["test_acc"] <= 100
    lines = result.stdout.splitlines()
    assert lines[0].startswith("epoch  1  train ")
    assert any(line.startswith("finished in ") for line in lines)
    verdict = lines[-1]
    test_acc = run["epochs"][0]["test_acc"]
    assert verdict == (
        f"params 7,570; best test {test_acc:.2f}%; last test {test_acc:.2f}%; "
        f">= {TARGET_ACC}% in each of the last 4: no"
    )
    assert "Traceback" not in result.stderr


def test_report_tabulates_saved_runs(tmp_path, capsys):
    cfg = get_preset("lean").config
    epochs = [{"epoch": e, "train_loss": 0.1, "train_acc": 99.0, "test_loss": 0.05, "test_acc": 98.5 + e / 100,
               "lr": 0.01, "seconds": 20.0} for e in range(1, 16)]  # fmt: skip
    run = {"config": cfg.to_dict(), "status": "finished", "reason": "", "params": 6_520, "seconds": 300.0,
           "epochs": epochs}  # fmt: skip
    single = write(tmp_path, "lean.json", json.dumps(run))
    several = write(tmp_path, "runs.json", json.dumps({"runs": [run, run], "last_k": 4}))
    assert main(["report", single, several]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| Step | Target | Params | Best train | Best test | Last 4 | Analysis |"
    assert lines[2].startswith("| 2. A lean skeleton (seed 1, 15 epochs in 5 min) | Strip the network")
    assert "| 6,520 | 99.00% | 98.65% | 98.62, 98.63, 98.64, 98.65 (no) |" in lines[2]
    # Then the consistency table of the same runs, as `consistency` prints it.
    assert lines[5:] == [
        "",
        "**2. A lean skeleton**",
        "",
        "| seed | params | epoch 12 | epoch 13 | epoch 14 | epoch 15 | pass |",
        "|---:|---:|---:|---:|---:|---:|:---:|",
        *["| 1 | 6,520 | 98.62 | 98.63 | 98.64 | 98.65 | no |"] * 3,
        "",
        "0 of 3 seeds hold >= 99.4% in each of the last 4 epochs; mean last-epoch test accuracy 98.65%",
    ]


def test_report_of_a_short_run_heads_its_columns_with_the_epochs_it_ran(capsys):
    # A 3-epoch run's last-epoch columns once read "epoch 0 | epoch 1 | epoch 2 | epoch 3".
    assert main(["report", str(REPO_ROOT / "results" / "quick.json")]) == 0
    out = capsys.readouterr().out
    assert "| seed | params | epoch 1 | epoch 2 | epoch 3 | pass |" in out
    assert "0 of 1 seeds hold >= 99.4% in each of the last 4 epochs;" in out and "epoch 0" not in out


def test_consistency_trains_seeds_side_by_side_and_writes_every_run(tmp_path, capsys):
    out = tmp_path / "runs.json"
    args = ["--preset", "quick", "--subset", "2000", "--epochs", "1", "--seeds", "4", "5", "--last-k", "1"]
    assert main(["consistency", *args, "--jobs", "2", "--quiet", "--out", str(out)]) == 1  # 1 epoch can't pass
    lines = capsys.readouterr().out.splitlines()
    table = lines[lines.index("| seed | params | epoch 1 | pass |") :]
    assert [line.split(" | ")[:2] for line in table[2:4]] == [["| 4", "7,570"], ["| 5", "7,570"]]
    summary = r"0 of 2 seeds hold >= 99.4% in each of the last 1 epoch; mean .*; \d+\.\d min in all"
    assert re.fullmatch(summary, lines[-1]), lines[-1]
    runs = json.loads(out.read_text())["runs"]
    assert [RunConfig.from_dict(r["config"]).train.seed for r in runs] == [4, 5]
    # Each seed trained a run of its own: the losses (to the last bit) differ, where the accuracies alone can tie.
    untimed = [[{k: v for k, v in epoch.items() if k != "seconds"} for epoch in run["epochs"]] for run in runs]
    assert untimed[0] != untimed[1]
    assert main(["consistency", *args, "--jobs", "0"]) == 2


def test_report_refuses_a_file_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", write(tmp_path, "notes.json", '{"hello": 1}')]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "notes.json is not a run saved by train/consistency --out" in err[0]


def write(tmp_path: Path, name: str, content: str | bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


BAD_ARGUMENTS = [
    ("unknown preset", lambda tmp: ["summary", "--preset", "nope"], "invalid choice: 'nope'"),
    ("no preset or config", lambda tmp: ["summary"], "one of the arguments --preset --config is required"),
    ("train without a source", lambda tmp: ["train", "--epochs", "1"], "--preset --config is required"),
    ("both sources", lambda tmp: ["summary", "--preset", "final", "--config", "x.json"], "not allowed with"),
    ("missing file", lambda tmp: ["summary", "--config", str(tmp / "absent.json")], "No such file or directory"),
    ("directory", lambda tmp: ["summary", "--config", str(tmp)], "cannot read --config"),
    ("invalid JSON", lambda tmp: ["summary", "--config", write(tmp, "bad.json", '{"model": ')], "valid JSON"),
    ("not UTF-8", lambda tmp: ["summary", "--config", write(tmp, "bin.json", b"\xff\xfe{\x00")], "cannot read"),
    ("not an object", lambda tmp: ["summary", "--config", write(tmp, "list.json", "[1, 2]")], "a JSON object"),
    (
        "invalid config",
        lambda tmp: ["summary", "--config", write(tmp, "zero.json", '{"train": {"epochs": 0}}')],
        "train.epochs = 0 is not allowed",
    ),
    (
        "unknown key",
        lambda tmp: ["train", "--config", write(tmp, "key.json", '{"model": {"layer": "8"}}')],
        "model.layer",
    ),
    (
        "invalid stack",
        lambda tmp: ["summary", "--config", write(tmp, "stack.json", '{"model": {"layers": "8,Q"}}')],
        "layer 2 ('Q')",
    ),
    ("epochs out of range", lambda tmp: ["train", "--preset", "quick", "--epochs", "0"], "train.epochs = 0"),
    ("subset below a batch", lambda tmp: ["train", "--preset", "quick", "--subset", "5"], "train.subset = 5"),
    ("epochs not a number", lambda tmp: ["train", "--preset", "quick", "--epochs", "two"], "invalid int value"),
    ("unknown command", lambda tmp: ["frobnicate"], "invalid choice: 'frobnicate'"),
    ("no command", lambda tmp: [], "required: command"),
    ("unknown option", lambda tmp: ["presets", "--colour"], "unrecognized arguments: --colour"),
]


# Each subprocess pays for importing torch (a couple of seconds on a busy machine): the cases the command line must
# get right in a real process run as one; every case also runs through main() in this process.
SUBPROCESS_CASES = {
    "unknown preset",
    "no preset or config",
    "missing file",
    "invalid JSON",
    "not UTF-8",
    "invalid config",
    "unknown command",
}


def check_usage_error(returncode: int, stdout: str, stderr: str, needle: str) -> None:
    assert returncode == 2, (returncode, stderr)
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("drill: error: ")
    assert needle in lines[0]
    assert stdout == ""


@pytest.mark.parametrize(
    ("case", "make_args", "needle"),
    [case for case in BAD_ARGUMENTS if case[0] in SUBPROCESS_CASES],
    ids=[c for c, _, _ in BAD_ARGUMENTS if c in SUBPROCESS_CASES],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, case, make_args, needle):
    result = drill(*make_args(tmp_path))
    check_usage_error(result.returncode, result.stdout, result.stderr, needle)


@pytest.mark.parametrize(("case", "make_args", "needle"), BAD_ARGUMENTS, ids=[c for c, _, _ in BAD_ARGUMENTS])
def test_bad_arguments_through_main(tmp_path, capsys, case, make_args, needle):
    returncode = main(make_args(tmp_path))
    captured = capsys.readouterr()
    check_usage_error(returncode, captured.out, captured.err, needle)


def test_subprocess_cases_are_known():
    assert SUBPROCESS_CASES <= {case for case, _, _ in BAD_ARGUMENTS}


def test_bench_times_both_pipelines_side_by_side(capsys):
    assert main(["bench", "--subset", "2000", "--repeats", "1", "--workers", "0", "--device", "cpu"]) == 0
    device, *lines = capsys.readouterr().out.splitlines()
    assert device == "drill's runs train on: cpu (--device cpu)"
    assert lines[0].startswith("seeds' pipeline (torchvision + PIL + DataLoader, 0 workers): ")
    assert lines[1].startswith("drill's pipeline: ") and "(median of 1: " in lines[1]
    assert re.fullmatch(r"speed-up: \d+\.\dx", lines[2]), lines[2]
    assert re.fullmatch(r"test pass \(10,000 images\): \d+\.\d\d s \(median of 5\)", lines[3]), lines[3]
    assert re.fullmatch(r"quick demo, Start to first test point: \d+\.\d s", lines[4]), lines[4]
    pattern = r"throughput \(2,000 images a run\): 1 job \d+ images/s, 2 jobs side by side \d+ images/s \(\d\.\d\dx\)"
    assert re.fullmatch(pattern, lines[5]), lines[5]


def test_profile_times_a_step_and_names_the_ops(capsys):
    assert main(["profile", "--preset", "quick", "--steps", "3", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    first, second = out.splitlines()[:2]
    assert re.fullmatch(r"\d+\.\d ms per training step \(median of 3, 1 threads\)", first), first
    # The quick demo: 6,000 images in batches of 64.
    match = re.fullmatch(
        r"convolutions, forward and backward: (\d+\.\d) ms a step; an epoch of 94 steps spends "
        r"(\d+\.\d) s in them",
        second,
    )
    assert match, second
    conv_ms, epoch_s = map(float, match.groups())
    assert conv_ms > 0
    # Both figures are printed to 0.1: the epoch's rounding is up to 0.05, and the step's 0.05 ms becomes 0.0047 s
    # over 94 steps.
    assert abs(epoch_s - conv_ms * 94 / 1000) <= 0.05 + 0.05 * 94 / 1000 + 1e-9
    assert "aten::convolution_backward" in out and "Self CPU" in out


def test_contention_times_a_run_in_a_thread_and_in_a_worker_beside_busy_threads(capsys):
    args = ["contention", "--subset", "640", "--busy", "2", "--work-ms", "5", "--period", "0.05"]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("640 images, 1 torch thread; cores ") and "beside: 2 threads of 5 ms" in lines[0]
    rows = [line for line in lines if line.startswith("| a ")]
    assert [row.split(" | ")[0] for row in rows] == ["| a thread of the server", "| a worker process"]
    for row in rows:
        assert re.fullmatch(r"\| a .+ \| \d+\.\d s \| \d+\.\d s \| \d+\.\d\dx \|", row), row


def test_plan_works_out_a_class_wait_from_an_epoch_time(capsys):
    assert main(["plan", "--epoch-s", "30", "--students", "30", "1x2", "4x4", "8x4"]) == 0
    assert capsys.readouterr().out.splitlines()[-3:] == [
        "| 1 x 2 | 2 | 8 min | 112 min |",  # 15 waves of 2: 15 x 30 s to the last first point, 15 x 15 x 30 s in all
        "| 4 x 4 | 16 | 60 s | 15 min |",
        "| 8 x 4 | 32 | 30 s | 8 min |",
    ]
    assert main(["plan", "--epoch-s", "30", "4by4"]) == 2
