"""The demo page and ``/client.js`` in a real browser.

Debian's headless Chromium, driven by selenium through Debian's chromedriver (no browser is
downloaded), against real ``roomcast serve`` processes (and a uvicorn app for the FastAPI
heartbeat).  ``scripts/test`` installs both packages when they are missing; without them these
tests fail with the command to run, they are never skipped.  A screenshot of the demo is saved
to ``artifacts/demo.png`` (``ROOMCAST_ARTIFACTS`` moves it).
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from websockets.sync.client import connect as ws_connect

from tests.proxy import cutter_thread
from tests.redis_support import RedisServer, free_port
from tests.support import seconds

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("ROOMCAST_ARTIFACTS", ROOT / "artifacts"))
# Without these flags Chromium keeps trying to reach Google's hosts, which this network refuses.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
)


class ServeProcess:
    """``roomcast serve`` in a subprocess, on a fixed port so that it can be restarted;
    ``{port}`` in a flag is replaced by that port."""

    def __init__(self, *flags: str) -> None:
        self.port = free_port()
        self.flags = flags
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        flags = [flag.format(port=self.port) for flag in self.flags]
        command = ["serve", "--port", str(self.port), "--log-level", "error", *flags]
        self.process = subprocess.Popen([sys.executable, "-m", "roomcast.serve.cli", *command])
        deadline = time.monotonic() + seconds(20)
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "roomcast serve exited"
            try:
                with urllib.request.urlopen(f"{self.base}/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("roomcast serve did not become ready")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(seconds(20))
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"{self.base}/metrics", timeout=5) as answer:
            for line in answer.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        raise AssertionError(f"no metric {name}")


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.fail("headless Chromium is missing: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="roomcast-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.set_script_timeout(seconds(30))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def serve() -> Iterator[Callable[..., ServeProcess]]:
    started: list[ServeProcess] = []

    def start(*flags: str) -> ServeProcess:
        started.append(ServeProcess(*flags))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def page(browser: WebDriver) -> Iterator[Callable[[str], str]]:
    """Opens URLs in new windows (one page each); closes them after the test."""
    opened: list[str] = []
    first = browser.current_window_handle

    def open_page(url: str) -> str:
        browser.switch_to.new_window("window")
        browser.get(url)
        opened.append(browser.current_window_handle)
        return opened[-1]

    yield open_page
    for handle in opened:
        if handle in browser.window_handles:
            browser.switch_to.window(handle)
            browser.close()
    browser.switch_to.window(first)


def until(browser: WebDriver, condition: Callable[[], Any], what: str, timeout: float = 10) -> Any:
    """Wait for ``condition()`` to be truthy (a condition, not a sleep); returns its value."""
    return WebDriverWait(browser, seconds(timeout), poll_frequency=0.05).until(
        lambda _: condition(), message=f"not in time: {what}"
    )


def state(browser: WebDriver) -> str:
    return str(browser.find_element(By.ID, "status").get_attribute("data-state"))


def texts(browser: WebDriver, selector: str, attribute: str | None = None) -> list[str]:
    """Texts (or a data attribute) of the elements matching ``selector``, read in one step:
    the page redraws its lists, so elements found in one call may be gone in the next."""
    return list(
        browser.execute_script(
            "return [...document.querySelectorAll(arguments[0])]"
            ".map((e) => arguments[1] ? e.dataset[arguments[1]] : e.innerText)",
            selector,
            attribute,
        )
    )


def present(browser: WebDriver) -> list[str]:
    return sorted(texts(browser, "#presence-list li[data-user]", "user"))


def messages(browser: WebDriver) -> list[str]:
    return texts(browser, "#messages li")


def say(browser: WebDriver, text: str) -> None:
    box = browser.find_element(By.ID, "message-input")
    box.send_keys(text)
    browser.find_element(By.ID, "send").click()


def screenshot(browser: WebDriver, name: str) -> None:
    """Save the page to the artifacts, once the charts have a few points (the test's proof
    that the demo renders, and the picture in the docs)."""
    time.sleep(2.5)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / name))


def record_events(browser: WebDriver) -> None:
    """Keep the page's client events in ``window.seen`` for the test to read."""
    browser.execute_script(
        """window.seen = [];
        for (const kind of ["close", "reconnecting", "recovered", "open", "token_expiring"]) {
          window.roomcast.on(kind, (e) => window.seen.push({event: kind, ...e}));
        }"""
    )


