"""Train: augmentation with a live preview, the LR schedule, and a run whose curves stream in while it trains."""

import time
from collections.abc import Callable

import streamlit as st

from drill import controls, cost, liveness, runview
from drill.augment import PREVIEW_CAPTION, augment_preview
from drill.charts import compare_chart, lr_chart
from drill.config import AugmentConfig, TrainConfig, field_help
from drill.data import DataUnavailable, load_mnist
from drill.jobs import Refused
from drill.proof import DEFAULT_SEEDS, MAX_SEEDS, MIN_SEEDS, Proof
from drill.run_record import ACTIVE, ENDED, Status
from drill.train import lr_points
from views import common
from views.live import LiveViewWatch

# -- the buttons' callbacks ---------------------------------------------------------------------------------------


def start_run(fresh: bool = False) -> None:
    """Start's (and, with fresh, Train it myself's) callback: it runs before the next script run of any kind, so a
    click is never lost to a rerun that does not reach the button (a fragment's timer, another click); the page
    then draws the new run. Fresh passes over a recorded run of the config: the student trains it on this server."""
    cfg = common.config()
    try:
        # A run already going (started in the student's other tab, or by this very click run twice) is shown instead.
        st.session_state.train_job = (
            common.manager().submit(common.owner(), cfg, common.run_label(), one_at_a_time=True, fresh=fresh).id
        )
    except Refused as error:  # the server's limit changed since the page was drawn
        st.session_state.refused = str(error)
        return
    LiveViewWatch.run_started()


def prove_runs() -> None:
    """Prove it over seeds' callback: the page's settings over seeds 1 to Seeds, as one proof."""
    try:
        tickets = common.manager().prove(
            common.owner(), common.config(), common.run_label(), st.session_state.proof_seeds
        )
    except Refused as error:
        st.session_state.refused = str(error)
        return
    st.session_state.train_job = tickets[0].id
    LiveViewWatch.run_started()


def replay(ticket_id: str) -> None:
    """Replay's callback: the recorded run's epochs arrive on the chart again, from the first."""
    st.session_state.replay = (ticket_id, time.monotonic())


def stop_runs() -> None:
    """Stop's callback: stop following every active run of this student."""
    manager, me = common.manager(), common.owner()
    for run in manager.snapshots(me):
        if run.status in ACTIVE:
            manager.stop(run.ticket_id)


# -- title --------------------------------------------------------------------------------------------------------
st.title("📈 Train")
st.caption("Augmentation and training settings for the model built on the Build page; then start a run.")
common.lesson_note()

# -- inputs -------------------------------------------------------------------------------------------------------
cfg, v = common.config(), common.version()
augment_col, train_col = st.columns(2, gap="large")
augment = {}  # a lesson that has not reached augmentation keeps its locked values: no field changes
augmenting = common.shows("augment.rotation")  # the lesson's Augmentation topic holds every augment field
with augment_col:
    st.subheader("Augmentation")
    if not augmenting:
        st.caption("Comes later in the lesson: the lesson link keeps it as its note above says.")
    else:
        left, right = st.columns(2)
        with left:
            augment = common.field_widgets(AugmentConfig, cfg.augment, controls.AUGMENT_CONTROLS[:5])
        with right:
            augment |= common.field_widgets(AugmentConfig, cfg.augment, controls.AUGMENT_CONTROLS[5:])
with train_col:
    st.subheader("Training")
    t, left, right = cfg.train, *st.columns(2)
    with left:
        train = {"epochs": common.field_slider(TrainConfig, "epochs", t.epochs, 1)}
        train["batch_size"] = st.select_slider(
            controls.LABELS["train.batch_size"],
            sorted({8, 16, 32, 64, 128, 256, 512, t.batch_size}),
            value=t.batch_size,
            key=f"train.batch_size_{v}",
            help=field_help(TrainConfig, "batch_size"),
        )
        train["optimizer"] = common.field_choice(
            TrainConfig, "optimizer", t.optimizer, key="train.opt", width="stretch"
        )
        # Only the knobs the optimizer (and, on the right, the schedule) reads are shown; hidden ones keep their values.
        train |= common.field_widgets(TrainConfig, t, controls.train_controls("optimizer", train["optimizer"]))
    with right:
        if common.shows("train.schedule"):
            train["schedule"] = common.field_choice(TrainConfig, "schedule", t.schedule, dropdown=True)
            train |= common.field_widgets(TrainConfig, t, controls.train_controls("schedule", train["schedule"]))
        train["subset"] = common.field_number(TrainConfig, "subset", t.subset, 1000)
        train["seed"] = common.field_number(TrainConfig, "seed", t.seed, 1)
        train["device"] = common.field_choice(TrainConfig, "device", t.device, dropdown=True)

