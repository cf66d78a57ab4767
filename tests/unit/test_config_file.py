"""A ``--config`` file read and checked: values typed by TOML and checked by the flags' own
parsers, namespaces, and one line naming the file, line and key for every mistake."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from roomcast.rules import Action, Namespace
from roomcast.serve.config import ServerConfig
from roomcast.serve.config_file import (
    WORKER_NAMESPACES_VARIABLE,
    line_of,
    parse_config,
    read_config_file,
    worker_namespaces,
)
from roomcast.serve.options import OptionError


def parse(text: str) -> dict[str, Any]:
    return dict(parse_config(text, "rc.toml", ServerConfig).values)


def refusal(text: str) -> str:
    with pytest.raises(OptionError) as refused:
        parse_config(text, "rc.toml", ServerConfig)
    return str(refused.value)


def test_an_empty_file_sets_nothing() -> None:
    """No keys: no values, no namespaces (the server's rules stay None)."""
    config = parse_config("# nothing\n", "rc.toml", ServerConfig)
    assert config.values == {} and config.namespaces is None and config.tables is None


def test_values_are_typed_by_toml() -> None:
    """Integers, floats (an integer too), booleans for switches, strings, arrays."""
    values = parse(
        "port = 9000\nclose_timeout = 2\nrate_limit = 0.5\ndemo = false\necho = true\n"
        'presence = false\nhost = "0.0.0.0"\nallowed_origins = ["https://a.example"]\n'
        'log_level = "debug"\nworkers = 3\napi_port = -1\n'
    )
    assert values == {
        "port": 9000,
        "close_timeout": 2.0,
        "rate_limit": 0.5,
        "demo": False,
        "echo": True,
        "presence": False,
        "host": "0.0.0.0",
        "allowed_origins": frozenset({"https://a.example"}),
        "log_level": "debug",
        "workers": 3,
        "api_port": None,
    }
    assert isinstance(values["close_timeout"], float)


@pytest.mark.parametrize(
    ("value", "origins"),
    [
        ('"https://a.example, https://b.example"', {"https://a.example", "https://b.example"}),
        ("[]", None),
        ('""', None),
    ],
)
def test_origins_may_be_a_comma_separated_string(value: str, origins: set[str] | None) -> None:
    """As the flag takes them; none at all is "any origin", as without the key."""
    expected = None if origins is None else frozenset(origins)
    assert parse(f"allowed_origins = {value}\n")["allowed_origins"] == expected


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (
            "port = 8000\nmax_conections = 5\n",
            "rc.toml:2: unknown option 'max_conections': did you mean 'max_connections'?",
        ),
        ("max-rooms = 5\n", "rc.toml:1: unknown option 'max-rooms': did you mean 'max_rooms'?"),
        ("no_demo = true\n", "rc.toml:1: unknown option 'no_demo': did you mean 'demo = false'?"),
        (
            "no-presence = false\n",
            "rc.toml:1: unknown option 'no-presence': did you mean 'presence = true'?",
        ),
        (
            "[server]\nport = 1\n",
            "rc.toml:1: unknown option 'server' (the options are those "
            "of roomcast serve --help, _ for -)",
        ),
        (
            'config = "other.toml"\n',
            "rc.toml:1: config: not in a file (give --config or ROOMCAST_CONFIG)",
        ),
        ('port = "8000"\n', "rc.toml:1: port: expected a port number, not '8000'"),
        ("port = 70000\n", "rc.toml:1: port: a port is 0 to 65535, not 70000"),
        ("max_rooms = 1.5\n", "rc.toml:1: max_rooms: expected a whole number, not 1.5"),
        ("max_rooms = true\n", "rc.toml:1: max_rooms: expected a whole number, not True"),
        ("max_connections = 0\n", "rc.toml:1: max_connections: must be 1 or more, not 0"),
        ("history_size = -1\n", "rc.toml:1: history_size: must be 0 (off) or more, not -1"),
        ("close_timeout = 0\n", "rc.toml:1: close_timeout: must be more than 0, not 0"),
        ("close_timeout = nan\n", "rc.toml:1: close_timeout: expected a finite number, not nan"),
        ("workers = 0\n", "rc.toml:1: workers: must be 1 or more, not 0"),
        ('demo = "no"\n', "rc.toml:1: demo: expected true or false, not 'no'"),
        (
            'log_level = "loud"\n',
            "rc.toml:1: log_level: expected one of debug, info, warning, error, not 'loud'",
        ),
        (
            "allowed_origins = [1]\n",
            "rc.toml:1: allowed_origins: expected an array of strings "
            'such as ["https://a.example"], not [1]',
        ),
        ("\n\napi_key = 12345\n", "rc.toml:3: api_key: expected a string, not a TOML number"),
        (
            'redis_url = "user:hunter2@host:6379"\n',
            "rc.toml:1: redis_url: a Redis URL starts "
            "with redis:// (rediss:// for TLS, unix:// for a socket), e.g. redis://localhost:6379",
        ),
        ("port = \n", "rc.toml: Invalid value (at line 1, column 8)"),
        (
            "[namespaces.chat]\nmax_members = -1\n",
            "rc.toml:2: namespaces.chat.max_members: expected a whole number, 0 or more, not -1",
        ),
        ('namespaces = "chat"\n', "rc.toml:1: namespaces: expected a table of namespaces"),
        (
            "[namespaces.chat]\n[namespaces.news]\nmax_member = 1\n",
            "rc.toml:3: "
            "namespaces.news.max_member: unknown setting (known: allow, anonymous, history_size, "
            "history_ttl, max_members, max_rooms_per_connection, presence, presence_for, publish)",
        ),
        (
            '[namespaces."a:b"]\n',
            "rc.toml:1: namespaces.a:b: a namespace name is non-empty, without ':', '$', '#', '*'",
        ),
    ],
)
def test_a_mistake_is_one_line_with_the_file_line_and_key(text: str, line: str) -> None:
    """Unknown keys (with the closest option), wrong types, values out of the flags' ranges,
    TOML syntax, namespace settings: each named with its line; a secret is never repeated."""
    assert refusal(text) == line
    assert "hunter2" not in line and "12345" not in line


