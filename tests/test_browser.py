"""End to end in a real browser: `streamlit run app.py` on a free port, driven by headless Chromium via Playwright.

Saves a screenshot of every page to artifacts/screenshots/.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import need, need_module, trained_here, wait_until
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit_server import CHROMIUM, CHROMIUM_ARGS, ROOT, serve

from drill import inspection, liveness
from drill.backends import default_slots, usable_cpus
from drill.config import RunConfig
from drill.data import load_mnist
from drill.presets import BY_NAME, matching_preset
from drill.run_record import Epoch

pytestmark = pytest.mark.browser

SHOTS = ROOT / "artifacts" / "screenshots"
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
# All 60,000 training images: an epoch outlasts noticing and redrawing a lost live view (20-25 s) on a machine four
# times this one's speed, so a view that comes back shows an epoch before the last; and a run the test stops is still
# going when it does.
LONG_RUN = {"subset": 0, "epochs": 3, "seed": 12}
# A run takes as long as the machine makes it, so a wait for what a run shows has no deadline of its own: it gives
# up when the page has shown no change of the run's progress for STALL_S (a stuck run, or a page that stopped
# redrawing: the heartbeat redraws a lost live view within about 25 s), or after LIMIT_S in all.
STALL_S = 180
LIMIT_S = 3600
PROGRESS = re.compile(r"epoch \d+/\d+ · batch \d+/\d+|is queued: \d+ run|Starting: loading MNIST")
EPOCH_LINE = r"Epoch {epoch} of {epochs}: train [\d.]+% · test ([\d.]+)%"
WAIT_MS = 60_000  # for expect(), whose own default (5 s) is short for a busy machine


def own_store(tmp_path_factory) -> dict[str, str]:
    """A run store of the server's own: runs finished by other tests must not be served to these ones."""
    return {"DRILL_RUNS_DB": str(tmp_path_factory.mktemp("store") / "runs.sqlite")}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need(Path(CHROMIUM).exists(), "Debian's chromium is not installed (scripts/test.sh installs it when run as root)")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with serve(own_store(tmp_path_factory), log_path=ROOT / "artifacts" / "streamlit-browser.log") as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser(server):
    sync_api = need_module("playwright.sync_api", "the playwright package is not installed (requirements-dev.txt)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    context.close()


def settle(page) -> None:
    """Wait until the script run has finished and nothing on the page is an exception."""
    page.wait_for_selector(IDLE)
    errors = page.locator("[data-testid='stException']")
    assert errors.count() == 0, errors.first.inner_text()


def button(page, name: str):
    """A button of the page itself (Streamlit's header has a "Stop" of its own while a script runs)."""
    return page.get_by_test_id("stMainBlockContainer").get_by_role("button", name=name, exact=True)


def wait_for_run_text(page, pattern: str) -> re.Match:
    """Wait until the page's main block shows pattern (a regex) while the run's progress keeps moving; the match."""
    main = page.get_by_test_id("stMainBlockContainer")
    started = changed = time.monotonic()
    shown = None
    errors = page.locator("[data-testid='stException']")
    while True:
        assert errors.count() == 0, errors.first.inner_text()
        text = main.inner_text()
        found = re.search(pattern, text)
        if found:
            return found
        now = time.monotonic()
        if PROGRESS.findall(text) != shown:
            shown, changed = PROGRESS.findall(text), now
        assert now - changed < STALL_S, f"waiting for {pattern!r}: no progress for {STALL_S} s; the page shows {shown}"
        assert now - started < LIMIT_S, f"waiting for {pattern!r}: not there after {LIMIT_S} s; the page shows {shown}"
        page.wait_for_timeout(500)


def download(page, label: str) -> bytes:
    """The file a download button of the page gives."""
    with page.expect_download() as started:
        page.get_by_test_id("stDownloadButton").filter(has_text=label).get_by_role("button").click()
    return Path(started.value.path()).read_bytes()


def open_page(page, name: str) -> None:
    """Click a page in the sidebar navigation and wait for it to render."""
    page.locator("[data-testid='stSidebarNav']").get_by_text(name, exact=True).click()
    page.get_by_role("heading", name=re.compile(name)).first.wait_for()
    settle(page)


def test_a_deep_link_on_a_fresh_server_opens_the_page_inside_the_app(server, page):
    # The first visit after a start is a shared link straight to a page: it must get the app's sidebar and config.
    page.goto(f"{server}/train?ep=2")
    page.get_by_role("heading", name=re.compile("Train")).first.wait_for()
    settle(page)
    assert page.locator("[data-testid='stSidebar']").get_by_text("Current model").count() == 1
    assert "ep=2" in page.url


def test_the_lesson_end_to_end(server, page):
    page.goto(server)
    page.get_by_text("Load into the builder").first.wait_for()
    settle(page)
    page.screenshot(path=SHOTS / "1-drilldown.png", full_page=True)

    open_page(page, "Build")
    assert page.get_by_text(re.compile(r"7,570")).count() > 0  # the quick preset's parameter count
    page.screenshot(path=SHOTS / "2-build.png", full_page=True)

    open_page(page, "Train")
    button(page, "Start").click()
    wait_for_run_text(page, EPOCH_LINE.format(epoch=1, epochs=3))
    # The live fragment draws the accuracy and loss charts beside the LR plot once an epoch has a point.
    page.wait_for_function("document.querySelectorAll(\"[data-testid='stVegaLiteChart']\").length >= 3")
    page.screenshot(path=SHOTS / "3-train-running.png")
    # The quick demo runs to its end, however fast the machine: what the later pages show is then known exactly.
    last_test = wait_for_run_text(page, EPOCH_LINE.format(epoch=3, epochs=3)).group(1)
    page.get_by_text(re.compile(r"Quick demo\W+finished")).first.wait_for()
    settle(page)
    page.screenshot(path=SHOTS / "4-train-finished.png", full_page=True)

    open_page(page, "Compare")
    (run,) = json.loads(download(page, "Download the runs (JSON)"))
    assert matching_preset(RunConfig.from_dict(run["config"])) == "quick"
    assert (run["status"], len(run["epochs"]), f"{run['epochs'][-1]['test_acc']:.2f}") == ("finished", 3, last_test)
    # The write-up table is Markdown, so its row is text in the page (the table above it is drawn on a canvas).
    best = max(epoch["test_acc"] for epoch in run["epochs"])
    write_up = page.get_by_test_id("stMainBlockContainer").get_by_test_id("stMarkdownContainer")
    row = write_up.locator("table tr").filter(has_text="Quick demo")
    assert row.count() == 1 and f"Best test {best:.2f}% after 3 epochs" in row.inner_text()
    assert "Quick demo" in download(page, "Download the table (Markdown)").decode()
    page.screenshot(path=SHOTS / "5-compare.png", full_page=True)

    open_page(page, "Inspect")
    main = page.get_by_test_id("stMainBlockContainer")
    assert main.get_by_role("combobox", name="Run").input_value() == "Quick demo, seed 1 (finished)"
    wrong = int(re.search(r"(\d+) of 10,000 test digits are misclassified", main.inner_text()).group(1))
    assert 0 < wrong < 5000
    page.get_by_role("tab", name="Confusion matrix").click()
    accuracy = main.get_by_test_id("stMetric").filter(has_text="Test accuracy").get_by_test_id("stMetricValue")
    assert accuracy.inner_text() == f"{100 - wrong / 100:.2f}%"
    # The model the page reads is the one trained: its test accuracy is the run's last (to a digit or two that the
    # server's thread count can tip at float rounding).
    assert abs((100 - wrong / 100) - float(last_test)) <= 0.02
    page.screenshot(path=SHOTS / "6-inspect.png", full_page=True)


def test_a_run_started_in_the_students_other_tab_appears_without_a_click(server, browser, page):
    # The page showing no run must learn of one that starts out of its sight (the student's second tab, or a Start
    # whose callback ran in a rerun that drew nothing) and redraw itself: no click of its own.
    query = BY_NAME["quick"].config.replace(train={**LONG_RUN, "seed": 11}).to_query()
    page.goto(f"{server}/train?{query}")
    settle(page)
    assert button(page, "Start").is_enabled()
    link = page.url
    assert "me=" not in link
    other = page.context.new_page()  # the student's second tab: the same browser, so the same id in its cookie
    other.set_default_timeout(60_000)
    try:
        other.goto(link)
        settle(other)
        button(other, "Start").click()
        other.get_by_text(re.compile(r": running|is queued")).first.wait_for()
        # Within a few heartbeats (5 s each), with room for a busy CI machine.
        page.get_by_text(re.compile(r": running|is queued")).first.wait_for()
        assert button(page, "Start").is_disabled()
        button(other, "Stop").click()
        page.get_by_text("The run stopped").first.wait_for()
        settle(page)
        assert button(page, "Start").is_enabled()
    finally:
        other.close()


def test_a_live_view_the_browser_never_got_comes_back_while_the_run_trains(server, page):
    # On a loaded server a tab can miss the live view that Start's rerun drew, its timer included (one tab in thirty
    # to sixty in the 30-tab load test), while the heartbeat drawn before it keeps ticking. Here the browser drops
    # the live view's timer on purpose: the heartbeat must notice that the view no longer redraws and redraw the
    # page, so the curves stream in while the run still trains, not only once it ends.
    dropped: list[float] = []

    def relay(client) -> None:
        upstream = client.connect_to_server()

        def to_browser(message) -> None:
            if isinstance(message, bytes) and not dropped:
                msg = ForwardMsg.FromString(message)
                if msg.WhichOneof("type") == "auto_rerun" and msg.auto_rerun.interval != liveness.HEARTBEAT_S:
                    dropped.append(msg.auto_rerun.interval)
                    return
            client.send(message)

        upstream.on_message(to_browser)

    page.route_web_socket(re.compile(r"/_stcore/stream"), relay)
    query = BY_NAME["quick"].config.replace(train=LONG_RUN).to_query()
    page.goto(f"{server}/train?{query}")
    settle(page)
    button(page, "Start").click()
    shown = wait_for_run_text(page, EPOCH_LINE.format(epoch=r"(\d+)", epochs=LONG_RUN["epochs"]))
    assert dropped, "the live view's timer was not dropped, so this test proved nothing"
    # Without the redraw the page stays as Start drew it until the run ends, and then shows only the last epoch.
    assert int(shown.group(1)) < LONG_RUN["epochs"]
    button(page, "Stop").click()
    page.get_by_text("The run stopped").first.wait_for()


def test_a_proof_over_seeds_streams_its_seeds_and_gives_the_verdict(server, page):
    query = BY_NAME["quick"].config.replace(train={"subset": 640, "epochs": 2, "seed": 1}).to_query()
    page.goto(f"{server}/train?{query}")
    settle(page)
    main = page.get_by_test_id("stMainBlockContainer")
    main.get_by_role("spinbutton", name="Seeds").fill("2")
    main.get_by_role("spinbutton", name="Seeds").press("Enter")
    settle(page)
    button(page, "Prove it over seeds").click()
    page.get_by_text(re.compile(r"over 2 seeds: \d of 2 done")).first.wait_for()
    assert button(page, "Start").is_disabled(), "a proof is the student's one run"
    wait_for_run_text(page, r"over 2 seeds: (proven|not proven)")
    settle(page)
    text = main.inner_text()
    assert "seed 1: finished" in text and "seed 2: finished" in text, text
    table = main.get_by_test_id("stMarkdownContainer").locator("table").filter(has_text="pass")
    assert [row.inner_text().split("\t")[0] for row in table.locator("tbody tr").all()] == ["1", "2"]
    assert re.search(r"holds (>=|≥) 99.4% in each of the last 4 epochs for 0 of 2 seeds; mean last-epoch", text), text
    page.wait_for_function("document.querySelectorAll(\"[data-testid='stVegaLiteChart']\").length >= 2")
    assert button(page, "Start").is_enabled()
    page.screenshot(path=SHOTS / "7-train-proof.png", full_page=True)


def stroke(page, canvas, points: list[tuple[float, float]]) -> None:
    """Draw one stroke with the mouse through points given as fractions of the canvas's width and height."""
    box = canvas.bounding_box()
    at = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in points]
    page.mouse.move(*at[0])
    page.mouse.down()
    for x, y in at[1:]:
        page.mouse.move(x, y, steps=8)
    page.mouse.up()


