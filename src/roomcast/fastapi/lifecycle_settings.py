"""LifecycleSettings: the settings that turn lifecycle events on for a FastAPI manager.

A frozen dataclass of plain values, apart from the machinery that acts on them
(``roomcast.fastapi.lifecycle``), so that ``ConnectionConfig`` can carry one and nothing
optional is imported to read it.  Without one, a manager records nothing and runs nothing
more.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

__all__ = ["LifecycleSettings"]


@dataclasses.dataclass(frozen=True, slots=True)
class LifecycleSettings:
    """Lifecycle events (``roomcast.events.schema``) for a manager: who is online and where,
    as ``manager.events()`` and ``manager.on_event(callback)`` hand them to the application.

    ``ConnectionManager`` keeps them in memory (lost with the process); the Redis managers
    count cluster-wide in Redis and keep the events in a Redis Stream, so a user moving
    between instances is still one user online, and a dead instance's users depart from a
    survivor (``synthetic`` events).

    Attributes:
        debounce: Seconds a ``disconnect``, ``leave`` or ``vacated`` waits for the user or
            room to come back (a reconnect within it emits nothing).  0: at once.
        max_events: The outbox's bound (memory: events kept; Redis: the stream's
            approximate length).  Past it the oldest go, counted as dropped.
        publishes: Make ``publish`` events of what the application reports with
            ``manager.lifecycle.published(...)`` (the managers never see a client's
            messages themselves).
        group: The consumer group of ``events()`` and ``on_event`` callbacks: each event is
            handed to one reader of the group, cluster-wide (Redis), so N instances running
            the same consumer handle each event once.  Webhooks have a group of their own.
        reclaim_after: Seconds after which an event handed out and never acknowledged (its
            reader died or broke out of its loop) is handed out again.
        callback_retries: Further attempts of a callback that raised, before the event is
            logged and skipped for that callback.
        callback_timeout: Seconds one callback call may take; longer counts as a failure.
        webhook_url: Also deliver every event as a signed webhook (``docs/events.md``); needs
            the ``hooks`` extra.  None: no webhooks.
        webhook_secrets: Signing secrets for the webhooks, the current one first.
        instance_ttl: (Redis) Seconds after which an instance that stopped refreshing is
            dead and a survivor makes its users depart.
        refresh_interval: (Redis) Seconds between liveness refreshes and checks for due
            departures and dead instances.
    """

    debounce: float = 5.0
    max_events: int = 100_000
    publishes: bool = False
    group: str = "app"
    reclaim_after: float = 30.0
    callback_retries: int = 3
    callback_timeout: float = 30.0
    webhook_url: str | None = None
    webhook_secrets: Sequence[bytes | str] = ()
    instance_ttl: float = 15.0
    refresh_interval: float = 0.5

    def __post_init__(self) -> None:
        if self.debounce < 0 or self.callback_retries < 0 or self.max_events < 1:
            raise ValueError("debounce and callback_retries >= 0 and max_events >= 1 needed")
        if self.reclaim_after <= 0 or self.callback_timeout <= 0:
            raise ValueError("reclaim_after and callback_timeout must be positive")
        if self.webhook_url is not None and not self.webhook_secrets:
            raise ValueError("webhook_url needs at least one of webhook_secrets")

    def secrets(self) -> list[bytes]:
        """The webhook secrets as bytes (strings are UTF-8)."""
        return [s.encode() if isinstance(s, str) else bytes(s) for s in self.webhook_secrets]
