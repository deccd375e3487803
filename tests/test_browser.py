"""End to end in a real browser: `streamlit run app.py` on a free port, driven by headless Chromium via Playwright.

Saves a screenshot of every page to artifacts/screenshots/.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from streamlit_server import CHROMIUM, CHROMIUM_ARGS, ROOT, serve

from drill import ui_logic as ui
from drill.presets import BY_NAME

pytestmark = pytest.mark.browser

SHOTS = ROOT / "artifacts" / "screenshots"
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
# The first epoch of the quick preset (6,000 images) takes seconds alone, but CI may share the cores.
EPOCH_DEADLINE_MS = 180_000
# All 60,000 training images: an epoch outlasts noticing and redrawing a lost live view (20-25 s) on a machine four
# times this one's speed, so a view that comes back shows an epoch before the last.
LONG_RUN = {"subset": 0, "epochs": 3, "seed": 12}


def own_store(tmp_path_factory) -> dict[str, str]:
    """A run store of the server's own: runs finished by other tests must not be served to these ones."""
    return {"DRILL_RUNS_DB": str(tmp_path_factory.mktemp("store") / "runs.sqlite")}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (scripts/test.sh installs it when run as root)")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with serve(own_store(tmp_path_factory), log_path=ROOT / "artifacts" / "streamlit-browser.log") as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser(server):
    sync_api = pytest.importorskip("playwright.sync_api")
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
    first_epoch = page.get_by_text(re.compile(r"Epoch 1 of 3: train"))
    first_epoch.wait_for(timeout=EPOCH_DEADLINE_MS)
    # The live fragment draws the accuracy and loss charts beside the LR plot once an epoch has a point.
    page.wait_for_function("document.querySelectorAll(\"[data-testid='stVegaLiteChart']\").length >= 3")
    button(page, "Stop").evaluate("e => e.scrollIntoView({block: 'start'})")
    page.screenshot(path=SHOTS / "3-train-running.png")

    button(page, "Stop").click()
    page.get_by_text(re.compile("stopped")).first.wait_for()
    settle(page)
    page.screenshot(path=SHOTS / "4-train-stopped.png", full_page=True)

    open_page(page, "Compare")
    assert page.get_by_text("Quick demo").count() > 0  # the stopped run is kept in the session's table
    page.screenshot(path=SHOTS / "5-compare.png", full_page=True)

    open_page(page, "Inspect")
    page.screenshot(path=SHOTS / "6-inspect.png", full_page=True)


def test_a_run_started_in_the_students_other_tab_appears_without_a_click(server, browser, page):
    # The page showing no run must learn of one that starts out of its sight (the student's second tab, or a Start
    # whose callback ran in a rerun that drew nothing) and redraw itself: no click of its own.
    query = BY_NAME["quick"].config.replace(train={"seed": 11}).to_query()
    page.goto(f"{server}/train?{query}")
    settle(page)
    assert button(page, "Start").is_enabled()
    link = page.url
    assert "me=" in link
    other = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
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
        other.context.close()


def test_a_live_view_the_browser_never_got_comes_back_while_the_run_trains(server, page):
    # On a loaded server a tab can miss the live view that Start's rerun drew, its timer included (one tab in thirty
    # to sixty in the 30-tab load test), while the heartbeat drawn before it keeps ticking. Here the browser drops
    # the live view's timer on purpose: the heartbeat must notice that the view no longer redraws and redraw the
    # page, so the curves stream in while the run still trains, not only once it ends.
    forward_msg = pytest.importorskip("streamlit.proto.ForwardMsg_pb2").ForwardMsg
    dropped: list[float] = []

    def relay(client) -> None:
        upstream = client.connect_to_server()

        def to_browser(message) -> None:
            if isinstance(message, bytes) and not dropped:
                msg = forward_msg.FromString(message)
                if msg.WhichOneof("type") == "auto_rerun" and msg.auto_rerun.interval != ui.HEARTBEAT_S:
                    dropped.append(msg.auto_rerun.interval)
                    return
            client.send(message)

        upstream.on_message(to_browser)

    page.route_web_socket(re.compile(r"/_stcore/stream"), relay)
    query = BY_NAME["quick"].config.replace(train=LONG_RUN).to_query()
    page.goto(f"{server}/train?{query}")
    settle(page)
    button(page, "Start").click()
    epoch_line = page.get_by_text(re.compile(rf"Epoch \d+ of {LONG_RUN['epochs']}: train")).first
    epoch_line.wait_for(timeout=EPOCH_DEADLINE_MS)
    assert dropped, "the live view's timer was not dropped, so this test proved nothing"
    # Without the redraw the page stays as Start drew it until the run ends, and then shows only the last epoch.
    assert int(re.search(r"Epoch (\d+)", epoch_line.inner_text()).group(1)) < LONG_RUN["epochs"]
    button(page, "Stop").click()
    page.get_by_text("The run stopped").first.wait_for()


def test_stopping_the_server_mid_run_ends_it_promptly_and_the_run_is_kept(browser, tmp_path_factory):
    # A run is training in a background thread when the server is told to stop: the process must exit, not wait
    # for the run to finish; after a restart the student's link shows the run, stopped, with why.
    store = own_store(tmp_path_factory)
    with serve(store, log_path=ROOT / "artifacts" / "streamlit-stop.log") as (url, process):
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(f"{url}/train")
        button(page, "Start").click()
        page.get_by_text(re.compile(r"batch \d+/94")).first.wait_for(timeout=EPOCH_DEADLINE_MS)
        link = page.url.replace(url, "")
        assert "me=" in link
        context.close()
        started = time.monotonic()
        process.terminate()
        process.wait(timeout=30)
        assert time.monotonic() - started < 30
    with serve(store, log_path=ROOT / "artifacts" / "streamlit-restart.log") as (url, _):
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(url + link)
        # Stopped by the shutdown hook, or (if the process died first) failed when the store was reopened.
        page.get_by_text(re.compile("The run (stopped|failed): the server stopped")).first.wait_for()
        settle(page)
        context.close()
