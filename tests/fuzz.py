"""Seeded fuzz cases for what students send the app: URL query configs and imported runs files.

Each case is a mutation of something valid (a preset's link, an exported runs file): values cut short, swapped for
other types, made huge, keys dropped or invented, bytes flipped, files truncated or padded past the limit. The
cases are deterministic for a seed, so a failure reproduces. `python tests/fuzz.py` prints how each set fares;
`--out results/fuzz.json` writes the counts that the README quotes and tests/test_fuzz.py holds the parsers to.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drill import records  # noqa: E402
from drill.config import ConfigError, RunConfig  # noqa: E402
from drill.gallery import NETWORKS  # noqa: E402
from drill.presets import PRESETS  # noqa: E402
from drill.run_record import Epoch, RecordError, RunRecord, Status, model_params  # noqa: E402

URL_CASES = 2000
IMPORT_CASES = 1000

ODD_TEXT = [
    "",
    " ",
    "nan",
    "inf",
    "-inf",
    "1e308",
    "-1e308",
    "1e-320",
    "0x10",
    "１２",  # full-width digits
    "true",
    "None",
    "[1, 2]",
    "{}",
    "8,16p,T8,M" * 50,
    "\x00",
    "\u202e8,16",
    "💥",
    "'; DROP TABLE runs; --",
    "__import__('os').system('id')",
    "${7*7}",
    "%00",
    "-0",
    "  12  ",
    "12abc",
    "1_000",
]


def odd_value(rng: random.Random) -> str:
    """A query value no widget would produce."""
    pick = rng.random()
    if pick < 0.5:
        return rng.choice(ODD_TEXT)
    if pick < 0.7:
        return "".join(chr(rng.randint(1, 0x2FFF)) for _ in range(rng.randint(1, 40)))
    if pick < 0.8:
        return "9" * rng.randint(20, 5000)
    if pick < 0.9:
        return str(rng.uniform(-1e6, 1e6))
    return "x" * rng.randint(10_000, 200_000)


# Per-layer options, good and bad, that the fuzz set puts on a layer of a stack.
LAYER_OPTIONS = [":bn=after", ":bn=sideways", ":affine=0", ":affine=2", ":relu=0", ":k=5", ":k=4", ":drop=0.1",
                 ":drop=0.9", ":drop=nan", ":dk=channel", ":dk=", ":bias=1", ":", "::", ":k=5:k=7", ":x=1"]  # fmt: skip


def with_option(rng: random.Random, layers: str) -> str:
    """The stack with an option, or an odd value, put on one of its layers."""
    tokens = layers.split(",")
    at = rng.randrange(len(tokens))
    tokens[at] += rng.choice(LAYER_OPTIONS) if rng.random() < 0.8 else ":" + odd_value(rng)
    return ",".join(tokens)


def url_cases(count: int = URL_CASES, seed: int = 1) -> list[dict[str, str] | str]:
    """Query dicts (as Streamlit hands them over) and raw query strings, mutated from the presets' links."""
    rng = random.Random(seed)
    bases = [p.config.to_query_params() for p in PRESETS] + [n.config.to_query_params() for n in NETWORKS]
    keys = sorted({key for base in bases for key in base} | {"ep", "lr", "bs", "seed", "drop", "rot"})
    cases: list[dict[str, str] | str] = []
    while len(cases) < count:
        params = dict(rng.choice(bases))
        for _ in range(rng.randint(1, 3)):
            action = rng.random()
            key = rng.choice(keys)
            if action < 0.45:
                params[key] = odd_value(rng)
            elif action < 0.6 and params:
                value = params[rng.choice(sorted(params))]
                params[rng.choice(sorted(params))] = value[: rng.randint(0, len(value))]  # cut short
            elif action < 0.7 and params:
                params.pop(rng.choice(sorted(params)))
            elif action < 0.78 and "layers" in params:
                params["layers"] = with_option(rng, params["layers"])
            elif action < 0.85:
                params[rng.choice(["x", "layer", "EP", "ep ", "__class__", "me2", "a" * 300])] = odd_value(rng)
            else:
                other = rng.choice(bases)
                params[key] = other[rng.choice(sorted(other))]  # a value that belongs to another field
        if rng.random() < 0.2:
            raw = "&".join(f"{k}={v}" for k, v in params.items())
            cases.append(raw[: rng.randint(0, len(raw))] if rng.random() < 0.5 else "?" + raw)
        else:
            cases.append(params)
    return cases


