"""Tests for drill.cost: the epoch estimate against the shipped calibration, how it moves with a config, the server's
limit (its setting, and runs refused by the job manager and on the Train page)."""

from __future__ import annotations

import json

import pytest
from conftest import REPO_ROOT, wait_until
from streamlit.testing.v1 import AppTest

from drill import cost
from drill.config import RunConfig
from drill.gallery import NETWORKS
from drill.jobs import JobManager, Refused
from drill.presets import BY_NAME, PRESETS

CALIBRATION = json.loads(cost.COST_FILE.read_text())
# Its own seed: a config other test files train would be served, finished, from the session's run store.
TINY = BY_NAME["quick"].config.replace(train={"subset": 1000, "epochs": 1, "batch_size": 64, "seed": 1401})


@pytest.fixture
def no_limit_set(monkeypatch):
    monkeypatch.delenv(cost.LIMIT_VARIABLE, raising=False)


# ---------------------------------------------------------------------------------------------------------------
# The estimate
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_every_presets_estimate_is_within_the_files_tolerance_of_its_measured_epoch(preset):
    recorded = CALIBRATION["presets"][preset.name]
    estimated = cost.estimate(preset.config).seconds
    # The layer table gives the features the fit was made from: a change to it shows as a new estimate.
    assert estimated == pytest.approx(recorded["estimated"], rel=0.01)
    assert abs(estimated / recorded["measured"] - 1) <= CALIBRATION["tolerance"]
    assert recorded["error"] == pytest.approx(estimated / recorded["measured"] - 1, abs=0.01)


def test_the_file_holds_every_preset_and_the_largest_error_is_theirs():
    assert set(CALIBRATION["presets"]) == {preset.name for preset in PRESETS}
    errors = [row["error"] for row in CALIBRATION["presets"].values()]
    assert CALIBRATION["largest_preset_error"] == max(errors, key=abs)


def test_the_coefficients_are_the_fit_of_the_files_own_measurements():
    rows = CALIBRATION["configs"]
    for row in rows:
        assert row["features"] == pytest.approx(cost.features(RunConfig.from_dict(row["config"])))
    for part, names, target in (
        ("train", cost.TRAIN_FEATURES, "train_s_per_image"),
        ("test", cost.TEST_FEATURES, "test_s_per_image"),
    ):
        fitted = cost.fit(rows, names, target)
        assert fitted == pytest.approx(CALIBRATION["coefficients"][part], rel=1e-6, abs=1e-15)
        assert all(value >= 0 for value in fitted.values())


def test_the_estimate_grows_with_the_work_an_epoch_does():
    lean = BY_NAME["lean"].config

    def seconds(cfg: RunConfig) -> float:
        return cost.estimate(cfg).seconds

    wider = [lean.replace(model={"layers": f"{c},{c + 4},M,{c + 4},{c + 8},M"}) for c in (8, 16, 32, 64)]
    times = [seconds(cfg) for cfg in wider]
    assert times == sorted(times) and times[-1] > 2 * times[0]
    images = [seconds(lean.replace(train={"subset": n})) for n in (1000, 6000, 30_000)] + [seconds(lean)]
    assert images == sorted(images)
    assert seconds(lean.replace(model={"batch_norm": "before_relu"})) >= seconds(lean)
    assert seconds(BY_NAME["regularised"].config) >= seconds(BY_NAME["batchnorm"].config)
    # Smaller batches: more optimizer steps for the same images.
    assert seconds(lean.replace(train={"batch_size": 32})) >= seconds(lean.replace(train={"batch_size": 256}))
    # The test pass is the same 10,000 images whatever the training subset.
    assert cost.estimate(lean.replace(train={"subset": 1000})).test_s == cost.estimate(lean).test_s


def test_the_note_says_the_epoch_the_images_and_the_run():
    note = cost.epoch_note(BY_NAME["quick"].config)
    epoch = cost.estimate(BY_NAME["quick"].config).seconds
    assert note.startswith(f"About {cost.seconds_text(epoch)} per epoch on this server (6,000 training images")
    assert "for 3 epochs" in note
    assert (
        cost.seconds_text(4.46) == "4.5 s" and cost.seconds_text(23.4) == "23 s" and cost.seconds_text(740) == "740 s"
    )


# ---------------------------------------------------------------------------------------------------------------
# The server's limit
# ---------------------------------------------------------------------------------------------------------------


def test_the_limit_is_the_default_when_unset_and_the_setting_when_given(monkeypatch, no_limit_set):
    assert cost.max_epoch_seconds() == cost.DEFAULT_MAX_EPOCH_S
    monkeypatch.setenv(cost.LIMIT_VARIABLE, "")
    assert cost.max_epoch_seconds() == cost.DEFAULT_MAX_EPOCH_S
    monkeypatch.setenv(cost.LIMIT_VARIABLE, " 120 ")
    assert cost.max_epoch_seconds() == 120.0
    monkeypatch.setenv(cost.LIMIT_VARIABLE, "1e3")
    assert cost.max_epoch_seconds() == 1000.0


@pytest.mark.parametrize("text", ["abc", "0", "-5", "nan", "inf", "300s"])
def test_a_bad_limit_says_what_is_allowed_and_refuses_every_run(monkeypatch, text):
    monkeypatch.setenv(cost.LIMIT_VARIABLE, text)
    message = f"{cost.LIMIT_VARIABLE}={text!r} is not allowed: a number of seconds an epoch, above 0"
    with pytest.raises(ValueError) as error:
        cost.max_epoch_seconds()
    assert str(error.value) == message
    assert cost.refusal(BY_NAME["quick"].config) == f"This server can't start runs: {message}."