def seen(browser: WebDriver) -> list[dict[str, Any]]:
    return list(browser.execute_script("return window.seen"))


def test_two_pages_in_one_room_see_each_others_messages_and_presence(
    browser: WebDriver, serve: Callable[..., ServeProcess], page: Callable[[str], str]
) -> None:
    server = serve()
    ann = page(f"{server.base}/?name=ann&autoconnect=1")
    until(browser, lambda: state(browser) == "open", "ann connected")
    until(browser, lambda: present(browser) == ["ann"], "ann sees herself")
    bob = page(f"{server.base}/?name=bob&autoconnect=1")
    until(browser, lambda: present(browser) == ["ann", "bob"], "bob sees ann and himself")

    assert "ann joined" not in messages(browser)  # (ann was there before: no notice)
    browser.switch_to.window(ann)
    until(browser, lambda: present(browser) == ["ann", "bob"], "ann sees bob arrive")
    assert messages(browser).count("bob joined") == 1
    assert "ann joined" not in messages(browser)  # (no notice about herself)
    # An icon from the page itself: no request for /favicon.ico (a 404 in the console).
    assert browser.execute_script("return document.querySelector('link[rel=icon]').href") == (
        "data:,"
    )
    say(browser, "hello from ann")
    until(browser, lambda: "annhello from ann" in messages(browser), "ann's own line")

    browser.switch_to.window(bob)
    until(browser, lambda: "annhello from ann" in messages(browser), "bob gets ann's message")
    say(browser, "hi ann")

    browser.switch_to.window(ann)
    until(browser, lambda: "bobhi ann" in messages(browser), "ann gets bob's answer")
    # The dashboard draws this instance's figures from the $stats room.
    legend = browser.find_element(By.ID, "legend")
    until(browser, lambda: "2 conn" in legend.text, "the dashboard counts both pages")
    screenshot(browser, "demo.png")

    browser.switch_to.window(bob)
    browser.close()
    browser.switch_to.window(ann)
    until(browser, lambda: present(browser) == ["ann"], "ann sees bob leave")
    until(browser, lambda: messages(browser)[-1] == "bob left", "and says so in the chat")
    assert server.metric("roomcast_connections") == 1


def test_pages_on_two_instances_behind_redis_share_rooms_presence_and_the_dashboard(
    browser: WebDriver,
    serve: Callable[..., ServeProcess],
    page: Callable[[str], str],
    shared_redis: RedisServer,
    prefix: str,
) -> None:
    flags = ("--redis-url", shared_redis.url, "--channel-prefix", prefix, "--presence")
    one, two = serve(*flags), serve(*flags)
    ann = page(f"{one.base}/?name=ann&autoconnect=1")
    until(browser, lambda: state(browser) == "open", "ann connected to instance one")
    page(f"{two.base}/?name=bob&autoconnect=1")
    until(browser, lambda: present(browser) == ["ann", "bob"], "bob (two) sees ann (one)")
    say(browser, "from two")
    browser.switch_to.window(ann)
    until(browser, lambda: present(browser) == ["ann", "bob"], "ann (one) sees bob (two)")
    until(browser, lambda: "bobfrom two" in messages(browser), "bob's message crossed Redis")
    instances = browser.find_element(By.ID, "instances")
    until(browser, lambda: instances.text == "2 instances", "the dashboard shows both instances")
    legend = texts(browser, "#legend li")
    assert {f":{one.port} " in item for item in legend} == {True, False}
    screenshot(browser, "demo-two-instances.png")