# -- state set-up: a valid config becomes current; the run shown is this session's latest -------------------------
new, config_error = common.apply_config(augment=augment, train=train)
manager, me = common.manager(), common.owner()
runs = manager.snapshots(me)
active = [run for run in runs if run.status in ACTIVE]
shown_run = runview.shown_run(st.session_state.get("train_job", ""), runs)
proof_seeds = runview.proof_runs(shown_run.proof, runs) if shown_run is not None and shown_run.proof else []

# -- draw ---------------------------------------------------------------------------------------------------------
if config_error:
    common.config_error(config_error, {"augment": augment, "train": train}, "The last valid settings stay current.")
with augment_col:
    try:
        if augmenting:
            st.image(augment_preview(load_mnist(), (new or cfg).augment), caption=PREVIEW_CAPTION)
    except DataUnavailable as error:
        st.warning(f"MNIST is not available, so there is no preview (and no training): {error}")
if common.shows("train.schedule"):  # the plot is the schedule's: a lesson that hides it hides its plot too
    with train_col:
        rates, per_epoch = lr_points((new or cfg).train)
        st.altair_chart(lr_chart(rates, per_epoch), width="stretch")


# A run the server would refuse (too long an epoch for its limit) is said here, and its buttons are off.
refused = st.session_state.pop("refused", None) or (manager.refusal(new) if new is not None else None)
proof_refused = new is not None and manager.refusal(new, seeds=st.session_state.get("proof_seeds", DEFAULT_SEEDS))
st.caption(cost.epoch_note(new or cfg))
if refused or proof_refused:
    st.warning(refused or proof_refused)
start_col, stop_col, note_col = st.columns([1, 1, 4], vertical_alignment="center")
start_col.button(
    "Start", type="primary", disabled=bool(active) or new is None or bool(refused), width="stretch", on_click=start_run
)
stop_col.button("Stop", disabled=not active, width="stretch", on_click=stop_runs)
note_col.caption(
    "One run at a time per student: the class shares this server's few CPU cores, and every extra run "
    "would wait in the queue behind everyone else's. Stop your run to start another."
)
prove_col, seeds_col, prove_note_col = st.columns([1, 1, 4], vertical_alignment="bottom")
seeds_col.number_input("Seeds", MIN_SEEDS, MAX_SEEDS, DEFAULT_SEEDS, 1, key="proof_seeds")
prove_col.button(
    "Prove it over seeds",
    disabled=bool(active) or new is None or bool(proof_refused),
    width="stretch",
    on_click=prove_runs,
    help="Train these settings with seeds 1 to Seeds: 99.4% must hold in the last epochs for every seed, not once.",
)
prove_note_col.caption(
    "A proof counts as your one run; its first seed queues like a new run and the others wait with runs that already "
    "had a turn. Seeds trained before (by you, a classmate, or recorded) are served at once; Stop stops every seed."
)


# Only beside the recorded run of the settings on the page: Train it myself trains what the page holds.
recorded = shown_run is not None and shown_run.recorded and not shown_run.proof
if recorded and shown_run.status == Status.FINISHED and shown_run.config == new:
    replay_col, myself_col, _ = st.columns([1, 1, 4])
    replay_col.button("▶️ Replay", width="stretch", on_click=replay, args=(shown_run.ticket_id,))
    myself_col.button(
        "Train it myself",
        disabled=bool(active) or bool(manager.refusal(new, fresh=True)),
        width="stretch",
        on_click=start_run,
        args=(True,),
    )