def test_the_default_limit_lets_every_preset_train_and_refuses_a_much_wider_skeleton(no_limit_set):
    assert [p.name for p in PRESETS if cost.refusal(p.config)] == []
    wider = BY_NAME["skeleton"].config.replace(model={"layers": "64p,128p,M,128p,128p,M"}, train={"batch_size": 64})
    message = cost.refusal(wider)
    epoch = cost.estimate(wider).seconds
    assert epoch > cost.DEFAULT_MAX_EPOCH_S
    assert message == (
        f"This model would train for about {cost.seconds_text(epoch)} per epoch on this server; this server's limit "
        f"is {cost.seconds_text(cost.DEFAULT_MAX_EPOCH_S)} (DRILL_MAX_EPOCH_S): use fewer channels, an earlier "
        "max-pool, or fewer training images."
    )


def test_the_write_ups_6_4m_parameter_skeleton_is_over_the_default_limit(no_limit_set):
    (widest,) = [network for network in NETWORKS if network.params == 6_379_786]
    assert cost.estimate(widest.config).seconds > 1.5 * cost.DEFAULT_MAX_EPOCH_S
    limit = cost.seconds_text(cost.DEFAULT_MAX_EPOCH_S)
    assert f"this server's limit is {limit} (DRILL_MAX_EPOCH_S)" in cost.refusal(widest.config)
    # The lesson's heaviest step has room under the limit for the estimate's error.
    assert cost.estimate(BY_NAME["skeleton"].config).seconds < cost.DEFAULT_MAX_EPOCH_S / 2


def test_a_run_over_the_limit_is_refused_at_submit_and_nothing_trains(no_limit_set):
    started = []

    def runner(config, *args, **kwargs):  # the manager must never get as far as training
        started.append(config)
        raise AssertionError("a refused run trained")

    limit = cost.estimate(TINY).seconds / 2
    manager = JobManager(runner=runner, data=lambda: None, max_epoch_s=limit)
    try:
        assert manager.refusal(TINY) == cost.refusal(TINY, limit)
        with pytest.raises(Refused) as error:
            manager.submit("ann", TINY)
        assert str(error.value) == cost.refusal(TINY, limit)
        assert f"this server's limit is {cost.seconds_text(limit)} (DRILL_MAX_EPOCH_S)" in str(error.value)
        with pytest.raises(Refused):
            manager.prove("ann", TINY)
        assert manager.snapshots("ann") == [] and manager.running_count() == 0 and started == []
        assert manager.refusal(TINY.replace(train={"subset": 0}), seeds=3) is not None
    finally:
        manager.shutdown(timeout=60)


def test_the_limit_is_read_from_the_environment_at_each_submission(monkeypatch, no_limit_set, small_mnist):
    # Seed 1, as a proof's first seed; a subset no other test file trains, so the store holds no run of it yet.
    seed_1 = TINY.replace(train={"subset": 1088, "seed": 1})
    manager = JobManager(data=lambda: small_mnist, max_running=1)
    try:
        monkeypatch.setenv(cost.LIMIT_VARIABLE, str(cost.estimate(seed_1).seconds * 2))
        ticket = manager.submit("ann", seed_1)
        wait_until(lambda: manager.snapshot(ticket.id).status == "finished", 120, what="the tiny run to finish")
        monkeypatch.setenv(cost.LIMIT_VARIABLE, "0.2")
        # A run trained here is served, so nothing trains and nothing is refused: only a run that must train is.
        assert manager.refusal(seed_1) is None
        served = manager.submit("bob", seed_1)
        assert served.reused and manager.snapshot(served.id).status == "finished"
        seed_2 = seed_1.replace(train={"seed": 2})
        assert "this server's limit is 0.2 s (DRILL_MAX_EPOCH_S)" in manager.refusal(seed_2)
        with pytest.raises(Refused):
            manager.submit("bob", seed_2)
        # Seed 1 is served, seed 2 would train: the proof is refused as a whole, and no seed of it is queued.
        assert manager.refusal(seed_1, seeds=2) is not None
        with pytest.raises(Refused):
            manager.prove("cat", seed_1, seeds=2)
        assert manager.snapshots("cat") == [] and [s.ticket_id for s in manager.snapshots("bob")] == [served.id]
    finally:
        manager.shutdown(timeout=60)


# ---------------------------------------------------------------------------------------------------------------
# The pages
# ---------------------------------------------------------------------------------------------------------------


def page(config: RunConfig, path: str) -> AppTest:
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=60)
    at.query_params.update(config.to_query_params())
    at.run()
    at.switch_page(path).run()
    assert not at.exception, at.exception
    return at


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def test_the_train_page_shows_the_refusal_and_disables_start_and_prove(monkeypatch, no_limit_set):
    config = TINY.replace(train={"seed": 1402})
    monkeypatch.setenv(cost.LIMIT_VARIABLE, "0.5")
    at = page(config, "views/train.py")
    assert [w.value for w in at.warning] == [cost.refusal(config, 0.5)]
    assert button(at, "Start").disabled and button(at, "Prove it over seeds").disabled
    assert cost.epoch_note(config) in [c.value for c in at.caption]

    monkeypatch.delenv(cost.LIMIT_VARIABLE)
    at.run()
    assert not at.exception and [w.value for w in at.warning] == []
    assert not button(at, "Start").disabled and not button(at, "Prove it over seeds").disabled


def test_the_build_page_shows_the_estimate():
    config = BY_NAME["final"].config
    at = page(config, "views/build.py")
    assert cost.epoch_note(config) in [c.value for c in at.caption]