def test_a_page_on_a_redis_hub_without_presence_says_so_and_chats(
    browser: WebDriver,
    serve: Callable[..., ServeProcess],
    page: Callable[[str], str],
    shared_redis: RedisServer,
    prefix: str,
) -> None:
    """With Redis, presence is off unless asked for: the page still joins and chats."""
    flags = ("--redis-url", shared_redis.url, "--channel-prefix", prefix)
    one, two = serve(*flags), serve(*flags)
    ann = page(f"{one.base}/?name=ann&autoconnect=1")
    until(browser, lambda: state(browser) == "open", "ann connected")
    presence = browser.find_element(By.ID, "presence-list")
    until(browser, lambda: presence.text == "presence is off on this server", "the page says so")
    with ws_connect(f"ws://127.0.0.1:{two.port}/ws/lobby?user_id=bob") as bob:
        bob.send(json.dumps({"type": "publish", "room": "lobby", "data": {"text": "hey"}}))
        browser.switch_to.window(ann)
        until(browser, lambda: "bobhey" in messages(browser), "bob's message from instance two")
    assert not [line for line in messages(browser) if "presence" in line]  # the panel only


def test_a_page_survives_a_server_restart(
    browser: WebDriver, serve: Callable[..., ServeProcess], page: Callable[[str], str]
) -> None:
    server = serve()
    page(f"{server.base}/?name=ann&autoconnect=1&rooms=lobby,news")
    until(browser, lambda: state(browser) == "open", "connected")
    record_events(browser)

    until(browser, lambda: present(browser) == ["ann"], "ann in her rooms")
    stale = "return [document.getElementById('presence-list').className,"
    stale += " document.getElementById('presence-state').innerText]"
    assert browser.execute_script(stale) == ["presence", ""]
    server.stop()  # SIGTERM: clients are closed with 1001, then the process exits
    until(browser, lambda: state(browser) == "reconnecting", "the page notices")
    # The member list is kept, greyed and marked as what it was before the cut.
    assert browser.execute_script(stale) == ["presence stale", "reconnecting…"]
    until(browser, lambda: len(seen(browser)) >= 4, "a few reconnection attempts")
    server.start()
    until(browser, lambda: state(browser) == "open", "the page is back", timeout=20)
    assert browser.execute_script(stale) == ["presence", ""]

    events = seen(browser)
    first = events[0]
    assert (first["event"], first["code"], first["kind"]) == ("close", 1001, "shutdown")
    assert first["willReconnect"] is True
    assert events[-1] == {"event": "open", "reconnected": True}
    # Before "open", one "recovered" per room (the demo's $stats too). Nothing was published
    # to lobby and news, so nothing was missed; $stats keeps no history, so the client cannot
    # know what it missed there, and says so.
    recovered = sorted(
        (e for e in events if e["event"] == "recovered"), key=lambda e: str(e["room"])
    )
    assert [(e["room"], e["recovered"], e["replayed"]) for e in recovered] == [
        ("$stats", False, 0),
        ("lobby", True, 0),
        ("news", True, 0),
    ]
    events = [e for e in events if e["event"] != "recovered"]
    delays = [e["delay"] for e in events if e["event"] == "reconnecting"]
    for attempt, delay in enumerate(delays):
        ceiling = min(15000, 500 * 2**attempt)  # the client's default backoff
        assert ceiling / 2 <= delay <= ceiling, (attempt, delays)

    # Rejoined both rooms (and their presence): a client connecting now reaches the page in
    # the second one, which the page shows once selected.
    browser.find_element(By.CSS_SELECTOR, '#rooms li[data-room="news"]').click()
    with ws_connect(f"ws://127.0.0.1:{server.port}/ws/news?user_id=bob") as bob:
        until(browser, lambda: present(browser) == ["ann", "bob"], "presence after restart")
        bob.send(json.dumps({"type": "publish", "room": "news", "data": {"text": "back?"}}))
        until(browser, lambda: "bobback?" in messages(browser), "news message after restart")