def test_a_digit_drawn_on_the_canvas_is_read_at_each_stroke_and_undo_and_clear_take_strokes_back(server, page):
    expect = need_module("playwright.sync_api", "the playwright package is not installed").expect
    query = BY_NAME["quick"].config.replace(train={"subset": 640, "epochs": 1, "seed": 15}).to_query()
    page.goto(f"{server}/train?{query}")
    settle(page)
    button(page, "Start").click()
    wait_for_run_text(page, EPOCH_LINE.format(epoch=1, epochs=1))
    expect(button(page, "Start")).to_be_enabled(timeout=WAIT_MS)  # the run is over, so Inspect offers it
    open_page(page, "Inspect")
    page.get_by_role("tab", name="Your digit").click()
    main = page.get_by_test_id("stMainBlockContainer")
    empty = main.get_by_text(re.compile(r"^Nothing is drawn yet: draw one digit"))
    empty.wait_for()
    frame = page.frame_locator("[data-testid='stCustomComponentV1']")
    canvas = frame.locator("canvas")
    assert canvas.bounding_box()["width"] == inspection.CANVAS_PX
    seen = main.get_by_test_id("stImage").filter(has_text="what the model sees").locator("img")
    reading = main.get_by_text(re.compile(r"^The model reads \d \([\d.]+% sure\)\.$"))

    stroke(page, canvas, [(0.5, 0.15), (0.48, 0.5), (0.46, 0.85)])  # a 1
    reading.wait_for()
    settle(page)
    assert empty.count() == 0
    one = seen.get_attribute("src")
    stroke(page, canvas, [(0.3, 0.15), (0.5, 0.15)])  # a bar to its left: the model sees a new digit
    expect(seen).not_to_have_attribute("src", one, timeout=WAIT_MS)
    settle(page)
    page.screenshot(path=SHOTS / "8-inspect-drawing.png", full_page=True)

    frame.get_by_role("button", name="Undo").click()  # takes the bar back: the same pixels as the 1 alone
    expect(seen).to_have_attribute("src", one, timeout=WAIT_MS)
    frame.get_by_role("button", name="Clear").click()
    empty.wait_for()
    settle(page)
    assert reading.count() == 0 and seen.count() == 0
    assert frame.get_by_role("button", name="Undo").is_disabled()


