"""Joins and publishes that wait for a hook, carried out by a ``Session`` without a socket:
the hook is a fake whose answers the test gives, one at a time."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from roomcast.hooks.decisions import Allowed, Decision, Denied, Failure
from roomcast.hub import Hub
from roomcast.logbudget import EventLog
from roomcast.serve.config import ServerConfig
from roomcast.serve.metrics import ServerCounters
from roomcast.serve.permissions import CONNECT_DATA
from roomcast.serve.session import Session
from tests.unit.test_session import Inbox, client


class Hooks:
    """Each call waits for the test to answer it (``answer``); the calls are recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self._answers: asyncio.Queue[Decision | Exception] = asyncio.Queue()

    async def join(
        self, user: str | None, connection: str, room: str, data: Any = None
    ) -> Decision:
        self.calls.append(("join", (user, room, data)))
        return await self._next()

    async def publish(self, user: str | None, connection: str, room: str, data: Any) -> Decision:
        self.calls.append(("publish", (user, room, data)))
        return await self._next()

    async def _next(self) -> Decision:
        answer = await self._answers.get()
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def answer(self, decision: Decision | Exception) -> None:
        self._answers.put_nowait(decision)
        for _ in range(5):
            await asyncio.sleep(0)


def hooked(**options: Any) -> tuple[Session, Hub, Hooks]:
    config = ServerConfig(
        join_hook_url="http://backend/join", publish_hook_url="http://backend/publish", **options
    )
    hub, hooks = Hub(), Hooks()
    events = EventLog(logging.getLogger("test.hooked"))
    carry = Session(
        config,
        hub,
        ServerCounters(),
        events,
        lambda: None,
        None,
        lambda *_: None,
        asyncio.ensure_future,
        hooks=hooks,
    )
    return carry, hub, hooks


def say(carry: Session, inbox: Inbox, **message: Any) -> list[dict[str, Any]]:
    text = json.dumps(message)
    carry.received(inbox, text, len(text))
    return inbox.take()


async def test_a_join_waits_for_the_hook_and_the_rest_waits_behind_it() -> None:
    """Nothing is answered until the hook allows; then the ack (with its data), then what the
    client sent meanwhile, in order; the hook got the connect hook's data."""
    carry, hub, hooks = hooked()
    ann = client(hub, "ann")
    ann.connection.metadata[CONNECT_DATA] = {"plan": "pro"}
    assert say(carry, ann, type="join", room="r", event_id="j") == []
    assert say(carry, ann, type="ping", event_id="q") == []
    await hooks.answer(Allowed({"topic": "t"}, has_data=True))
    answers = ann.take()
    assert [(a["type"], a.get("data")) for a in answers] == [
        ("ack", {"topic": "t"}),
        ("pong", None),
    ]
    assert hooks.calls == [("join", ("ann", "r", {"plan": "pro"}))]
    assert say(carry, ann, type="join", room="r", event_id="again")[0]["type"] == "ack"
    assert say(carry, ann, type="join", room="$stats")[0]["type"] == "ack"  # (no call)
    assert len(hooks.calls) == 1


async def test_refusals_name_their_cause() -> None:
    """The backend's refusal is hook_denied (1008); the policy's, hook_unavailable (1013)."""
    carry, hub, hooks = hooked()
    ann = client(hub, "ann")
    say(carry, ann, type="join", room="r", event_id="j")
    await hooks.answer(Denied("members only"))
    (refused,) = ann.take()
    assert (refused["cause"], refused["code"], refused["error"]) == (
        "hook_denied",
        1008,
        "members only",
    )
    say(carry, ann, type="join", room="r", event_id="j")
    await hooks.answer(Denied("the backend is busy", 503, Failure.SATURATED))
    (refused,) = ann.take()
    assert (refused["cause"], refused["code"]) == ("hook_unavailable", 1013)
    assert "r" not in ann.connection.rooms


async def test_a_publish_is_replaced_and_checked_again_after_the_hook() -> None:
    """The hook's data is published instead; a publish whose room the connection left while
    the hook decided (the server took it away) is refused, not published."""
    carry, hub, hooks = hooked()
    ann, bob = client(hub, "ann"), client(hub, "bob")
    for member in (ann, bob):
        say(carry, member, type="join", room="r")
        await hooks.answer(Allowed())
        member.take()
    say(carry, ann, type="publish", room="r", data="darn", event_id="p")
    await hooks.answer(Allowed("d**n", has_data=True))
    assert ann.take()[0]["type"] == "ack"
    assert bob.take()[0]["data"] == "d**n"
    say(carry, ann, type="publish", room="r", data="keep", event_id="p2")
    await hooks.answer(Allowed())
    assert bob.take()[0]["data"] == "keep"
    assert ("publish", ("ann", "r", "darn")) in hooks.calls
    say(carry, ann, type="publish", room="r", data="late", event_id="p3")
    hub.leave(ann.connection, "r")
    await hooks.answer(Allowed())
    assert "not in room" in ann.take()[0]["error"]
    assert bob.take() == []


async def test_a_connection_gone_meanwhile_drops_its_answer_and_queue() -> None:
    """The answer for a forgotten connection is not acted on and nothing that waited runs."""
    carry, hub, hooks = hooked()
    ann = client(hub, "ann")
    say(carry, ann, type="join", room="r")
    say(carry, ann, type="ping")
    carry.forget(ann.connection)
    await hooks.answer(Allowed())
    assert ann.take() == []
    assert "r" not in ann.connection.rooms


async def test_a_hook_that_raises_refuses_and_releases_the_connection() -> None:
    """A call that raises (the client stopped under it) is a refusal, and what waited runs."""
    carry, hub, hooks = hooked()
    ann = client(hub, "ann")
    say(carry, ann, type="join", room="r", event_id="j")
    say(carry, ann, type="ping", event_id="q")
    await hooks.answer(RuntimeError("stopped"))
    answers = ann.take()
    assert [a["type"] for a in answers] == ["error", "pong"]
    assert answers[0]["cause"] == "hook_unavailable"


async def test_the_queue_behind_a_hook_is_bounded() -> None:
    """Beyond 64 waiting messages, more are refused at once with 1013."""
    carry, hub, hooks = hooked(rate_limit=0)
    ann = client(hub, "ann")
    say(carry, ann, type="join", room="r")
    for _ in range(64):
        assert say(carry, ann, type="ping") == []
    (refused,) = say(carry, ann, type="ping")
    assert refused["code"] == 1013
    await hooks.answer(Allowed())
    assert len(ann.take()) == 65