def test_a_cross_origin_page_is_refused(
    browser: WebDriver, serve: Callable[..., ServeProcess], page: Callable[[str], str]
) -> None:
    """``localhost`` and ``127.0.0.1`` are different origins to a browser: a page from the
    one the server does not allow gets its upgrade refused (HTTP 403) and never connects."""
    server = serve("--allowed-origins", "http://127.0.0.1:{port}")

    page(f"http://localhost:{server.port}/?name=eve&autoconnect=1")
    record_events(browser)
    until(
        browser,
        lambda: [e for e in seen(browser) if e["event"] == "close"],
        "the refused upgrade shows as a close",
    )
    assert state(browser) in ("reconnecting", "connecting")
    close = next(e for e in seen(browser) if e["event"] == "close")
    assert close["code"] == 1006 and close["kind"] == "abnormal"
    assert server.metric("roomcast_refused_upgrades_total") >= 1
    assert server.metric("roomcast_connections") == 0

    page(f"{server.base}/?name=ann&autoconnect=1")  # the allowed origin connects
    until(browser, lambda: state(browser) == "open", "same-origin page connects")
    assert server.metric("roomcast_connections") == 1


CLIENT = """
const done = arguments[arguments.length - 1];
(async () => {
  const { RoomcastClient, closeKind } = await import("/client.js");
  window.seen = [];
  const run = async (options) => {
    const client = new RoomcastClient(options);
    for (const kind of ["close", "token_expiring", "error"]) {
      client.on(kind, (e) => window.seen.push({event: kind, ...e}));
    }
    return client;
  };
  %s
})().then(done, (error) => done({failed: String(error)}));
"""


def run_client(browser: WebDriver, body: str) -> Any:
    result = browser.execute_async_script(CLIENT % body)
    assert not (isinstance(result, dict) and "failed" in result), result
    return result


def test_the_client_refreshes_its_token_when_the_server_asks(
    browser: WebDriver, serve: Callable[..., ServeProcess], page: Callable[[str], str]
) -> None:
    secret = "browser-test-secret-of-32-bytes!"
    # (No leeway: by default 30 s of it would also delay the expiry this test waits for.)
    server = serve("--jwt-secret", secret, "--token-grace", "2", "--jwt-leeway", "0")
    page(f"{server.base}/")
    # Minted now, with the page loaded: both first tokens expire at the same second, at
    # least 3 s from now (so the clients connect well before), however slow the start was.
    expiry = int(time.time() + seconds(4))

    def token(user: str, expires: float) -> str:
        return jwt.encode({"sub": user, "exp": int(expires)}, secret, "HS256")

    tokens = [token("ann", expiry), token("ann", expiry + 600)]
    run_client(
        browser,
        f"""
        const tokens = {json.dumps(tokens)};
        window.ann = await run({{token: () => tokens.length > 1 ? tokens.shift() : tokens[0]}});
        window.zed = await run({{token: {json.dumps(token("zed", expiry))}}});
        await Promise.all([window.ann.connect(), window.zed.connect()]);
        await window.ann.join("lobby");
        """,
    )
    # At expiry the server warns both (error 4001); ann's client sends its next token, zed's
    # has none. After the 2 s grace zed is closed with 4001 and not reconnected; ann, whose
    # old token expired at the same second (same server tick), is not.
    until(
        browser,
        lambda: browser.execute_script("return window.zed.state") == "closed",
        "zed closed after expiry and grace",
        timeout=15,
    )
    assert server.metric("roomcast_token_expiries_total") == 1
    assert browser.execute_script("return window.ann.state") == "open"
    events = seen(browser)
    assert [e["event"] for e in events].count("token_expiring") == 2  # ann and zed
    closes = [e for e in events if e["event"] == "close"]
    assert len(closes) == 1 and closes[0]["code"] == 4001 and closes[0]["kind"] == "auth"
    assert closes[0]["willReconnect"] is False
    assert not [e for e in events if e["event"] == "error"], events
    assert server.metric("roomcast_connections") == 1


