"""The backend hooks of one ``roomcast serve`` process, made from its options.

One ``HookClient`` (one aiohttp session, the in-flight cap shared by every hook) for the hooks
that have a URL; the connect hook's reader in front of picows (``connect_hook``); the client
handed to the session for joins and publishes (``hooked``); their figures for ``/metrics``.
Without any hook URL, nothing here is made and aiohttp is never imported.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from roomcast.auth import token_from_request
from roomcast.figures import Figure
from roomcast.serve.config import ServerConfig
from roomcast.serve.connect_hook import ConnectHook, HandOver
from roomcast.serve.hooked import CommandHooks
from roomcast.serve.listener import Front
from roomcast.serve.options import OptionError

if TYPE_CHECKING:
    from roomcast.hooks.client import HookClient

__all__ = ["BackendHooks"]


class BackendHooks:
    """What a server needs of its hooks.

    Args:
        config: The hook options (and whether tokens are verified, which then win over the
            connect hook).
        spawn: Runs a hook call in the background, owned by the server.
        refused: Counts and logs an upgrade the connect hook refused (status, reason).

    Raises:
        OptionError: a hook is set but aiohttp (the ``hooks`` extra) is not installed.
    """

    def __init__(
        self,
        config: ServerConfig,
        spawn: Callable[[Coroutine[Any, Any, None]], object],
        refused: Callable[[int, str], None],
    ) -> None:
        self.client: HookClient | None = None
        self._connect: ConnectHook | None = None
        self.commands: CommandHooks | None = None
        """The client, for the session, if joins or publishes have a hook."""
        urls = (config.connect_hook_url, config.join_hook_url, config.publish_hook_url)
        if not any(urls):
            return
        try:
            from roomcast.hooks.client import HookClient
        except ImportError:  # pragma: no cover - aiohttp is in the dev environment
            raise OptionError(
                "the backend hooks need aiohttp: pip install 'roomcast[hooks]'"
            ) from None
        self.client = HookClient(
            connect_url=config.connect_hook_url,
            join_url=config.join_hook_url,
            publish_url=config.publish_hook_url,
            timeout=config.hook_timeout,
            max_in_flight=config.hook_max_in_flight,
            policy=config.hook_failure_policy,
            secrets=[config.hook_secret.encode()] if config.hook_secret else [],
        )
        if config.connect_hook_url:
            has_token = None
            if config.authenticator is not None:
                in_query = config.token_in_query

                def has_token(headers: list[tuple[str, str]], query: str) -> bool:
                    return token_from_request(headers, query, allow_query=in_query)[0] is not None

            self._connect = ConnectHook(self.client, spawn, refused, has_token)
        if config.join_hook_url or config.publish_hook_url:
            self.commands = self.client

    @property
    def handover(self) -> HandOver | None:
        """Where the connect hook's decisions wait for the gate (None: no connect hook)."""
        return None if self._connect is None else self._connect.handover

    @property
    def front(self) -> Front | None:
        """The reader in front of picows (None: no connect hook, picows' usual front)."""
        return None if self._connect is None else self._connect.front

    @property
    def expiring(self) -> bool:
        """Whether a connection may have an expiry from the connect hook (``expires_at``)."""
        return self._connect is not None

    async def start(self) -> None:
        if self.client is not None:
            await self.client.start()

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.stop()

    def figures(self) -> list[Figure]:
        """The hooks' figures for ``/metrics`` (none without a hook)."""
        return [] if self.client is None else list(self.client.families())