def exported_runs() -> str:
    """A valid runs file as the Compare page exports it: every preset, two epochs each."""
    runs = []
    for preset in PRESETS:
        epochs = tuple(
            Epoch(
                epoch=e,
                train_loss=0.3 / e,
                train_acc=95.0 + e,
                test_loss=0.2 / e,
                test_acc=96.0 + e,
                lr=0.01,
                seconds=12.5,
            )
            for e in (1, 2)
        )
        config = preset.config.replace(train={"epochs": 2})
        runs.append(
            RunRecord(
                config=config,
                status=Status.FINISHED,
                params=model_params(config),
                seconds=25.0,
                epochs=epochs,
                label=preset.title,
            )
        )
    return records.records_json(runs)


WRONG_VALUES = [None, True, -1, 0, 10**30, -1e308, 1.5, "", "x" * 5000, [], {}, [1, 2], {"a": 1}, "99.5"]


def _mutate_tree(rng: random.Random, data) -> None:
    """Replace one value somewhere in the JSON tree with a wrong type or range, or delete/add a key."""
    node = data
    for _ in range(rng.randint(1, 4)):
        children = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
        containers = [(k, v) for k, v in children if isinstance(v, (dict, list)) and v]
        if not containers or rng.random() < 0.3:
            break
        _, node = rng.choice(containers)
    if isinstance(node, dict) and node:
        key = rng.choice(sorted(node))
        if rng.random() < 0.2:
            del node[key]
        elif rng.random() < 0.1:
            node["unexpected_" + key] = rng.choice(WRONG_VALUES)
        else:
            node[key] = rng.choice(WRONG_VALUES)
    elif isinstance(node, list) and node:
        node[rng.randrange(len(node))] = rng.choice(WRONG_VALUES)


def import_cases(count: int = IMPORT_CASES, seed: int = 2) -> list[bytes]:
    """Runs files: truncated, byte-flipped, wrongly typed, too many runs, too large, or not JSON at all."""
    rng = random.Random(seed)
    valid = exported_runs()
    cases: list[bytes] = []
    while len(cases) < count:
        action = rng.random()
        if action < 0.45:
            data = json.loads(valid)
            for _ in range(rng.randint(1, 3)):
                _mutate_tree(rng, data)
            cases.append(json.dumps(data).encode())
        elif action < 0.6:
            cases.append(valid.encode()[: rng.randint(0, len(valid))])
        elif action < 0.75:
            raw = bytearray(valid.encode())
            for _ in range(rng.randint(1, 20)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
            cases.append(bytes(raw))
        elif action < 0.8:
            one = json.loads(valid)[:1]
            cases.append(json.dumps(one * rng.randint(records.MAX_RUNS + 1, 400)).encode())
        elif action < 0.85:
            cases.append(valid.encode() + b" " * (records.MAX_IMPORT_BYTES + 1 - len(valid)))
        elif action < 0.9:
            depth = rng.randint(500, 100_000)
            cases.append(b"[" * depth + b"]" * depth)
        elif action < 0.95:
            cases.append(bytes(rng.randrange(256) for _ in range(rng.randint(0, 2000))))
        else:
            cases.append(json.dumps(rng.choice(WRONG_VALUES + [[None], [[]], ["run"]])).encode())
    return cases


def run_cases(cases, parse, refusal: type[Exception]) -> dict[str, int]:
    """Every case must parse or raise the refusal (whose message the student sees); anything else propagates."""
    loaded = refused = 0
    for case in cases:
        try:
            parse(case)
            loaded += 1
        except refusal:
            refused += 1
    return {"cases": len(cases), "loaded": loaded, "refused_with_a_message": refused}


def run_url_cases(cases) -> dict[str, int]:
    """URL cases: a config or a ConfigError."""
    return run_cases(cases, RunConfig.from_query, ConfigError)


def run_import_cases(cases) -> dict[str, int]:
    """Runs files: clean records or a RecordError."""
    return run_cases(cases, records.parse_records, RecordError)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Run the seeded fuzz sets through the parsers; count the outcomes.")
    parser.add_argument("--out", type=Path, help="also write the counts here as JSON (results/fuzz.json)")
    args = parser.parse_args()
    counts = {"url": run_url_cases(url_cases()), "import": run_import_cases(import_cases())}
    print("URL query configs:", counts["url"])
    print("imported runs files:", counts["import"])
    if args.out:
        written = {"command": f"python tests/fuzz.py --out {args.out}", **counts}
        args.out.write_text(json.dumps(written, indent=2) + "\n")