def test_namespaces_become_rules_and_keep_their_tables() -> None:
    """[namespaces.*] tables are checked by Namespaces.from_mapping; the raw tables are kept
    for workers."""
    text = (
        'port = 1\n[namespaces.default]\nallow = ["join"]\n'
        "[namespaces.chat]\nmax_members = 5\nhistory_ttl = 60\n"
    )
    config = parse_config(text, "rc.toml", ServerConfig)
    assert config.namespaces is not None
    assert config.namespaces.default == Namespace(allow=frozenset({Action.JOIN}))
    assert config.namespaces.of("chat:x") == Namespace(name="chat", max_members=5, history_ttl=60.0)
    assert config.tables == {
        "default": {"allow": ["join"]},
        "chat": {"max_members": 5, "history_ttl": 60},
    }


def test_workers_read_the_namespaces_their_supervisor_wrote() -> None:
    """The JSON a supervisor passes gives the same namespaces; none passed: none; a corrupt
    one stops the worker with a line naming the variable."""
    tables = {"chat": {"max_members": 5}}
    namespaces, raw = worker_namespaces({WORKER_NAMESPACES_VARIABLE: json.dumps(tables)})
    assert namespaces is not None and namespaces.of("chat:a").max_members == 5
    assert raw == tables
    assert worker_namespaces({}) == (None, None)
    with pytest.raises(OptionError, match=WORKER_NAMESPACES_VARIABLE):
        worker_namespaces({WORKER_NAMESPACES_VARIABLE: "{"})


def test_a_file_that_cannot_be_read_is_named(tmp_path: Path) -> None:
    """Missing, a directory, not UTF-8: one line naming the file."""
    missing = tmp_path / "missing.toml"
    with pytest.raises(OptionError) as refused:
        read_config_file(str(missing), ServerConfig)
    assert str(refused.value) == (
        f"{missing}: cannot read the config file (No such file or directory)"
    )
    with pytest.raises(OptionError, match="Is a directory"):
        read_config_file(str(tmp_path), ServerConfig)
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'host = "caf\xe9"\n')
    with pytest.raises(OptionError) as refused:
        read_config_file(str(latin), ServerConfig)
    assert str(refused.value) == f"{latin}: a config file is UTF-8 text, and this is not"


def test_a_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "rc.toml"
    path.write_text("port = 9\n")
    assert read_config_file(str(path), ServerConfig).values == {"port": 9}


TEXT = """\
# a comment: port = 1
port = 1
"quoted" = 2
[namespaces]
chat = { max_members = -1 }
[ namespaces . "news" ]  # a comment
  max_members = 3
namespaces.other = 4
[namespaces.dotted]
a.b.c = 5
"""


@pytest.mark.parametrize(
    ("keys", "line"),
    [
        (("port",), 2),
        (("quoted",), 3),
        (("namespaces",), 4),
        (("namespaces", "chat"), 5),
        (("namespaces", "chat", "max_members"), 5),  # (inside an inline table: its line)
        (("namespaces", "news"), 6),
        (("namespaces", "news", "max_members"), 7),
        (("namespaces", "dotted", "a", "b", "c"), 10),
        (("absent",), None),
    ],
)
def test_a_keys_line_is_found_by_scanning(keys: tuple[str, ...], line: int | None) -> None:
    """Headers (spaced, quoted, commented), bare, quoted and dotted keys; a key inside an
    inline table gets that table's line; a comment is never a key."""
    assert line_of(TEXT, keys) == line