def new_page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    return context, page


# Fifteen short epochs: the server can be killed while epoch 7 trains.
FIFTEEN = BY_NAME["quick"].config.replace(train={"subset": 640, "epochs": 15, "seed": 13})


def test_a_server_killed_mid_run_resumes_it_on_restart_and_the_page_shows_nothing_was_lost(browser, tmp_path_factory):
    store = own_store(tmp_path_factory)
    with serve(store, log_path=ROOT / "artifacts" / "streamlit-kill.log") as (url, process):
        context, page = new_page(browser)
        page.goto(f"{url}/train?{FIFTEEN.to_query()}")
        button(page, "Start").click()
        wait_for_run_text(page, EPOCH_LINE.format(epoch=6, epochs=15))
        link = page.url.replace(url, "")
        process.kill()  # SIGKILL: no shutdown hook, nothing written on the way out
        process.wait(timeout=30)
        page.close()
    # The same browser comes back (its cookie holds the student's id); the restarted server has another port.
    with serve(store, log_path=ROOT / "artifacts" / "streamlit-restart.log") as (url, process):
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(url + link)
        page.get_by_text(re.compile(r"Resumed after epoch (6|7): the server restarted, and nothing trained")).wait_for()
        wait_for_run_text(page, EPOCH_LINE.format(epoch=15, epochs=15))
        settle(page)
        context.close()
        started = time.monotonic()
        process.terminate()  # a clean stop is prompt, whatever is training
        process.wait(timeout=30)
        assert time.monotonic() - started < 30
    with sqlite3.connect(store["DRILL_RUNS_DB"]) as db:
        [(epochs,)] = db.execute("SELECT epochs FROM runs WHERE status = 'finished'").fetchall()
    # The server trains two runs at once on these two cores: a thread each, as here.
    alone = trained_here(FIFTEEN, load_mnist(), max(1, usable_cpus() // default_slots()))
    stored = [Epoch.from_dict(e, "epochs", lambda field, problem: ValueError(problem)) for e in json.loads(epochs)]
    untimed = [[dataclasses.replace(e, seconds=0.0) for e in run] for run in (stored, alone.epochs)]
    assert untimed[0] == untimed[1] and len(untimed[0]) == 15


@pytest.mark.ray
def test_a_ray_backed_server_streams_a_run_to_the_browser(browser, ray_cluster, tmp_path_factory):
    cluster, _ = ray_cluster
    env = {**own_store(tmp_path_factory), "DRILL_BACKEND": "ray", "RAY_ADDRESS": cluster.address}
    config = BY_NAME["quick"].config.replace(train={"subset": 2000, "epochs": 2, "seed": 14})
    with serve(env, log_path=ROOT / "artifacts" / "streamlit-ray.log") as (url, _):
        context, page = new_page(browser)
        page.goto(f"{url}/train?{config.to_query()}")
        settle(page)
        assert page.get_by_text("Runs can't train right now").count() == 0
        button(page, "Start").click()
        wait_for_run_text(page, r"epoch 1/2 · batch \d+/32")  # batches stream from the actor while it trains
        wait_for_run_text(page, EPOCH_LINE.format(epoch=2, epochs=2))
        page.get_by_text(re.compile("Quick demo.*: finished")).first.wait_for()
        context.close()


TEACHER_KEY = "browser-teacher-key"


def class_picker(page):
    return page.get_by_test_id("stMainBlockContainer").get_by_role("combobox", name="A run of the class")


def class_members(page) -> list[str]:
    """The Class page's runs as its run picker lists them: "Student: run (status)". The live part redraws every few
    seconds, which closes an open list, so the list is opened again until it is read whole."""
    found = []

    def read() -> bool:
        class_picker(page).click()
        found[:] = page.get_by_role("option").all_inner_texts()
        page.keyboard.press("Escape")
        return bool(found)

    wait_until(read, timeout=120, interval=1.0, what="the class's run picker to open")
    return found


def pick_class_run(page, student: str) -> None:
    """Pick a run of this student in the Class page's run picker (reopened if a redraw closed it)."""

    def pick() -> bool:
        class_picker(page).click()
        option = page.get_by_role("option", name=re.compile(f"^{student}: "))
        try:
            option.click(timeout=5000)
        except Exception:  # the list closed under the click: a redraw came first
            page.keyboard.press("Escape")
            return False
        return True

    wait_until(pick, timeout=120, interval=1.0, what=f"a run of {student} to be picked")


def owner_cookie(page) -> str:
    """The student's id as the browser keeps it, once the page has set it."""
    found = {}

    def kept() -> bool:
        found.update({c["name"]: c["value"] for c in page.context.cookies()})
        return "drill_owner" in found

    wait_until(kept, timeout=60, what="the page to keep the student's id in a cookie")
    return found["drill_owner"]


def join_class(page, url: str, code: str, name: str) -> None:
    page.goto(f"{url}/class_page?{'class=' + code if code else ''}")
    page.get_by_role("heading", name="Class").first.wait_for()
    settle(page)
    page.get_by_role("textbox", name="Display name").fill(name)
    button(page, "Join the class").click()
    page.get_by_text(f"You are in class {code} as").first.wait_for()
    settle(page)


def test_a_class_live_on_the_class_page_the_teacher_stops_a_run_and_a_copied_address_bar_gives_nothing(
    browser, tmp_path_factory
):
    env = {**own_store(tmp_path_factory), "DRILL_TEACHER_KEY": TEACHER_KEY}
    short = BY_NAME["quick"].config.replace(train={"subset": 1000, "epochs": 1, "seed": 31})
    long = BY_NAME["quick"].config.replace(train={**LONG_RUN, "seed": 32})
    outside = BY_NAME["quick"].config.replace(train={"subset": 1000, "epochs": 1, "seed": 33})
    with serve(env, log_path=ROOT / "artifacts" / "streamlit-class.log") as (url, _):
        contexts = {}
        try:
            for who in ("ana", "bo", "cy", "teacher", "dan"):
                contexts[who] = new_page(browser)
            ana, bo, cy, teacher, dan = (page for _, page in contexts.values())
            # The teacher's page is open before any run exists: what follows reaches it without a click.
            teacher.goto(f"{url}/class_page?class=lab-1")
            teacher.get_by_text("No runs in this class yet").wait_for()
            join_class(ana, url, "lab-1", "Ana")
            join_class(bo, url, "lab-1", "Bo")
            # A name as HTML is refused with a message, shown as text: no element of it reaches the page.
            bo.get_by_role("textbox", name="Display name").fill("<img src=x onerror=alert(1)>")  # 28 characters
            button(bo, "Change my name").click()
            bo.get_by_text("can't hold '<'").first.wait_for()
            assert bo.locator("img[src='x']").count() == 0
            for page, config in ((bo, long), (cy, outside), (ana, short)):
                page.goto(f"{url}/train?{config.to_query()}")
                settle(page)
                button(page, "Start").click()
                page.get_by_text(re.compile(r": running|is queued|: finished")).first.wait_for()

            # Live: the class's two runs appear, and Ana's short one finishes, on the page with nobody clicking.
            teacher.get_by_text("2 run(s) in class lab-1, 1 going").wait_for(timeout=LIMIT_S * 1000)
            open_page(ana, "Class")
            ana.get_by_text("2 run(s) in class lab-1").wait_for()
            for page in (teacher, ana):  # without the key, no teacher's button
                listed = class_members(page)
                assert len(listed) == 2 and all(item.startswith(("Ana: ", "Bo: ")) for item in listed), listed
                assert any(item.startswith("Bo: ") and re.search(r"running epoch|queued", item) for item in listed)
                for hidden in ("Stop this run", "Clear the class", "Unpin"):
                    assert button(page, hidden).count() == 0
                assert page.get_by_test_id("stDownloadButton").count() == 0
            ana.screenshot(path=SHOTS / "class.png", full_page=True)

            teacher.get_by_text("Teacher", exact=True).click()
            key_box = teacher.get_by_label("Teacher key")
            key_box.fill(TEACHER_KEY)
            key_box.press("Enter")
            teacher.get_by_text("Teacher: you can stop and pin").wait_for()
            assert TEACHER_KEY not in teacher.url
            pick_class_run(teacher, "Bo")
            settle(teacher)
            button(teacher, "Stop this run").click()
            bo.get_by_text(re.compile("stopped by the teacher")).first.wait_for()

            # Ana's address bar, copied to Dan: the same page and settings, none of Ana's runs, no power over them.
            sender = owner_cookie(ana)
            open_page(ana, "Compare")
            link = ana.url
            assert "me=" not in link and sender not in link
            dan.goto(link)
            dan.get_by_role("heading", name=re.compile("Compare")).first.wait_for()
            settle(dan)
            dan.get_by_text("No runs yet").wait_for()
            assert owner_cookie(dan) != sender
            dan.goto(link.replace("/compare", "/class_page"))
            settle(dan)
            assert button(dan, "Stop this run").count() == 0
            # Ana's reload keeps her runs: the id came back with her cookie.
            ana.reload()
            ana.get_by_role("heading", name=re.compile("Compare")).first.wait_for()
            settle(ana)
            assert ana.get_by_text("No runs yet").count() == 0
            assert owner_cookie(ana) == sender
        finally:
            for context, _ in contexts.values():
                context.close()


def pick(page, label: str, option: str) -> None:
    """Choose an option of a select box by its label (reopened if a redraw closed the list under the click)."""

    def chosen() -> bool:
        page.get_by_role("combobox", name=label).click()
        try:
            page.get_by_role("option", name=option, exact=True).click(timeout=5000)
        except Exception:  # the list closed under the click: a redraw came first
            page.keyboard.press("Escape")
            return False
        return True

    wait_until(chosen, timeout=120, interval=1.0, what=f"{option!r} to be chosen in {label!r}")
    settle(page)


def test_a_lesson_link_hides_the_controls_not_taught_and_an_edited_address_keeps_them_locked(browser, tmp_path_factory):
    env = {**own_store(tmp_path_factory), "DRILL_TEACHER_KEY": TEACHER_KEY}
    with serve(env, log_path=ROOT / "artifacts" / "streamlit-lesson.log") as (url, _):
        contexts = [new_page(browser) for _ in range(2)]
        try:
            teacher, student = (page for _, page in contexts)
            teacher.goto(f"{url}/class_page?class=lab-3")
            teacher.get_by_role("heading", name="Class").first.wait_for()
            settle(teacher)
            teacher.get_by_text("Teacher", exact=True).click()
            key_box = teacher.get_by_label("Teacher key")
            key_box.fill(TEACHER_KEY)
            key_box.press("Enter")
            teacher.get_by_text("Teacher: you can stop and pin").wait_for()
            sidebar = teacher.get_by_test_id("stSidebar")
            pick(teacher, "Preset", BY_NAME["final"].menu_name)
            sidebar.get_by_text("Lesson link (teacher)").click()
            pick(teacher, "Taught so far", BY_NAME["batchnorm"].title)
            code = sidebar.get_by_test_id("stCode").filter(has_text="lesson=")
            wait_until(lambda: "lesson=" in code.inner_text(), timeout=60, what="the lesson link to be made")
            link = re.sub(r"\s+", "", code.inner_text())
            assert TEACHER_KEY not in link and "drop=" not in link and "class=lab-3" in link

            student.goto(link)
            settle(student)
            open_page(student, "Build")
            main = student.get_by_test_id("stMainBlockContainer")
            main.get_by_text("Not taught yet, so hidden").wait_for()
            assert "Dropout rate 0.02" in main.inner_text()
            main.get_by_test_id("stButtonGroup").get_by_text("Before ReLU", exact=True).wait_for()  # taught by step 3
            assert main.get_by_role("slider", name="Dropout rate").count() == 0
            student.screenshot(path=SHOTS / "lesson-build.png", full_page=True)
            open_page(student, "Train")
            main.get_by_text("Comes later in the lesson").wait_for()
            main.get_by_role("spinbutton", name="Learning rate").wait_for()  # drawn below what is hidden
            settle(student)
            assert main.get_by_role("slider", name="Rotation (± degrees)").count() == 0
            assert main.get_by_role("combobox", name="LR schedule").count() == 0
            assert "lesson=" in student.url and "drop=" not in student.url

            # The student retypes a hidden setting into another page's address: the lesson's value stays.
            student.goto(student.url.replace("/train?", "/compare?") + "&drop=0.4&rot=30")
            student.get_by_text("Set by the lesson, so left as the link has them").first.wait_for()
            settle(student)
            open_page(student, "Build")
            assert "Dropout rate 0.02" in main.inner_text() and "drop=" not in student.url
        finally:
            for context, _ in contexts:
                context.close()
