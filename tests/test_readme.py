"""The README and the write-ups under docs/ quote their files' own figures: each file under results/ that they name is
there, their tables of runs are what `python -m drill report` makes of the run files, and their quoted counts and
timings are the files' numbers, wherever the figure stands. The README also gives the two commands CI runs, and
every link between the README and docs/ leads to a file and a heading that are there."""

from __future__ import annotations

import itertools
import json
import re

import pytest
from conftest import REPO_ROOT

from drill import cost, pack, store
from drill.__main__ import main
from drill.presets import BY_NAME

DOCUMENTS = {
    path.relative_to(REPO_ROOT).as_posix(): path.read_text()
    for path in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
}
README = DOCUMENTS["README.md"]
FLAT = {
    name: " ".join(text.split()) for name, text in DOCUMENTS.items()
}  # prose as one line: a figure may wrap anywhere
EVERYWHERE = "\n".join(FLAT.values())
RESULTS = REPO_ROOT / "results"
LESSON_FILES = ["skeleton", "lean", "batchnorm", "regularised", "final-seed1", "final-seed2", "final-seed3", "quick"]


def section(title: str) -> str:
    """The text from a heading (or bold title) to the next heading, in the one document that has it."""
    (text,) = [text for text in DOCUMENTS.values() if title in text]
    start = text.index(title)
    end = text.find("\n#", start + len(title))
    return text[start : end if end > 0 else None]


def table_rows(text: str) -> list[str]:
    """A Markdown text's table rows, without the rule under each header."""
    return [line for line in text.splitlines() if line.startswith("| ")]


def report(capsys, files: list[str]) -> list[str]:
    assert main(["report", *(str(RESULTS / file) for file in files)]) == 0
    return capsys.readouterr().out.splitlines()


def expand(pattern: str) -> list[str]:
    """Shell brace expansion of one {a,b,...} group, as the README's commands use it."""
    found = re.search(r"\{([^}]*)\}", pattern)
    if not found:
        return [pattern]
    return [pattern[: found.start()] + choice + pattern[found.end() :] for choice in found.group(1).split(",")]


def test_every_results_file_named_is_there():
    # A name with a shell variable in it ($seed) stands for files named in full elsewhere.
    quoting = "\n".join(DOCUMENTS.values())
    named = sorted({name for name in re.findall(r"results/[\w./*{},$-]*[\w*]", quoting) if "$" not in name})
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
    quoted = table_rows(section("# The lesson's steps, measured"))
    assert len(quoted) == 1 + len(LESSON_FILES) + 1 + 3  # the write-up table, then the final step's three seeds
    assert [line for line in quoted if line not in made] == []
    assert "3 of 3 seeds hold >= 99.4% in each of the last 4 epochs; mean last-epoch test accuracy 99.53%" in made


def test_the_stretch_presets_table_is_the_report_of_its_runs(capsys):
    made = report(capsys, ["stretch-attempts/6618.json"])
    quoted = table_rows(section("**6. Stretch: fewer parameters**"))
    assert len(quoted) == 1 + 3 and [line for line in quoted if line not in made] == []


def epoch_cost_figures(f: dict) -> list[str]:
    """What is said of the epoch estimate: the final step's note, how it was measured, its error on the
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
    texts = quoted(figures)
    for text in texts:
        assert text in EVERYWHERE, text
    # A file's figures are told together, with the date they were taken.
    together = [name for name, flat in FLAT.items() if all(text in flat for text in texts)]
    assert together, texts
    if "date" in figures:
        assert any(figures["date"] in DOCUMENTS[name] for name in together), figures["date"]


def test_the_proof_verdict_quoted_is_the_final_steps_runs():
    from drill.proof import Proof
    from drill.run_record import RunRecord

    runs = [RunRecord.from_dict(json.loads((RESULTS / f"final-seed{seed}.json").read_text())) for seed in (1, 2, 3)]
    assert f'"{Proof.of(runs).verdict().removesuffix(".")}" for the final step' in FLAT["README.md"]


def test_the_first_point_figures_are_the_benchmarks():
    measured = json.loads((RESULTS / "first-point.json").read_text())
    ray, threads = measured["ray"], measured["threads"]
    assert (
        f"the first point came {ray['first_point_median_s']:.2f} s after Start on Ray and "
        f"{threads['first_point_median_s']:.2f} s on `threads` (medians), of which "
        f"{ray['outside_the_epoch_median_s']:.2f} s and {threads['outside_the_epoch_median_s']:.2f} s were outside"
    ) in EVERYWHERE
    assert measured["repeats"] == 7 and "seven one-epoch runs a backend" in EVERYWHERE


def test_the_pack_size_quoted_is_the_shipped_packs():
    quoted = [float(size) for size in re.findall(r"each run's minutes are in its file\): ([\d.]+) MB", EVERYWHERE)]
    assert quoted and quoted == pytest.approx([pack.size(pack.PACK_DIR) / 2**20] * len(quoted), abs=0.05)


def test_the_write_ups_networks_quoted_are_the_gallerys():
    from drill.gallery import BY_NAME as GALLERY
    from drill.model import build_model, count_params

    for name, words in (("wu004-skeleton", "write-up 004's skeleton, "), ("wu003-gap", "write-up 003's network, ")):
        params = count_params(build_model(GALLERY[name].config.model))
        assert f"{words}{params:,} parameters" in EVERYWHERE, name


def test_the_speed_ups_check_is_the_report_of_its_runs(capsys):
    quoted = table_rows(section("## The speed-ups did not change what is learned"))[1:]
    assert len(quoted) == 3
    runs = {
        side: [json.loads((RESULTS / "speedup-check" / f"{side}-seed{seed}.json").read_text()) for seed in (1, 2, 3)]
        for side in ("before", "after")
    }
    for seed, row in enumerate(quoted, start=1):
        before, after = (runs[side][seed - 1]["epochs"] for side in ("before", "after"))
        largest = max(abs(b["test_acc"] - a["test_acc"]) for b, a in zip(before, after, strict=True))
        last_four = [", ".join(f"{epoch['test_acc']:.2f}" for epoch in epochs[-4:]) for epochs in (before, after)]
        assert row == f"| {seed} | {last_four[0]} | {last_four[1]} | {largest:.2f} points |"
    for side, words in (("before", "with dense masks"), ("after", "with sparse drops")):
        made = report(capsys, [f"speedup-check/{side}-seed{seed}.json" for seed in (1, 2, 3)])
        (verdict,) = [line for line in made if "mean last-epoch test accuracy" in line]
        assert f"{verdict.rsplit(' ', 1)[1]} {words}" in FLAT["docs/lesson-results.md"], side


def plan_rows() -> dict[str, list[str]]:
    """results/plan.md's table, by its machines x cores."""
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")] for line in table_rows((RESULTS / "plan.md").read_text())
    ]
    return {row[0]: row[1:] for row in rows[1:]}