def test_a_fresh_snapshot_clears_a_member_whose_leave_was_missed(
    browser: WebDriver, serve: Callable[..., ServeProcess], page: Callable[[str], str]
) -> None:
    server = serve()
    page(f"{server.base}/")
    result = run_client(
        browser,
        f"""
        const client = await run({{url: "ws://127.0.0.1:{server.port}/ws", userId: "ann"}});
        await client.connect();
        await client.join("lobby", {{presence: true}});
        const users = () => client.presence("lobby").map((u) => u.userId);
        const settled = () => new Promise((resolve) => {{
          const off = client.on("presence", (p) => {{ if (p.snapshot) {{ off(); resolve(); }} }});
        }});
        await settled();
        // A "joined" whose "left" never arrives (as after a gap in Redis pub/sub):
        client._received(client._socket, JSON.stringify({{type: "presence", room: "lobby",
          joined: {{connection_id: "ghost", user_id: "ghost"}}}}));
        const before = users();
        const snapshot = settled();
        await client.refreshPresence("lobby");
        await snapshot;
        const after = users();
        client.close();
        return {{before, after}};
        """,
    )
    assert result == {"before": ["ann", "ghost"], "after": ["ann"]}


def test_acks_time_out_and_requests_need_a_connection(
    browser: WebDriver, serve: Callable[..., ServeProcess], page: Callable[[str], str]
) -> None:
    """On /echo nothing is ever acknowledged: a publish is rejected after ackTimeout."""
    server = serve("--echo")
    page(f"{server.base}/")
    result = run_client(
        browser,
        f"""
        const client = await run({{url: "ws://127.0.0.1:{server.port}/echo", ackTimeout: 300}});
        const early = await client.publish("lobby", 1).catch((e) => e.reason);
        await client.connect();
        const started = performance.now();
        const late = await client.publish("lobby", 1).catch((e) => e.reason);
        const waited = performance.now() - started;
        client.close();
        return {{early, late, waited, state: client.state}};
        """,
    )
    assert result["early"] == "not_connected"
    assert result["late"] == "timeout" and result["waited"] >= 250
    assert result["state"] == "closed"


def test_the_client_answers_a_fastapi_apps_heartbeat(
    browser: WebDriver, serve: Callable[..., ServeProcess], page: Callable[[str], str]
) -> None:
    """The FastAPI managers ping with application messages and close silent clients with
    4002 after 0.6 s here; the client answers, so it stays."""
    server = serve()
    port = free_port()
    app = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tests.heartbeat_app:app", "--port", str(port)],
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + seconds(20)
        while True:
            try:
                with ws_connect(f"ws://127.0.0.1:{port}/ws/probe?user_id=probe"):
                    break
            except OSError:
                assert time.monotonic() < deadline and app.poll() is None, "uvicorn did not start"
                time.sleep(0.1)
        page(f"{server.base}/")  # any page: the client module comes from roomcast serve
        result = run_client(
            browser,
            f"""
            const client = await run({{url: "ws://127.0.0.1:{port}/ws/lobby", userId: "ann"}});
            let pings = 0;
            client.on("raw", (m) => {{ if (m.type === "ping") pings += 1; }});
            await client.connect();
            await new Promise((resolve) => setTimeout(resolve, 2000));
            const state = client.state;
            client.close();
            return {{state, pings}};
            """,
        )
        assert result["pings"] >= 3  # 2 s of 0.3 s pings
        assert result["state"] == "open"
        assert not seen(browser)
    finally:
        app.terminate()
        app.wait(seconds(10))


