"""``roomcast genconfig``: a commented starting file for ``roomcast serve --config``.

Written from the declarations themselves, so that it cannot drift from them: every option of
``roomcast.serve.options.options`` with its help and default, and every ``Namespace`` setting
with the description its docstring gives (``Attributes:``) and its default.  Each setting line
is commented out as ``#key = default``: removing the ``#`` keeps the default, so the file as
written, or with every such line uncommented, starts the server as it would start without it.
Options without a default get an example instead, as prose (``# key = example``), because no
TOML value means "unset".
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

from roomcast.rules import Namespace
from roomcast.serve.config import ServerConfig, http_url
from roomcast.serve.config_file import NAMESPACES, NOT_IN_A_FILE
from roomcast.serve.options import Option, options

__all__ = ["template", "write_template"]

_HEADER = """\
# roomcast serve --config FILE: written by `roomcast genconfig` (docs/configuration.md).
#
# Every option of `roomcast serve --help`, commented out at its default: remove the "#" before
# a key and change its value. A key is the flag without "--" and with "_" for "-"
# (--max-message-size: max_message_size; --no-demo: demo = false). ROOMCAST_* variables
# override this file, and flags override both.
#
# Secrets (api_key, jwt_secret, a redis_url with a password) may be written here, but the
# variables ROOMCAST_API_KEY, ROOMCAST_JWT_SECRET and ROOMCAST_REDIS_URL keep them out of a
# file that backups, repositories and other users may read.
"""

_NAMESPACES_HEADER = f"""\
# Namespaces: rules per room-name prefix (what each setting means: docs/permissions.md).
# A room's namespace is the part of its name before the first ":" (chat for chat:lobby); rooms
# without a ":", or of a namespace not listed here, follow [{NAMESPACES}.default]. Without
# any [{NAMESPACES}.*] table every room follows the defaults below. Each setting, at its
# default:
"""

_CHAT_EXAMPLE = f"""\
# An example: rooms chat:* hold 500 connections each, keep 50 messages, and clients without a
# capability claim may join, publish and see presence but not read history.
#[{NAMESPACES}.chat]
#allow = ["join", "publish", "presence"]
#max_members = 500
#history_size = 50
"""

_EXAMPLES: dict[Any, Any] = {
    "port-or-off": 8001,
    "redis-url": "redis://localhost:6379/0",
    "origins": ["https://app.example"],
    "either": True,
    str: "...",
    http_url: "http://127.0.0.1:9000/hooks",
}
"""Example values by kind, for the options that have no default."""


def template(config_class: type = ServerConfig) -> str:
    """The file ``roomcast genconfig`` writes."""
    parts = [_HEADER]
    for opt in options(config_class):
        if opt.name not in NOT_IN_A_FILE:
            parts.append(_option(opt))
    parts.append(_NAMESPACES_HEADER + f"#[{NAMESPACES}.default]\n")
    described = _attributes(Namespace)
    for field in dataclasses.fields(Namespace):
        if field.name != "name":
            parts.append(_setting(field.name, described.get(field.name, ""), field.default))
    parts.append(_CHAT_EXAMPLE)
    return "\n".join(parts)


def write_template(path: str, *, force: bool = False) -> int:
    """Write the template to ``path`` (``-``: standard output); an existing file only with
    ``force``.  Returns the exit status (2 with one line on stderr if it cannot)."""
    text = template()
    if path == "-":
        sys.stdout.write(text)
        return 0
    try:
        with Path(path).open("w" if force else "x", encoding="utf-8") as file:
            file.write(text)
    except FileExistsError:
        print(f"roomcast: error: {path} exists: give --force to overwrite it", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"roomcast: error: {path}: cannot write it ({exc.strerror})", file=sys.stderr)
        return 2
    print(f"roomcast: wrote {path}; use it with: roomcast serve --config {path}", file=sys.stderr)
    return 0


def _option(opt: Option) -> str:
    """One option: its help (saying what ``true`` or ``false`` does for a switch, whose help
    describes the flag), then ``#key = default``, or an example for an option without one."""
    help_text = opt.help
    if opt.kind == "switch":
        help_text = f"true: {help_text}"
    elif opt.kind == "off-switch":
        help_text = f"false: {help_text}"
    if opt.choices:
        help_text += f" (one of {', '.join(opt.choices)})"
    lines = _comment(help_text)
    if opt.default is None:
        example = _EXAMPLES.get(opt.kind, "...")
        lines.append(f"# {opt.name} = {_toml(example)}  # (an example: unset by default)")
    else:
        lines.append(f"#{opt.name} = {_toml(opt.default)}")
    return "\n".join(lines) + "\n"


def _setting(name: str, description: str, default: Any) -> str:
    """One namespace setting, like ``_option``; one unset by default falls back on the
    server's option of the same name, whose default is then the example."""
    lines = _comment(description.replace("None:", "unset:"))
    if default is None:
        example = getattr(ServerConfig(), name, "...")
        lines.append(f"# {name} = {_toml(example)}  # (an example: unset by default)")
    else:
        lines.append(f"#{name} = {_toml(default)}")
    return "\n".join(lines) + "\n"


def _comment(text: str) -> list[str]:
    return textwrap.wrap(text, width=98, initial_indent="# ", subsequent_indent="# ")


def _toml(value: Any) -> str:
    """``value`` as TOML (a JSON string is a TOML basic string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, frozenset | set | list | tuple):
        items = sorted(value) if isinstance(value, frozenset | set) else value
        return "[" + ", ".join(_toml(item) for item in items) + "]"
    return json.dumps(str(value))


def _attributes(cls: type) -> dict[str, str]:
    """The ``Attributes:`` section of ``cls``'s Google-style docstring, by attribute, with
    RST markup removed (empty under ``python -OO``, which drops docstrings)."""
    _, _, section = (inspect.getdoc(cls) or "").partition("Attributes:\n")
    described: dict[str, str] = {}
    name = ""
    for line in section.splitlines():
        entry = re.match(r"^    (\w+): (.*)$", line)
        if entry:
            name = entry[1]
            described[name] = entry[2]
        elif name and line.startswith("        "):
            described[name] += " " + line.strip()
        else:
            break
    return {key: text.replace("``", "") for key, text in described.items()}
