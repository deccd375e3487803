"""Drill-down: the lesson's steps as cards (Target, change, expected band), loadable, with this session's Results."""

import streamlit as st

from drill.analysis import EPOCH_BUDGET, PARAM_BUDGET, TARGET_ACC
from drill.gallery import NETWORKS
from drill.presets import LESSON, matching_preset
from drill.proof import DEFAULT_SEEDS
from drill.run_record import Status
from drill.summary import summarize
from views import common

# -- title (the inputs are the cards' load buttons, drawn below) -------------------------------------------------------
st.title("🪜 The MNIST coding drill-down")
st.markdown(
    f"**Goal:** a CNN that reaches **>= {TARGET_ACC}% test accuracy in each of its last epochs**, within "
    f"**{EPOCH_BUDGET} epochs**, with **fewer than {PARAM_BUDGET:,} parameters**. Start from a heavy network that "
    "works, then change one thing per step (batch norm, global average pooling, dropout, augmentation, 1x1 "
    "transitions, an LR schedule). Write every step up as **Target → Result → Analysis**."
)
st.caption(
    "Load a step into the builder, look at its layer table, train it, and come back here: the card then "
    "shows your Result and its Analysis."
)

shelf = common.manager().shelf
if shelf is not None and (problems := shelf.problems()):
    st.warning(
        "Some recorded runs are not served, so those steps train on this server when asked for: "
        + " · ".join(problems),
        icon="📼",
    )

# -- state set-up: the latest finished run of each step in this session --------------------------------------------
manager, me = common.manager(), common.owner()
finished = {}
for run in manager.snapshots(me):
    step = matching_preset(run.config)
    if run.status == Status.FINISHED and step:
        finished[step] = run  # oldest first, so the latest run of a step wins

taught = common.lesson()
later = {preset.name for preset in LESSON if taught is not None and preset.step > taught.step}

# -- draw ---------------------------------------------------------------------------------------------------------
for preset in LESSON:
    with st.container(border=True):
        text, side = st.columns([4, 1], vertical_alignment="center")
        with text:
            st.subheader(preset.title)
            st.markdown(f"**Target:** {preset.target}")
            st.markdown(f"**What changes:** {preset.change}")
            st.caption(f"Seed write-ups report: {preset.seed_band}")
            if preset.measured:
                st.caption(f"Measured in this lab (15 epochs): {preset.measured}")
        with side:
            st.metric("Parameters", f"{summarize(preset.config.model).total_params:,}")
            if preset.name in later:
                st.caption("Later in the lesson: your teacher's link has not reached this step.")
            elif st.button("Load into the builder", key=f"load_{preset.name}", type="primary", width="stretch"):
                if common.load_preset(preset.name):
                    st.switch_page("views/build.py", query_params=common.link_params())
        run = finished.get(preset.name)
        if run is not None:
            common.show_result(list(run.epochs), run.params)
        proof = manager.proof_of(preset.config)
        refused = manager.refusal(preset.config, seeds=DEFAULT_SEEDS)  # over the server's limit (drill.cost)
        if proof is not None:
            (st.success if proof.proven else st.caption)(f"Over seeds 1-{len(proof.seeds)}: {proof.verdict()}")
        elif run is not None and preset.name not in later:
            if st.button(
                f"Prove it over {DEFAULT_SEEDS} seeds",
                key=f"prove_{preset.name}",
                disabled=manager.active_count(me) > 0 or bool(refused),
                help=refused
                or "Your run of this step is one seed: train seeds 1-3 of it (seeds trained before are served at "
                "once).",
            ):
                if common.load_preset(preset.name):  # the step as the lesson has it, which is what trains
                    st.session_state.train_job = manager.prove(me, common.config(), preset.title)[0].id
                    st.switch_page("views/train.py", query_params=common.link_params())

# -- the write-ups' networks, rebuilt exactly: not steps of the lesson, but networks to load, read and compare ------
st.header("From the write-ups")
st.caption(
    "Networks the seed write-ups describe layer by layer, rebuilt here with the same parameter count: load one to "
    "read its layer table, change it, or train it (the heaviest may be more than this server allows)."
)
for network in NETWORKS:
    with st.container(border=True):
        text, side = st.columns([4, 1], vertical_alignment="center")
        with text:
            st.subheader(network.title)
            st.markdown(f"**The write-up reports:** {network.params:,} parameters; {network.reported}.")
            with st.expander("How it is built, and what the write-up leaves out"):
                st.markdown(network.notes)
            st.caption(f"From {network.source}")
        with side:
            st.metric("Parameters", f"{summarize(network.config.model).total_params:,}")
            if st.button("Load into the builder", key=f"load_{network.name}", width="stretch"):
                if common.set_config(network.config, from_widgets=False):
                    st.switch_page("views/build.py", query_params=common.link_params())