def test_the_client_keeps_positions_and_drops_a_message_it_already_had(
    browser: WebDriver, serve: Callable[..., ServeProcess], page: Callable[[str], str]
) -> None:
    """Room messages carry their offset in rooms with history; one at or below the last
    offset seen in the same epoch is dropped (the server should never send one)."""
    server = serve()
    page(f"{server.base}/")
    result = run_client(
        browser,
        f"""
        const client = await run({{url: "ws://127.0.0.1:{server.port}/ws", userId: "ann"}});
        await client.connect();
        await client.join("lobby");
        const got = [];
        client.on("message", (m) => got.push(m.position && m.position.offset));
        const deliver = (offset, epoch) => client._received(client._socket, JSON.stringify(
          {{type: "room_message", room: "lobby", sender: "bob", data: offset, offset, epoch}}));
        for (const offset of [1, 2, 2, 1, 3]) deliver(offset, "e1");
        deliver(1, "e2");  // another epoch: the server reset the room's history
        const position = client.position("lobby");
        await client.leave("lobby");
        const after = client.position("lobby");
        client.close();
        return {{got, duplicates: client.duplicates, position, after}};
        """,
    )
    assert result == {
        "got": [1, 2, 3, 1],
        "duplicates": 2,
        "position": {"epoch": "e2", "offset": 1},
        "after": None,
    }


def test_a_page_cut_off_by_the_network_recovers_what_it_missed(
    browser: WebDriver, serve: Callable[..., ServeProcess], page: Callable[[str], str]
) -> None:
    """The page's connection is reset (no close frame) and new ones refused while bob
    publishes; when the network is back the client rejoins from the last offset it saw, gets
    the missed messages once each, in order, then says "recovered" for the room."""
    server = serve()
    page(f"{server.base}/")
    with (
        cutter_thread(server.port) as cutter,
        ws_connect(f"ws://127.0.0.1:{server.port}/ws?user_id=bob") as bob,
    ):

        def publish(value: int) -> dict[str, Any]:
            bob.send(json.dumps({"type": "publish", "room": "lobby", "data": value}))
            while True:  # (bob gets nothing else: the sender is not sent its own messages)
                answer = json.loads(bob.recv(timeout=seconds(10)))
                if answer["type"] == "ack":
                    return dict(answer)

        bob.send(json.dumps({"type": "join", "room": "lobby"}))
        assert json.loads(bob.recv(timeout=seconds(10)))["type"] == "ack"
        run_client(
            browser,
            f"""
            const client = await run({{url: "ws://127.0.0.1:{cutter.port}/ws", userId: "ann",
              reconnect: {{initialDelay: 50, maxDelay: 500}}}});
            window.ann = client;
            window.got = [];
            window.recovered = [];
            client.on("message", (m) => window.got.push(m.data));
            client.on("recovered", (r) => window.recovered.push(r));
            await client.connect();
            await client.join("lobby");
            """,
        )

        def read(expression: str) -> Any:
            return browser.execute_script(f"return {expression}")

        for value in range(5):
            publish(value)
        until(browser, lambda: read("window.got.length") == 5, "the first five")
        cutter.cut()
        until(browser, lambda: read("window.ann.state") == "reconnecting", "the page notices")
        last = {}
        for value in range(5, 15):
            last = publish(value)
        cutter.restore()
        until(browser, lambda: read("window.recovered.length") == 1, "recovered", timeout=20)
        assert read("window.got") == list(range(15))
        assert read("window.recovered") == [
            {"room": "lobby", "recovered": True, "replayed": 10, "position": last["position"]}
        ]
        publish(15)
        until(browser, lambda: read("window.got.length") == 16, "live again")
        assert read("window.got") == list(range(16))
        assert read("window.ann.duplicates") == 0
        assert read("window.ann.position('lobby')") == last["position"] | {"offset": 16}
        browser.execute_script("window.ann.close()")


