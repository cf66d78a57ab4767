"""What ``roomcast serve`` says when it starts, read from its settings alone."""

from __future__ import annotations

from roomcast.serve.config import ServerConfig
from roomcast.serve.startup import startup_lines


def test_the_hooks_line_names_the_hooks_the_policy_and_no_secret() -> None:
    """One line names each hook on (its URL without credentials or query), the timeout, the
    cap, the policy and whether requests are signed; the URLs and the secret are not repeated
    among the changed settings."""
    config = ServerConfig(
        connect_hook_url="http://user:pw@backend:9000/hooks/connect?key=s3cret",
        publish_hook_url="https://backend/hooks/publish",
        hook_failure_policy="allow",
        hook_secret="hush",
    )
    lines = startup_lines(config, 8000, None)
    (hooks,) = [line for line in lines if line.startswith("backend hooks:")]
    assert hooks == (
        "backend hooks: connect http://backend:9000/hooks/connect, publish "
        "https://backend/hooks/publish; within 1 s, at most 64 in flight; on failure: allow; "
        "requests signed"
    )
    text = "\n".join(lines)
    assert "pw" not in text and "s3cret" not in text and "hush" not in text
    assert "--hook-secret (set)" in text


def test_without_hooks_there_is_no_hooks_line() -> None:
    """A server without hooks says nothing about them."""
    assert not any(
        line.startswith("backend hooks") for line in startup_lines(ServerConfig(), 8000, None)
    )
