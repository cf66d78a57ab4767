"""What ``roomcast serve`` says when it starts: where it listens and how it is set up.

One line per fact, so that an operator reading the first lines of the log knows the
addresses (with the demo page's URL), the broker (and that Redis pub/sub ignores the database
number: the channel prefix is what separates hubs on one Redis), the authentication, presence,
history, where lifecycle events go, and every setting changed from its default.  Secrets are
never shown; a Redis URL loses its credentials, a webhook URL its credentials and query.
"""

from __future__ import annotations

import dataclasses
import urllib.parse

from roomcast.serve.config import ServerConfig, lifecycle_enabled

__all__ = ["startup_lines"]


def startup_lines(config: ServerConfig, port: int, api_port: int | None) -> list[str]:
    """The lines to log once both ports listen (``api_port``: None if the API is off)."""
    host = config.host
    demo = f" (demo page: http://{host}:{port}/)" if config.demo else ""
    lines = [f"WebSocket clients: ws://{host}:{port}/ws{demo}"]
    if api_port is None:
        lines.append("HTTP API: off (--api-port and ROOMCAST_API_KEY to publish over HTTP)")
    else:
        lines.append(
            f"HTTP API: http://{host}:{api_port} (POST /api/publish, GET /api/history; "
            "the key goes in X-API-Key)"
        )
    lines.append(_broker(config))
    lines.append(_authentication(config))
    presence = config.presence if config.presence is not None else config.redis_url is None
    lines.append(f"presence: {'on' if presence else 'off (--presence turns it on)'}")
    lines.append(_history(config))
    hooks = _hooks(config)
    if hooks:
        lines.append(hooks)
    lines.append(_lifecycle(config))
    changed = _changed(config)
    if changed:
        lines.append("settings changed from the defaults: " + ", ".join(changed))
    return lines


def _broker(config: ServerConfig) -> str:
    if config.redis_url is None:
        return "broker: none, this process is the whole hub (--redis-url to share it)"
    parts = urllib.parse.urlsplit(config.redis_url)
    where = f"{parts.scheme}://{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    if parts.scheme == "unix":
        where = f"unix://{parts.path}"
    return (
        f"broker: Redis at {where}, channel prefix {config.channel_prefix!r} (Redis pub/sub "
        "ignores the database number: the prefix is what separates hubs on one Redis)"
    )


def _authentication(config: ServerConfig) -> str:
    authenticator = config.authenticator
    if authenticator is None:
        return (
            "authentication: none, clients name themselves with ?user_id= "
            "(--jwt-secret to require tokens)"
        )
    algorithms = getattr(authenticator, "algorithms", None)
    kind = f"JWT ({', '.join(sorted(algorithms))})" if algorithms else type(authenticator).__name__
    query = "accepted" if config.token_in_query else "refused"
    return f"authentication: {kind}; tokens in the query string: {query}"


def _history(config: ServerConfig) -> str:
    if config.history_size <= 0:
        return "history: off (messages carry no position; clients cannot recover)"
    where = (
        "in Redis"
        if config.redis_url is not None
        else f"in this process, at most {config.history_max_bytes >> 20} MiB"
    )
    return f"history: {config.history_size} messages / {config.history_ttl:g} s per room, {where}"


_HOOK_URLS = ("connect_hook_url", "join_hook_url", "publish_hook_url")


def _hooks(config: ServerConfig) -> str:
    """Which hooks are on, where (without credentials or query) and what a failure decides."""
    on = []
    for name in _HOOK_URLS:
        url = getattr(config, name)
        if url:
            parts = urllib.parse.urlsplit(url)
            port = f":{parts.port}" if parts.port else ""
            on.append(f"{name.split('_')[0]} {parts.scheme}://{parts.hostname}{port}{parts.path}")
    if not on:
        return ""
    signed = "signed" if config.hook_secret else "unsigned (--hook-secret to sign them)"
    return (
        f"backend hooks: {', '.join(on)}; within {config.hook_timeout:g} s, at most "
        f"{config.hook_max_in_flight} in flight; on failure: {config.hook_failure_policy}; "
        f"requests {signed}"
    )


def _lifecycle(config: ServerConfig) -> str:
    if not lifecycle_enabled(config):
        return "lifecycle events: off (--webhook-url to send them to your backend)"
    stream = f"Redis stream {{{config.channel_prefix}:life}}:events"
    debounce = f"departures wait {config.events_debounce:g} s for a comeback"
    if config.webhook_url is None:
        return (
            f"lifecycle events: into the {stream}, for a consumer of yours (no webhook: "
            f"--webhook-url to have them delivered); {debounce}"
        )
    parts = urllib.parse.urlsplit(config.webhook_url)  # (no credentials, no query: a token?)
    target = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    where = stream if config.redis_url is not None else "this process's memory (lost on a crash)"
    return (
        f"lifecycle events: webhooks to {target}{parts.path}, waiting in {where}, at most "
        f"{config.events_max}, until answered 2xx; {debounce}"
    )


def _changed(config: ServerConfig) -> list[str]:
    changed = []
    for field in dataclasses.fields(config):
        meta = field.metadata.get("option")
        if meta is None or field.name in {
            "host",
            "port",
            "api_port",
            "redis_url",
            "webhook_url",
            *_HOOK_URLS,
        }:
            continue
        value = getattr(config, field.name)
        if value == field.default:
            continue
        secret = meta[2]
        shown = "(set)" if secret else _shown(value)
        changed.append(f"--{field.name.replace('_', '-')} {shown}")
    return changed


def _shown(value: object) -> str:
    if isinstance(value, frozenset):
        return ",".join(sorted(str(item) for item in value))
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)