def test_the_cluster_sizing_is_the_plans():
    planned = plan_rows()
    quoted = table_rows(section("## How many machines a class needs"))[1:]
    assert [line.replace(" (this server)", "") for line in quoted] == [
        f"| {layout} | {' | '.join(cells)} |" for layout, cells in planned.items()
    ]
    (small, large) = planned["1 x 2"], planned["8 x 4"]
    assert (
        f"every run has finished after {small[2]} on 1 x 2 cores (this server) and after {large[2]} on 8 x 4"
    ) in FLAT["README.md"]


def test_the_readmes_class_load_figures_are_the_load_reports():
    same, different = (json.loads((RESULTS / f"load-{mode}.json").read_text()) for mode in ("same", "different"))
    assert same["sessions"] == different["sessions"] == 30 and same["store"]["runs"] == 1
    assert (
        f"saw their first curve point {same['first_point_p50_s']:.1f} s after Start (the median student; "
        f"{same['first_point_last_s']:.1f} s for the last); 30 students on 30 configs, every run trained two at a "
        f"time, saw it after {different['first_point_p50_s']:.0f} s and {different['first_point_last_s']:.0f} s"
    ) in FLAT["README.md"]


def test_the_readmes_settings_give_the_codes_defaults():
    settings = section("### On one server")
    assert (
        f"| `DRILL_MAX_EPOCH_S` | the longest estimated epoch, in seconds, that the server will train | "
        f"{cost.DEFAULT_MAX_EPOCH_S:.0f} |" in settings
    )
    assert f"| how many runs the store keeps (the ones last asked for) | {store.DEFAULT_MAX_RUNS:,} |" in settings


def test_the_readme_gives_the_two_commands_and_ci_runs_its_test_command():
    commands = re.findall(r"```bash\n(bash scripts/\w+\.sh)\b", README)
    assert commands == ["bash scripts/run.sh", "bash scripts/test.sh"]
    assert "CI (`.ci/run`) runs exactly this command" in FLAT["README.md"]
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert re.search(r"^bash scripts/test\.sh\b", ci, re.MULTILINE), ci


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings (outside code blocks)."""
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    headings = re.findall(r"^#+ (.+)$", prose, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_every_link_between_the_readme_and_docs_resolves():
    links = 0
    for name, text in DOCUMENTS.items():
        here = (REPO_ROOT / name).parent
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if "://" in target:
                continue
            path, _, anchor = target.partition("#")
            file = (here / path).resolve()
            assert file.is_file(), f"{name}: {target}"
            if anchor:
                assert anchor in heading_anchors(file.read_text()), f"{name}: {target}"
            links += 1
    assert links > 10


def test_every_write_up_is_linked_from_the_readme_and_the_index():
    write_ups = {name for name in DOCUMENTS if name.startswith("docs/") and name != "docs/README.md"}
    assert len(write_ups) >= 5
    assert write_ups <= set(re.findall(r"\]\((docs/[\w-]+\.md)\)", README))
    assert write_ups <= {f"docs/{name}" for name in re.findall(r"\]\(([\w-]+\.md)\)", DOCUMENTS["docs/README.md"])}
    assert "](docs/README.md)" in README


def test_the_heading_the_ray_backends_messages_name_is_in_the_readme():
    source = (REPO_ROOT / "drill" / "raybackend.py").read_text()
    (heading,) = set(re.findall(r"the README's '([^']+)'", source))
    assert f"### {heading}\n" in README
