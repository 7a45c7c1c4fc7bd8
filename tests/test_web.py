"""The parents' page (robot/web/): its security against the real daemon, its parts on their own, and that it is off
by default (no listening socket in /proc/net/tcp)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from robot.plumbing.config import ConfigError, load_config
from robot.story.safety import SafetyFilter
from robot.web import parents as pc
from robot.web.auth import LoginLimiter
from robot.web.password import PasswordError, PasswordHash, load_hash, save_hash
from robot.web.safety_words import build_filter
from robot.web.server import MAX_BODY_BYTES
from robot.web.unit import DROPIN_NAME, dropin_text, write_dropin
from tests.conftest import ROOT, need
from tests.notify import NotifyListener, RobotProcess, descendants
from tests.webpage import PASSWORD, Client, free_port, listening_sockets, set_password, start_web_daemon

SCRIPTED_ENGINE = str(Path(__file__).with_name("scripted_engine.py"))
PIECES = [" He", " lived", " by", " a", " quiet", " lake.", " He", " liked", " warm", " milk", " at", " night."]
SCRIPTED = ("engine.backend=command", "engine.command=" + json.dumps(["python3", SCRIPTED_ENGINE, json.dumps(PIECES)]))


# --- the parts on their own --------------------------------------------------------------------------------


def test_the_password_is_a_salted_scrypt_hash_in_the_state_directory_never_the_config(tmp_path):
    path = tmp_path / "web-password.json"
    save_hash(path, PASSWORD)
    stored = json.loads(path.read_text())
    assert stored["kdf"] == "scrypt" and stored["n"] >= 2**14
    assert PASSWORD not in path.read_text()
    assert path.stat().st_mode & 0o077 == 0, "the hash file is for the daemon's user only"
    again = tmp_path / "again.json"
    save_hash(again, PASSWORD)
    assert json.loads(again.read_text())["salt"] != stored["salt"], "each hash has its own salt"
    found = load_hash(path)
    assert found.matches(PASSWORD) and not found.matches(PASSWORD + "!") and not found.matches("")
    with pytest.raises(PasswordError, match="too short"):
        save_hash(path, "short")
    with pytest.raises(ConfigError, match="unknown key web.password"):
        load_config(overrides=["web.password='secret'"], use_system=False)


def test_the_login_limit_refuses_the_tenth_wrong_password_within_a_minute():
    limiter = LoginLimiter(window_s=0.5)
    for _ in range(9):
        assert limiter.retry_after_s() == 0
        limiter.failed()
    assert 0 < limiter.retry_after_s() <= 0.5
    time.sleep(0.6)
    assert limiter.retry_after_s() == 0, "the window moves on"
    right = limiter.failed()
    limiter.forgive(right)
    assert limiter.retry_after_s() == 0
    assert PasswordHash.of("x" * 8).matches("x" * 8)


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"quiet_start": "25:00", "quiet_end": "07:00"}, "web.quiet_start is '25:00', expected a time of day"),
        ({"quiet_start": "21:00"}, "set both (HH:MM) or neither"),
        ({"daily_limit_min": -5}, "web.daily_limit_min is -5, expected 0 to 1440"),
        ({"daily_limit_min": "ten"}, "web.daily_limit_min is a string 'ten', expected an integer"),
        ({"strictness": "lax"}, "safety.strictness is 'lax', expected one of"),
        ({"blocked_words": ["sp1der"]}, "'sp1der' has a character that is not a letter"),
        ({"volume": 2}, "unknown setting 'volume'"),
    ],
)
def test_a_change_is_checked_by_the_configuration_checks_and_named(changes, words):
    with pytest.raises(ConfigError) as e:
        pc.checked(pc.Choices(), changes)
    assert words in str(e.value) and "the parents' page" in str(e.value)


def test_quiet_hours_across_midnight_belong_to_the_night_they_began():
    choices = pc.Choices(quiet_start="21:00", quiet_end="07:00")
    at = lambda h, m: dt.datetime(2026, 12, 2, h, m)  # noqa: E731
    assert pc.quiet_night(choices, at(22, 0)) == "2026-12-02"
    assert pc.quiet_night(choices, at(6, 59)) == "2026-12-01"
    assert pc.quiet_night(choices, at(7, 0)) == ""
    assert pc.quiet_night(choices, at(12, 0)) == ""
    assert pc.quiet_night(pc.Choices(quiet_start="13:00", quiet_end="15:00"), at(14, 0)) == "2026-12-02"


def test_limits_bedtime_then_continue_tomorrow_and_the_daily_story_time(tmp_path):
    now = [dt.datetime(2026, 12, 2, 21, 30)]
    limits = pc.Limits(
        pc.Choices(quiet_start="21:00", quiet_end="07:00"), "en", tmp_path / "t.json", clock=lambda: now[0]
    )
    assert limits.notice() == ("", True), "in quiet hours a story is a bedtime story"
    volumes = []
    for _ in range(pc.QUIET_STORIES):
        volumes.append(limits.volume_factor())
        limits.story_told(120.0, True)
    assert volumes == sorted(volumes, reverse=True) and volumes[0] > volumes[-1], "each story quieter"
    refusal, _ = limits.notice()
    assert "tomorrow" in refusal
    now[0] = dt.datetime(2026, 12, 3, 7, 30)
    assert limits.notice() == ("", False), "the morning after: stories again"
    reloaded = pc.Limits(limits.choices, "en", tmp_path / "t.json", clock=lambda: now[0])
    assert reloaded.usage.story_s == 240.0, "story time survives a restart"
    daily = pc.Limits(pc.Choices(daily_limit_min=5), "en", tmp_path / "d.json", clock=lambda: now[0])
    daily.story_told(299.0, False)
    assert daily.notice()[0] == ""
    daily.story_told(2.0, False)
    assert "all the story time for today" in daily.notice()[0]
    now[0] = dt.datetime(2026, 12, 4, 9, 0)
    assert daily.notice()[0] == "", "a new day, new story time"


def test_parents_words_block_and_allow_through_the_filters_own_loader(tmp_path):
    plain = SafetyFilter("en", "standard")
    assert plain.filter("The spider sat by the window.") is not None
    assert plain.filter("The killer whale swam by.") is not None
    own = build_filter("en", "standard", ("spider", "bad dream"), ("toy gun",), tmp_path)
    assert own.filter("The spider sat by the window.") is None
    assert own.filter("The spiders sat by the window.") is None, "the list's word forms apply to parents' words"
    assert own.filter("She had a bad dream.") is None
    assert plain.filter("He played with his toy gun.") is None, "gun is blocked by the shipped list"
    assert own.filter("He played with his toy gun.") is not None, "the parents allowed a toy gun"
    assert own.filter("He held a gun.") is None, "and only that"
    assert own.filter("The bird sang.") is not None


def test_the_unit_opens_a_port_only_in_the_web_dropin(tmp_path):
    unit = (ROOT / "systemd" / "storybot.service").read_text()
    assert "PrivateNetwork=yes" in unit and "RestrictAddressFamilies=AF_UNIX\n" in unit
    off = load_config(use_system=False)
    assert not off.web.enabled, "the page is off by default"
    assert "no drop-in" in write_dropin(off, tmp_path / "storybot.service.d")
    assert not (tmp_path / "storybot.service.d").exists()
    on = load_config(overrides=["web.enabled=true"], use_system=False)
    write_dropin(on, tmp_path / "storybot.service.d")
    text = (tmp_path / "storybot.service.d" / DROPIN_NAME).read_text()
    assert "PrivateNetwork=no" in text and "AF_INET" in text and "IPAddressAllow=localhost\n" in text
    wide = load_config(overrides=["web.enabled=true", "web.host='0.0.0.0'"], use_system=False)
    assert "192.168.0.0/16" in dropin_text(wide)
    assert "removed" in write_dropin(off, tmp_path / "storybot.service.d")
    assert not (tmp_path / "storybot.service.d" / DROPIN_NAME).exists()


def test_the_unit_with_the_web_dropin_verifies(tmp_path):
    need(shutil.which("systemd-analyze") is not None, "systemd-analyze is not installed")
    units = tmp_path / "units"
    units.mkdir()
    storybot = Path(subprocess.run(["which", "true"], capture_output=True, text=True).stdout.strip())
    text = (ROOT / "systemd" / "storybot.service").read_text().replace("/opt/storybot/venv/bin/storybot", str(storybot))
    (units / "storybot.service").write_text(
        text.replace("User=storybot", "User=root").replace("Group=storybot", "Group=root")
    )
    write_dropin(load_config(overrides=["web.enabled=true"], use_system=False), units / "storybot.service.d")
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(units / "storybot.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [
        line
        for line in done.stderr.splitlines()
        if "storybot" in line and "swap" not in line and "sound.target" not in line
    ]
    assert not problems, done.stderr


# --- off by default ----------------------------------------------------------------------------------------


@pytest.mark.soundroom
def test_the_page_is_off_by_default_no_listening_socket(sound_room, tmp_path):
    notify = NotifyListener(tmp_path / "notify")
    robot = RobotProcess(sound_room.env(), tmp_path / "state", *SCRIPTED, "button.earcon=false", env=notify.env())
    try:
        notify.wait_for("READY", "1", 90, alive=robot.alive)
        for pid in [robot.pid, *descendants(robot.pid)]:
            assert listening_sockets(pid) == [], (
                f"pid {pid} ({Path(f'/proc/{pid}/cmdline').read_bytes()[:80]!r}) listens"
            )
        assert not robot.err_lines("parents' page")
        maps = Path(f"/proc/{robot.pid}/maps").read_text()
        assert "aiohttp" not in maps and "multidict" not in maps, "the page's library is loaded although it is off"
    finally:
        robot.stop()
        notify.close()


# --- security, against the daemon --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def web_daemon(sound_room, tmp_path_factory):
    state = tmp_path_factory.mktemp("web-state")
    assert set_password(state).returncode == 0
    port = free_port()
    robot = start_web_daemon(sound_room.env(), state, port, *SCRIPTED)
    yield robot, port, state
    robot.stop()


def _routes() -> list[tuple[str, str]]:
    """Every route the server has, from its own router: a route added later is tested too."""
    from robot.plumbing.config import load_config
    from robot.web.page import ParentsPage
    from robot.web.server import PUBLIC, WebServer

    config = load_config(use_system=False)
    routes = []
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        app = WebServer(ParentsPage(config, Path(tmp), SafetyFilter("en", "standard")), Path(tmp)).app()
    for route in app.router.routes():
        info = route.resource.get_info()
        path = info.get("path") or info.get("formatter", "").replace("{name}", "app.js")
        if route.method != "HEAD" and (route.method, path) not in PUBLIC:
            routes.append((route.method, path))
    return routes


@pytest.mark.soundroom
def test_the_page_listens_on_localhost_only_by_default(web_daemon):
    robot, port, _ = web_daemon
    assert listening_sockets(robot.pid) == [("127.0.0.1", port)]


@pytest.mark.soundroom
def test_every_route_without_a_session_answers_401_or_a_redirect_to_login(web_daemon):
    _, port, _ = web_daemon
    routes = _routes()
    assert len(routes) >= 12, routes
    anonymous = Client(port)
    forged = Client(port)
    forged.cookie = "storybot_session=not-a-session"
    for client in (anonymous, forged):
        for method, path in routes:
            status, headers, body = client.request(method, path, b"{}", {"Content-Type": "application/json"})
            if status == 303:
                assert headers["location"] == "/login", (method, path)
            else:
                assert status == 401, (method, path, status, body[:200])


@pytest.mark.soundroom
def test_login_gives_an_httponly_samesite_strict_cookie_and_a_wrong_password_none(web_daemon):
    _, port, _ = web_daemon
    wrong = Client(port)
    status, headers, body = wrong.login("not the password")
    assert status == 401 and not wrong.cookie and b"Wrong password" in body
    client = Client(port)
    status, headers, _ = client.login()
    assert status == 303 and headers["location"] == "/"
    cookie = next(c for c in headers["set-cookie-all"] if c.startswith("storybot_session="))
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert "httponly" in flags and "samesite=strict" in flags, cookie
    assert "default-src 'none'" in client.request("GET", "/")[1]["content-security-policy"]
    assert client.state()["state"] in ("idle", "listening")
    assert client.post("/logout", csrf="")[0] == 403, "logging out is a change too"
    status, body = client.post("/logout")
    assert status == 303
    assert client.request("GET", "/api/state")[0] == 401, "the session ended with the log-out"


@pytest.mark.soundroom
def test_a_change_without_the_csrf_token_is_refused_and_changes_nothing(web_daemon):
    robot, port, state = web_daemon
    client = Client(port)
    client.login()
    since = time.monotonic()
    for token in ("", "0" * 43):
        assert client.post("/api/tell", {"text": "a cat"}, csrf=token)[0] == 403
        assert client.post("/api/volume", {"volume": 0.2, "cap": 0.2}, csrf=token)[0] == 403
        assert client.post("/api/settings", {"daily_limit_min": 1}, csrf=token)[0] == 403
    other = Client(port)
    other.login()
    assert client.post("/api/settings", {"daily_limit_min": 1}, csrf=other.csrf)[0] == 403, "another session's token"
    time.sleep(1.0)
    assert not robot.err_lines("story requested", since), "a refused request told a story"
    view = client.state()
    assert view["volume_cap"] == 1.0 and view["choices"]["daily_limit_min"] == 0
    assert not (state / "parents.json").exists()
    assert len(robot.err_lines("no valid CSRF token", since)) == 7


@pytest.mark.soundroom
def test_a_checked_change_is_saved_atomically_and_audited_once(web_daemon):
    robot, port, state = web_daemon
    client = Client(port)
    client.login()
    since = time.monotonic()
    status, body = client.post("/api/settings", {"quiet_start": "25:00", "quiet_end": "07:00"})
    assert status == 400 and "web.quiet_start is '25:00'" in json.loads(body)["error"]
    assert not (state / "parents.json").exists()
    assert client.post("/api/settings", {"quiet_start": "20:30", "quiet_end": "06:45"})[0] == 200
    saved = json.loads((state / "parents.json").read_text())
    assert (saved["quiet_start"], saved["quiet_end"]) == ("20:30", "06:45")
    assert not list(state.glob("parents.json.tmp"))
    robot.wait_until(lambda: len(robot.err_lines("changed quiet", since)) >= 2, 10, "the audit lines")
    time.sleep(0.5)  # any further line would have arrived
    audits = [line for _, line in robot.err_lines("audit:", since) if "changed" in line]
    assert len(audits) == 2 and any("quiet_start: '' -> '20:30'" in line for line in audits), audits
    assert client.post("/api/settings", {"quiet_start": "", "quiet_end": ""})[0] == 200


@pytest.mark.soundroom
def test_oversized_bodies_and_path_traversal_are_refused(web_daemon):
    _, port, _ = web_daemon
    client = Client(port)
    client.login()
    json_headers = {"Content-Type": "application/json", "X-CSRF-Token": client.csrf}
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    # a body just over the limit (it fits in the socket buffers, so the answer is read, not a reset)
    over = b"x" * (MAX_BODY_BYTES + 1024)
    assert client.request("POST", "/login", b"password=" + over, form)[0] == 413
    assert client.request("POST", "/api/tell", b'{"text": "' + over + b'"}', json_headers)[0] == 413
    chunked = {**json_headers, "Transfer-Encoding": "chunked"}
    status = client.request("POST", "/api/tell", iter([b'{"text": "', over[:9000], over[:9000], b'"}']), chunked)[0]
    assert status == 413, "a chunked body without a length is bounded too"
    # a gigabyte announced: refused from its headers, before any of it is read
    assert client.announce("POST", "/api/tell", 2**30, json_headers) == 413
    assert client.announce("POST", "/login", 2**30, form) == 413
    for path in (
        "/static/../../../../etc/passwd",
        "/static/..%2F..%2F..%2Fetc%2Fpasswd",
        "/static/%2e%2e/%2e%2e/etc/passwd",
        "/static/page.html",
        "/static/login.html/../../web/page.py",
        "/../../etc/passwd",
        "/static/app.js%00.css",
    ):
        status, _, body = client.request("GET", path)
        assert status in (404, 400, 303, 401), (path, status)
        assert b"root:" not in body and b"import" not in body, path


@pytest.mark.soundroom
def test_the_tenth_wrong_password_in_a_minute_is_refused_without_checking(sound_room, tmp_path):
    assert set_password(tmp_path / "state").returncode == 0
    port = free_port()
    robot = start_web_daemon(sound_room.env(), tmp_path / "state", port, *SCRIPTED)
    try:
        client = Client(port)
        for attempt in range(9):
            status, _, _ = client.login(f"guess number {attempt}")
            assert status == 401, attempt
        status, headers, body = client.login()  # the right password, but the tenth try in the minute
        assert status == 429 and not client.cookie, "the tenth try was checked"
        assert int(headers["retry-after"]) > 0 and b"Too many wrong passwords" in body
        robot.wait_until(lambda: robot.err_lines("refused unchecked"), 10, "the refusal's audit line")
        assert len(robot.err_lines("wrong parent password")) == 9
    finally:
        robot.stop()


# --- memory --------------------------------------------------------------------------------------------------


def test_the_plan_counts_the_page_and_a_board_that_cannot_afford_it_says_so(smollm2_model, tmp_path):
    from robot.memory import plan as memplan

    config = lambda *sets: load_config(overrides=[f"engine.model='{smollm2_model}'", *sets], use_system=False)  # noqa: E731
    roomy = memplan.MachineMemory("test board", 4096 * memplan.MiB, 3500 * memplan.MiB, 0, 0, 2)
    off = memplan.plan_from_config(config(), roomy)
    on = memplan.plan_from_config(config("web.enabled=true"), roomy)
    page = memplan.DEFAULT_FOOTPRINTS.web_bytes
    assert page > 10 * memplan.MiB, "measured on a real process (robot/memory/measure.py measure_web)"
    assert on.daemon_bytes == off.daemon_bytes + page and not on.web_refusal
    assert any("parents' page" in reason for reason in on.reasons)
    # a board with room for the button-only plan but not for the page on top of it
    need_bytes = off.daemon_bytes + off.tts_bytes + memplan.DEFAULT_FOOTPRINTS.aplay_bytes + off.engine_overhead_bytes
    need_bytes += off.weights_bytes + 2 * 30 * 128 * 192 * 4  # at least the shortest context's KV cache
    reserve = 8 * memplan.MiB
    tight = memplan.MachineMemory("tight board", 2048 * memplan.MiB, need_bytes + reserve + page // 2, 0, 0, 2)
    squeezed = memplan.plan_from_config(config("web.enabled=true", "memory.reserve_mb=8"), tight)
    assert squeezed.web_refusal and "cannot afford" in squeezed.web_refusal
    assert squeezed.daemon_bytes == off.daemon_bytes, "planned without the page"
    # and doctor says so, for a board profile with that much memory
    from robot.doctor import build_report

    board = tmp_path / "tight.toml"
    available_mb = (need_bytes + reserve + page // 2) // memplan.MiB + 1
    board.write_text(
        '[board]\ndescription = "tight"\ncores = 2\nnotes = ""\n[memory]\nram_mb = 2048\nmem_total_mb = 2048\n'
        f"mem_available_mb = {available_mb}\nswap_mb = 0\n[support]\nmemory_cgroup = false\npsi = false\nzram = false\n"
    )
    report, _ = build_report(config("web.enabled=true", "memory.reserve_mb=8", f"memory.board='{board}'"))
    assert any(
        line.startswith(f"the parents' page stays off: it needs {page / memplan.MiB:.1f} MiB")
        for line in report["degraded"]
    ), report


# --- what the robot told, and the limits, in the daemon ------------------------------------------------------


@pytest.mark.soundroom
def test_removed_sentences_reach_the_parents_history_only_and_the_daily_limit_says_tomorrow(sound_room, tmp_path):
    state = tmp_path / "state"
    assert set_password(state).returncode == 0
    state.mkdir(exist_ok=True)
    today = dt.date.today().isoformat()
    # 58 s of the day's minute already told: the next story passes the limit, and the one after is refused
    (state / "story-time.json").write_text(
        json.dumps({"version": 1, "day": today, "story_s": 58.0, "night": "", "quiet_stories": 0})
    )
    pieces = [
        " He",
        " lived",
        " by",
        " a",
        " quiet",
        " lake.",
        " One",
        " day",
        " he",
        " found",
        " a",
        " gun",
        " by",
        " the",
    ]
    pieces += [" water.", " He", " liked", " warm", " milk", " at", " night."]
    command = "engine.command=" + json.dumps(["python3", SCRIPTED_ENGINE, json.dumps(pieces)])
    port = free_port()
    robot = start_web_daemon(sound_room.env(), state, port, "engine.backend=command", command, "web.daily_limit_min=1")
    try:
        client = Client(port)
        client.login()
        status, body = client.post("/api/settings", {"blocked_words": ["warm milk"], "strictness": "strict"})
        assert status == 200, body
        robot.wait_until(lambda: robot.err_lines("changed blocked_words: () -> ('warm milk',)"), 10, "the audit line")
        assert client.post("/api/tell", {"text": "a frog"})[0] == 200
        robot.wait_err("speaking -> idle", 60)
        spoken = robot.stdout
        entry = json.loads(client.request("GET", "/api/history")[2])["entries"][0]
        removed = ["One day he found a gun by the water.", "He liked warm milk at night."]
        assert entry["removed"] == removed, "the shipped list and the parents' own words"
        assert not set(removed) & set(spoken), "a removed sentence was spoken"
        assert entry["sentences"] == spoken and entry["outcome"] == "finished"
        saved = (state / "story.json").read_text()
        assert json.loads((state / "story-time.json").read_text())["story_s"] > 60, "the story counted"
        since = time.monotonic()
        assert client.post("/api/tell", {"text": "a bear"})[0] == 200
        robot.wait_err("speaking -> idle", 60, since)
        said = [line for _, line in robot.out_lines("", since)]
        assert said == ["That is all the story time for today. We will go on tomorrow."], said
        assert (state / "story.json").read_text() == saved, "the saved story is kept for tomorrow"
        notice = json.loads(client.request("GET", "/api/history")[2])["entries"][0]
        assert notice["notice"] and notice["sentences"] == said
    finally:
        robot.stop()


def test_the_volume_cap_holds_louder_and_survives_a_restart(tmp_path):
    from robot.plumbing.settings import RuntimeSettings

    settings = RuntimeSettings(0.6)
    settings.set_volume(0.9, 0.5)
    assert (settings.volume, settings.volume_cap) == (0.5, 0.5)
    assert not settings.step_volume(1), "louder past the parent's cap"
    assert settings.step_volume(-1) and settings.volume == 0.3
    assert settings.save(tmp_path / "settings.json")
    again = RuntimeSettings.load(tmp_path / "settings.json", 1.0)
    assert (again.volume, again.volume_cap) == (0.3, 0.5)
    assert RuntimeSettings.load(tmp_path / "none.json", 1.0, 0.7).volume == 0.7, "the configured cap holds the volume"