class OtherOrigin:
    """A page served by Python's ``http.server`` on another port: another origin."""

    def __init__(self, html: str) -> None:
        body = html.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def test_a_page_on_another_origin_imports_the_client_and_connects_to_its_server(
    browser: WebDriver, serve: Callable[..., ServeProcess], page: Callable[[str], str]
) -> None:
    """``/client.js`` is sent with ``Access-Control-Allow-Origin: *`` and its default URL is
    the server it was loaded from, not the page's: no ``url`` needed on another origin."""
    server = serve()
    other = OtherOrigin(
        f"""<!doctype html><title>elsewhere</title><script type="module">
        import {{ RoomcastClient }} from "{server.base}/client.js";
        const client = new RoomcastClient({{ userId: "ann" }});
        window.client = client;
        window.got = [];
        client.on("message", (m) => window.got.push([m.sender, m.data]));
        await client.connect();
        await client.join("lobby");
        document.title = "joined";
        </script>"""
    )
    try:
        page(other.url)
        until(browser, lambda: browser.title == "joined", "the page joined through the client")
        assert browser.execute_script("return location.origin") != server.base
        assert browser.execute_script("return window.client.url") == (
            f"ws://127.0.0.1:{server.port}/ws"
        )
        with ws_connect(f"ws://127.0.0.1:{server.port}/ws/lobby?user_id=bob") as bob:
            bob.send(json.dumps({"type": "publish", "room": "lobby", "data": "hi there"}))
            until(
                browser,
                lambda: browser.execute_script("return window.got") == [["bob", "hi there"]],
                "bob's message on the page",
            )
        browser.execute_script("window.client.close()")
    finally:
        other.close()


def test_a_page_without_a_token_on_a_jwt_server_says_one_is_needed_and_stops_retrying(
    browser: WebDriver, serve: Callable[..., ServeProcess], page: Callable[[str], str]
) -> None:
    """The server answers the upgrade with 401; the browser shows only 1006, so the client
    asks with a plain GET, closes for good with kind "auth", and the page says what to do."""
    secret = "browser-test-secret-of-32-bytes!"
    server = serve("--jwt-secret", secret)
    page(f"{server.base}/?name=ann&autoconnect=1")
    until(browser, lambda: state(browser) == "closed", "the page gives up")
    problem = browser.find_element(By.ID, "login-problem")
    assert problem.is_displayed() and "wants a token" in problem.text
    assert any("wants a token" in line for line in messages(browser))
    failures = server.metric("roomcast_auth_failures_total")
    time.sleep(seconds(2))  # (a few backoff periods: nothing may happen in them)
    assert state(browser) == "closed"
    assert server.metric("roomcast_auth_failures_total") == failures

    token = jwt.encode({"sub": "ann", "exp": int(time.time()) + 600}, secret, "HS256")
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "connect").click()
    until(browser, lambda: state(browser) == "open", "connected with the token")
    until(browser, lambda: present(browser) == ["ann"], "ann is in lobby")
    assert not problem.is_displayed()


def test_the_dashboard_fits_1280x900_and_an_idle_page_sends_no_traffic(
    browser: WebDriver, serve: Callable[..., ServeProcess], page: Callable[[str], str]
) -> None:
    """The legend is on screen without scrolling at 1280x900, and a page nobody types in
    sends nothing once joined (no ping loop): the dashboard's messages/s in stays at 0."""
    server = serve()
    size = browser.get_window_size()
    browser.set_window_size(1280, 900)
    try:
        page(f"{server.base}/?name=ann&autoconnect=1")
        until(browser, lambda: texts(browser, "#legend li"), "the dashboard draws")
        viewport = browser.execute_script("return [innerWidth, innerHeight]")
        assert viewport[0] <= 1280 and viewport[1] <= 900, viewport
        box = browser.execute_script(
            "const r = document.getElementById('legend').getBoundingClientRect();"
            "return [r.top, r.bottom, scrollY]"
        )
        assert box[2] == 0 and box[0] > 0 and box[1] <= viewport[1], (box, viewport)

        def rate_in() -> str:
            return texts(browser, "#legend li", "rateIn")[0]

        until(browser, lambda: rate_in() == "0", "the joins are out of the rate window")
        seen_rates = set()
        deadline = time.monotonic() + seconds(5)
        while time.monotonic() < deadline:  # (the old page pinged every 2 s)
            seen_rates.add(rate_in())
            time.sleep(0.2)
        assert seen_rates == {"0"}
        screenshot(browser, "demo-1280x900.png")
    finally:
        browser.set_window_size(size["width"], size["height"])