replaying = shown_run is not None and st.session_state.get("replay", ("",))[0] == shown_run.ticket_id
live = any(run.status in ACTIVE for run in proof_seeds or [shown_run] if run is not None)
tick = runview.REPLAY_EPOCH_S / 4 if replaying else liveness.poll_seconds(manager.online_count()) if live else None


def polled(was_active: bool, fresh: Callable[[], list], ids: list[str]) -> list:
    """What a live view draws: on its first draw in a full run, the snapshots the buttons were drawn from (so the
    two agree), on its own reruns fresh ones; a view that was active and no longer is reruns the page once, which
    redraws the buttons and stops the timer."""
    common.manager().touch(common.owner())  # this page polling the run is the surest sign the tab is open
    if was_active:
        LiveViewWatch.view_drawn()
    runs = st.session_state.pop("train_shown", None)
    if runs is None or [run.ticket_id for run in runs] != ids:
        runs = fresh()
    if was_active and not any(run.status in ACTIVE for run in runs):
        st.rerun()
    return runs


@st.fragment(run_every=tick)
def show_run(ticket_id: str, was_active: bool, was_replaying: bool) -> None:
    """The run's status, progress and curves; redrawn every poll (1-4 s, by class size) while it is active, and
    four times an epoch while a recorded run replays."""
    shown = polled(was_active, lambda: [run for run in [common.manager().snapshot(ticket_id)] if run], [ticket_id])
    if not shown:
        return
    (run,) = shown
    if was_replaying:
        run = runview.replayed(run, time.monotonic() - st.session_state.replay[1])
        if run is None:  # all shown: the whole run, drawn by a full rerun whose fragment no longer ticks
            del st.session_state.replay
            st.rerun()
    st.markdown(runview.status_text(run.status, run.queue_position, run.label, len(run.epochs)))
    if run.note:
        st.info(run.note, icon="🔁")
    if note := runview.sharing_note(run):
        st.caption(note)
    if run.status in (Status.RUNNING, Status.REPLAYING):
        st.progress(runview.progress_fraction(run.progress), text=runview.progress_text(run.progress))
    elif run.status in (Status.FAILED, Status.STOPPED):
        (st.error if run.status == Status.FAILED else st.warning)(f"The run {run.status}: {run.reason}")
    epochs = list(run.epochs)
    if epochs:
        st.markdown(runview.epoch_line(epochs[-1], run.config.train.epochs))
    if epochs or run.batch_losses:
        accuracy, loss = st.columns(2)
        accuracy_spec, loss_spec = runview.run_charts(run)
        if epochs:
            accuracy.vega_lite_chart(spec=accuracy_spec, width="stretch")
        else:
            accuracy.info(runview.no_accuracy_note(run))
        loss.vega_lite_chart(spec=loss_spec, width="stretch")
    if run.status in ENDED and epochs:
        common.show_result(epochs, run.params)


@st.fragment(run_every=tick)
def show_proof(proof_id: str, ids: list[str], label: str, was_active: bool) -> None:
    """A proof's seeds as one view: their test curves overlaid, the table of their last epochs, the verdict."""
    runs = polled(was_active, lambda: runview.proof_runs(proof_id, common.manager().snapshots(common.owner())), ids)
    proof = Proof.of(runs)
    st.markdown(runview.proof_headline(label, proof))
    st.markdown("\n".join(f"- {runview.seed_line(run)}" for run in runs))
    if any(run.epochs for run in runs):
        curves = [(f"seed {run.config.train.seed}", list(run.epochs)) for run in runs]
        st.altair_chart(compare_chart(curves, "test_acc"), width="stretch")
    st.markdown(proof.table())
    (st.success if proof.proven else st.info if proof.going else st.warning)(f"**Analysis:** {proof.verdict()}")


if proof_seeds:
    st.session_state.train_shown = proof_seeds
    show_proof(shown_run.proof, [run.ticket_id for run in proof_seeds], shown_run.label, live)
elif shown_run is not None:
    st.session_state.train_shown = [shown_run]
    show_run(shown_run.ticket_id, live, replaying)
