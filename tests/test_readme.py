"""The README's figures are its files' own: each file under results/ that it names is there, its tables of runs are
what `python -m drill report` makes of the run files, and its quoted counts and timings are the files' numbers."""

from __future__ import annotations

import itertools
import json
import re

import pytest
from conftest import REPO_ROOT

from drill import cost, pack
from drill.__main__ import main
from drill.presets import BY_NAME

README = (REPO_ROOT / "README.md").read_text()
FLAT = " ".join(README.split())  # prose as one line: a figure may wrap anywhere
RESULTS = REPO_ROOT / "results"
LESSON_FILES = ["skeleton", "lean", "batchnorm", "regularised", "final-seed1", "final-seed2", "final-seed3", "quick"]


def section(title: str) -> str:
    """The README's text from a heading (or bold title) to the next heading."""
    start = README.index(title)
    end = README.find("\n#", start + len(title))
    return README[start : end if end > 0 else None]


def report(capsys, files: list[str]) -> list[str]:
    assert main(["report", *(str(RESULTS / file) for file in files)]) == 0
    return capsys.readouterr().out.splitlines()


def expand(pattern: str) -> list[str]:
    """Shell brace expansion of one {a,b,...} group, as the README's commands use it."""
    found = re.search(r"\{([^}]*)\}", pattern)
    if not found:
        return [pattern]
    return [pattern[: found.start()] + choice + pattern[found.end() :] for choice in found.group(1).split(",")]


def test_every_results_file_the_readme_names_is_there():
    # A name with a shell variable in it ($seed) stands for files named in full elsewhere.
    named = sorted({name for name in re.findall(r"results/[\w./*{},$-]*[\w*]", README) if "$" not in name})
    assert len(named) > 15
    # loadtest.py's --out is a prefix: it writes OUT.json and OUT.md.
    missing = [
        path
        for pattern in named
        for path in expand(pattern)
        if not any(itertools.chain(REPO_ROOT.glob(path), REPO_ROOT.glob(path + ".*")))
    ]
    assert missing == []


def test_the_lesson_tables_are_the_report_of_the_run_files(capsys):
    made = report(capsys, [f"{name}.json" for name in LESSON_FILES])
    quoted = [line for line in section("## The lesson's steps, measured").splitlines() if line.startswith("| ")]
    assert len(quoted) == 1 + len(LESSON_FILES) + 1 + 3  # the write-up table, then the final step's three seeds
    assert [line for line in quoted if line not in made] == []
    assert "3 of 3 seeds hold >= 99.4% in each of the last 4 epochs; mean last-epoch test accuracy 99.53%" in made


def test_the_stretch_presets_table_is_the_report_of_its_runs(capsys):
    made = report(capsys, ["stretch-attempts/6618.json"])
    quoted = [line for line in section("**6. Stretch: fewer parameters**").splitlines() if line.startswith("| ")]
    assert len(quoted) == 1 + 3 and [line for line in quoted if line not in made] == []


def epoch_cost_figures(f: dict) -> list[str]:
    """What the README says of the epoch estimate: the final step's note, how it was measured, its error on the
    presets and the variations, the whole epochs timed, the machine's noise, and the server's default limit."""
    variations = [row["error"] for row in f["configs"] if row["name"] not in f["presets"]]
    lean, final = f["whole_epochs"]["lean"], f["whole_epochs"]["final"]
    (other_core,) = f["other_cores_busy"].values()
    return [
        f'"{cost.epoch_note(BY_NAME["final"].config).removesuffix(".")}"',
        f"CPU seconds of one thread, the other core {other_core:.0%} busy",
        f"spread by up to {f['largest_train_spread']:.0%}",
        f"within {abs(f['largest_preset_error']):.0%} of the measured epoch on every preset",
        f"{max(map(abs, variations)):.0%} on {len(variations)} variations of them",
        f"a whole epoch of lean took {lean['measured']:.1f} s against {lean['estimated']:.1f} s estimated, of final "
        f"{final['measured']:.1f} s against {final['estimated']:.1f} s",
        f"(`DRILL_MAX_EPOCH_S`, default {cost.DEFAULT_MAX_EPOCH_S:.0f} s",
    ]


@pytest.mark.parametrize(
    "file, quoted",
    [
        ("fuzz.json", lambda f: [f"{f['url']['loaded']} load, {f['url']['refused_with_a_message']:,} are refused"]),
        ("fuzz.json", lambda f: [f"({f['import']['loaded']} load, {f['import']['refused_with_a_message']} refused"]),
        ("gc-pause.json", lambda f: [f"holds the GIL for {f['median_ms']:.0f} ms (median of {f['repeats']}"]),
        (
            "dropout-cost.json",
            lambda f: [
                f"it is {f['dropout_share_of_step']['nn.Dropout']:.0%} of a training step, drill's dropout "
                f"{f['dropout_share_of_step']['drill']:.0%}",
                f"median of {f['repeats']} steps",
            ],
        ),
        ("cache-load.json", lambda f: [f"loading it takes {f['median_ms'] / 1000:.2f} s (median of {f['repeats']}"]),
        ("epoch-cost.json", epoch_cost_figures),
    ],
)
def test_the_figures_quoted_are_the_files_own(file, quoted):
    figures = json.loads((RESULTS / file).read_text())
    for text in quoted(figures):
        assert text in FLAT, text
    if "date" in figures:
        assert figures["date"] in README


def test_the_proof_verdict_quoted_is_the_final_steps_runs():
    from drill.proof import Proof
    from drill.run_record import RunRecord

    runs = [RunRecord.from_dict(json.loads((RESULTS / f"final-seed{seed}.json").read_text())) for seed in (1, 2, 3)]
    assert f'"{Proof.of(runs).verdict().removesuffix(".")}" for the final step' in FLAT


def test_the_first_point_figures_are_the_benchmarks():
    measured = json.loads((RESULTS / "first-point.json").read_text())
    ray, threads = measured["ray"], measured["threads"]
    assert (
        f"the first point came {ray['first_point_median_s']:.2f} s after Start on Ray and "
        f"{threads['first_point_median_s']:.2f} s on `threads` (medians), of which "
        f"{ray['outside_the_epoch_median_s']:.2f} s and {threads['outside_the_epoch_median_s']:.2f} s were outside"
    ) in FLAT
    assert measured["repeats"] == 7 and "seven one-epoch runs a backend" in FLAT


def test_the_pack_size_quoted_is_the_shipped_packs():
    quoted = float(re.search(r"each run's minutes are in its file\): ([\d.]+) MB", FLAT).group(1))
    assert quoted == pytest.approx(pack.size(pack.PACK_DIR) / 2**20, abs=0.05)


def test_the_write_ups_networks_quoted_are_the_gallerys():
    from drill.gallery import BY_NAME as GALLERY
    from drill.model import build_model, count_params

    for name, words in (("wu004-skeleton", "write-up 004's skeleton, "), ("wu003-gap", "write-up 003's network, ")):
        params = count_params(build_model(GALLERY[name].config.model))
        assert f"{words}{params:,} parameters" in FLAT, name
