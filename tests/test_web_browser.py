"""The parents' page in a real browser: Debian's chromium, headless, driven by Selenium through Debian's
chromedriver, against `storybot run` in the sound room. Screenshots go to test-artifacts/ (STORYBOT_TEST_ARTIFACTS
overrides it)."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, need
from tests.soundroom import Recorder
from tests.webpage import PASSWORD, free_port, set_password, start_web_daemon

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCRIPTED_ENGINE = str(Path(__file__).with_name("scripted_engine.py"))
STOP_TO_SILENCE_S = (
    2.5  # the robot promises audio stops within 1 s; the rest is the page, the browser and a loaded host
)
TITLE = "storybot: parents"


def artifacts() -> Path:
    folder = Path(os.environ.get("STORYBOT_TEST_ARTIFACTS") or ROOT / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def browser():
    need(
        Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(),
        "Debian's chromium and chromium-driver are not installed",
    )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        need(False, "selenium is not installed (pip install -e '.[test]')")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=900,1600",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait(what: str, condition, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout_s} s")


def by_id(driver, element_id: str):
    return driver.find_element("id", element_id)


def sentences(driver) -> list[str]:
    """Read in one script: the list is rebuilt when a story starts, which would leave elements stale."""
    return driver.execute_script("return [...document.querySelectorAll('#sentences li')].map(li => li.textContent)")


def text_of(driver, element_id: str) -> str:
    return driver.execute_script("return document.getElementById(arguments[0]).textContent", element_id)


def log_in(driver, base: str) -> None:
    driver.get(base + "/")
    wait("the redirect to the log-in page", lambda: driver.current_url.endswith("/login"))
    driver.save_screenshot(str(artifacts() / "web-login.png"))
    by_id(driver, "password").send_keys(PASSWORD)
    by_id(driver, "login").click()
    wait(
        "the page after logging in",
        lambda: driver.title == TITLE and text_of(driver, "state") in ("idle", "listening"),
    )


def fill(driver, element_id: str, text: str) -> None:
    field = by_id(driver, element_id)
    field.clear()
    field.send_keys(text)


def history(state: Path) -> list[dict]:
    path = state / "web-history.json"
    return json.loads(path.read_text())["entries"] if path.exists() else []


@pytest.mark.soundroom
@pytest.mark.slow
def test_a_parent_watches_stops_caps_sets_bedtime_and_replays_a_favourite(sound_room, browser, tmp_path, smollm2_model):
    state = tmp_path / "state"
    assert set_password(state).returncode == 0
    port = free_port()
    robot = start_web_daemon(sound_room.env(), state, port, "engine.max_tokens=70", "engine.threads=1")
    recorder = None
    try:
        log_in(browser, f"http://127.0.0.1:{port}")

        # a typed request; the story appears sentence by sentence, as the daemon speaks it
        recorder = Recorder()
        fill(browser, "tell-text", "a dragon who loves tea")
        by_id(browser, "tell").click()
        seen: list[tuple[float, int]] = []
        deadline = time.monotonic() + 120
        while len(sentences(browser)) < 3 and time.monotonic() < deadline:
            count = len(sentences(browser))
            if not seen or seen[-1][1] != count:
                seen.append((time.monotonic(), count))
            time.sleep(0.05)
        shown = sentences(browser)
        assert len(shown) >= 3, f"the page showed {shown}; stderr:\n{robot.log_tail(2000)}"
        assert [c for _, c in seen][:3] == [0, 1, 2], f"sentences did not come one by one: {seen}"
        assert seen[2][0] - seen[1][0] > 0.5, "the second sentence came with the first, not as it was spoken"
        assert shown[0].startswith("Once upon a time") and "dragon" in shown[0]
        robot.wait_until(lambda: len(robot.stdout) >= 3, 10, "the daemon's own story lines")
        assert shown[:3] == robot.stdout[:3], "the page shows what the daemon says"
        browser.save_screenshot(str(artifacts() / "web-story.png"))

        # stop: the speaker goes silent
        assert recorder.wait_for_sound(20), "no speech on the speaker"
        pressed = time.monotonic()
        by_id(browser, "stop").click()
        wait("idle after stop", lambda: text_of(browser, "state") == "idle", 10)
        time.sleep(2.0)
        silent = recorder.silent_since()
        assert silent is not None and silent >= pressed - 0.1, "the speaker was still talking"
        print(f"press on the page -> silence: {silent - pressed:.2f} s")
        assert silent - pressed <= STOP_TO_SILENCE_S, f"{silent - pressed:.2f} s from the press to silence"
        recorder.stop()
        recorder = None
        browser.save_screenshot(str(artifacts() / "web-stopped.png"))

        # the volume cap
        fill(browser, "volume", "0.4")
        fill(browser, "cap", "0.5")
        by_id(browser, "volume-save").click()
        settings = state / "settings.json"
        wait(
            "the capped volume saved",
            lambda: settings.exists() and json.loads(settings.read_text())["volume_cap"] == 0.5,
        )
        assert json.loads(settings.read_text())["volume"] == 0.4
        fill(browser, "volume", "0.9")  # above the cap: held at it
        by_id(browser, "volume-save").click()
        wait("the volume held at the cap", lambda: json.loads(settings.read_text())["volume"] == 0.5)
        robot.wait_until(lambda: robot.err_lines("volume 0.50, capped at 0.50"), 10, "the robot's own volume")

        # bedtime: quiet hours around now make the next story a bedtime story
        now = dt.datetime.now()
        start, end = ((now - dt.timedelta(hours=1)).strftime("%H:%M"), (now + dt.timedelta(hours=1)).strftime("%H:%M"))
        fill(browser, "quiet-start", start)
        fill(browser, "quiet-end", end)
        by_id(browser, "limits-save").click()
        wait("the quiet hours saved", lambda: "Quiet hours now" in text_of(browser, "limits-now"), 10)
        saved = json.loads((state / "parents.json").read_text())
        assert (saved["quiet_start"], saved["quiet_end"]) == (start, end)
        fill(browser, "tell-text", "a cat")
        by_id(browser, "tell").click()
        wait("the bedtime story", lambda: "stars came out" in (sentences(browser) or [""])[0], 60)
        wait("the bedtime story's end", lambda: (history(state) or [{}])[-1].get("outcome") == "finished", 180)
        browser.save_screenshot(str(artifacts() / "web-bedtime.png"))
        fill(browser, "quiet-start", "")
        fill(browser, "quiet-end", "")
        by_id(browser, "limits-save").click()
        wait(
            "the quiet hours cleared", lambda: json.loads((state / "parents.json").read_text())["quiet_start"] == "", 10
        )

        # a favourite replays exactly
        told = history(state)[-1]
        wait(
            "the history on the page",
            lambda: browser.find_elements("css selector", f'li.entry[data-id="{told["id"]}"] button.favourite'),
        )
        browser.find_element("css selector", f'li.entry[data-id="{told["id"]}"] button.favourite').click()
        replay = wait("the favourite", lambda: browser.find_elements("css selector", "#favourites button.replay"), 10)
        replay[0].click()
        wait(
            "the replayed story's end",
            lambda: len(history(state)) > told["id"] and history(state)[-1]["outcome"] == "finished",
            180,
        )
        again = history(state)[-1]
        assert (
            again["id"] != told["id"]
            and again["seed"] == told["seed"]
            and again["model_sha256"] == told["model_sha256"]
        )
        assert len(told["model_sha256"]) == 64
        assert again["sentences"] == told["sentences"], "the favourite was not the same story"
        time.sleep(1.0)
        browser.save_screenshot(str(artifacts() / "web-favourite.png"))
    finally:
        if recorder is not None:
            recorder.stop()
        robot.stop()


@pytest.mark.soundroom
def test_a_story_and_a_request_holding_html_are_shown_as_text(sound_room, browser, tmp_path):
    # the sentence splitter takes < and > out of what is spoken (robot/story/sentences.py), so a story's HTML
    # reaches the page as entities and quotes, and must be shown as those characters, not decoded into markup
    pieces = [" The", " cat", " wrote", " &lt;script&gt;document.title='pwned'&lt;/script&gt;", " on", " the"]
    pieces += [" wall.", " Then", " <img src=x onerror=\"document.title='pwned'\">", " &amp;lt;b&amp;gt;", " came."]
    state = tmp_path / "state"
    assert set_password(state).returncode == 0
    port = free_port()
    command = "engine.command=" + json.dumps(["python3", SCRIPTED_ENGINE, json.dumps(pieces)])
    robot = start_web_daemon(sound_room.env(), state, port, "engine.backend=command", command)
    try:
        log_in(browser, f"http://127.0.0.1:{port}")
        request = "<img src=x onerror=\"document.title='pwned'\"> a cat <b>bold</b>"
        fill(browser, "tell-text", request)
        by_id(browser, "tell").click()
        robot.wait_until(lambda: any("&amp;lt;b" in line for line in robot.stdout), 60, "the story with HTML told")
        wait("the sentences shown", lambda: len(sentences(browser)) >= len(robot.stdout), 10)
        shown = sentences(browser)
        assert shown == robot.stdout, "the page shows each sentence exactly as spoken, entities and quotes as text"
        assert any("&lt;script&gt;document.title='pwned'&lt;/script&gt;" in s for s in shown), shown
        assert any('onerror="document.title=' in s and "&amp;lt;b&amp;gt;" in s for s in shown), shown
        wait("the history", lambda: browser.find_elements("css selector", "#history strong.request"), 60)
        assert browser.find_element("css selector", "#history strong.request").text == request
        assert browser.title == TITLE, "a script from the story ran"
        assert browser.execute_script("return document.querySelectorAll('img, b').length") == 0
        scripts = browser.execute_script("return [...document.scripts].map(s => s.src)")
        assert scripts == [f"http://127.0.0.1:{port}/static/app.js"], scripts
        browser.save_screenshot(str(artifacts() / "web-escaped.png"))
    finally:
        robot.stop()


def test_chromium_is_what_the_browser_tests_use():
    need(shutil.which("chromium") is not None, "Debian's chromium is not installed")
