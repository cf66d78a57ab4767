"""``roomcast serve --config FILE``: a TOML file of options and namespaces.

The file's top-level keys are the options of ``roomcast serve --help``, named as the
``ServerConfig`` field (or ``COMMAND_LINE`` entry) that declares them, which is the flag without
its dashes and with ``_`` for ``-``: ``max_message_size = 65536``, ``demo = false`` (the key is
``demo``, not ``no_demo``), ``allowed_origins = ["https://a.example"]``.  The values are checked
by the same parsers as the flags (``options.parse_text``), so a range is stated once.  The
``[namespaces.NAME]`` tables go to ``roomcast.rules.Namespaces.from_mapping`` as they are.

The file's values become the parser's defaults, which the ``ROOMCAST_*`` variables and then the
flags override (``options.add_options``).  A mistake stops start-up with one line naming the
file, the line and the key.  TOML's own errors carry their line and column; for the others the
line is found by scanning the text for the key under its table header (see ``line_of``), which
is exact for the usual layouts and approximate for keys inside inline tables (the line of the
enclosing key) or multi-line strings.  Pure but for reading the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from roomcast.rules import Namespaces, RulesError
from roomcast.serve.options import Option, OptionError, options, parse_text

__all__ = [
    "NAMESPACES",
    "NOT_IN_A_FILE",
    "WORKER_NAMESPACES_VARIABLE",
    "ConfigFile",
    "line_of",
    "parse_config",
    "read_config_file",
    "worker_namespaces",
]

NAMESPACES = "namespaces"
"""The file's table of namespaces (``[namespaces.chat]``)."""

NOT_IN_A_FILE = frozenset({"config"})
"""Options a file cannot set (a file naming another file would only hide where values come
from)."""

WORKER_NAMESPACES_VARIABLE = "ROOMCAST_WORKER_NAMESPACES"
"""Set by a ``--workers`` supervisor in each worker's environment: the file's namespace tables
as JSON, read once by the supervisor, so that a worker restarted after the file was edited
still has the rules of its siblings."""


@dataclasses.dataclass(frozen=True, slots=True)
class ConfigFile:
    """What a file sets.

    Attributes:
        path: The file, as named on the command line (error messages and ``--help`` say it).
        values: Option values by option name, checked, as ``ServerConfig`` holds them.
        namespaces: The ``[namespaces.*]`` tables, checked; None without any.
        tables: Those tables as the file wrote them (what a worker is given).
    """

    path: str
    values: Mapping[str, Any]
    namespaces: Namespaces | None = None
    tables: Mapping[str, Any] | None = None


def read_config_file(path: str, config_class: type) -> ConfigFile:
    """Read and check ``path``.

    Raises:
        OptionError: it cannot be read, is not TOML, or a key or value is wrong; one line
            naming the file, the line and the key.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise OptionError(f"{path}: cannot read the config file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise OptionError(f"{path}: a config file is UTF-8 text, and this is not") from None
    return parse_config(text, path, config_class)


def parse_config(text: str, path: str, config_class: type) -> ConfigFile:
    """Check the TOML ``text`` of the file ``path`` (see ``read_config_file``)."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # (its message ends with the line and column)
        raise OptionError(f"{path}: {exc}") from None
    known = {opt.name: opt for opt in options(config_class) if opt.name not in NOT_IN_A_FILE}
    values: dict[str, Any] = {}
    for key, value in document.items():
        if key == NAMESPACES:
            continue
        where = _where(path, text, (key,))
        if key in NOT_IN_A_FILE:
            raise OptionError(f"{where}: {key}: not in a file (give --{key} or ROOMCAST_CONFIG)")
        opt = known.get(key)
        if opt is None:
            raise OptionError(f"{where}: {_unknown(key, value, known)}")
        try:
            values[key] = _value(opt, value)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
            raise OptionError(f"{where}: {key}: {exc}") from None
    tables = document.get(NAMESPACES)
    if tables is None:
        return ConfigFile(path, values)
    try:
        namespaces = Namespaces.from_mapping(tables, where=NAMESPACES)
    except RulesError as exc:
        raise OptionError(f"{_where(path, text, tuple(exc.key.split('.')))}: {exc}") from None
    return ConfigFile(path, values, namespaces, tables)


def worker_namespaces(environ: Mapping[str, str]) -> tuple[Namespaces | None, Any]:
    """The namespaces a supervisor passed in ``WORKER_NAMESPACES_VARIABLE`` (none: None), and
    their tables.

    Raises:
        OptionError: the variable is not what a supervisor writes.
    """
    raw = environ.get(WORKER_NAMESPACES_VARIABLE)
    if not raw:
        return None, None
    try:
        tables = json.loads(raw)
        return Namespaces.from_mapping(tables, where=NAMESPACES), tables
    except (ValueError, RulesError) as exc:
        raise OptionError(f"{WORKER_NAMESPACES_VARIABLE}: {exc}") from None


def _unknown(key: str, value: Any, known: Mapping[str, Option]) -> str:
    """An unknown key's message, with the option it was probably meant to be (``no_demo =
    true``, after the flag ``--no-demo``, is ``demo = false``)."""
    name = key.replace("-", "_")
    negated = known.get(name.removeprefix("no_")) if name.startswith("no_") else None
    if negated is not None and negated.kind in ("off-switch", "either"):
        meant = f"{negated.name} = {'false' if value is True else 'true'}"
        return f"unknown option {key!r}: did you mean {meant!r}?"
    close = difflib.get_close_matches(name, list(known), n=1)
    if close:
        return f"unknown option {key!r}: did you mean {close[0]!r}?"
    return f"unknown option {key!r} (the options are those of roomcast serve --help, _ for -)"


_KIND_WORDS = {
    int: "a whole number",
    float: "a number",
    str: "a string",
    "port": "a port number",
    "port-or-off": "a port number (-1: off)",
    "redis-url": 'a string such as "redis://localhost:6379"',
    "origins": 'an array of strings such as ["https://a.example"]',
    "switch": "true or false",
    "off-switch": "true or false",
    "either": "true or false",
}


def _value(opt: Option, value: Any) -> Any:
    """``value`` as ``ServerConfig`` holds it, checked as the flag would check it.

    Raises:
        TypeError: not of the TOML type the option takes.
        ValueError: out of range (or ``argparse.ArgumentTypeError``, from the flag's parser).
    """
    kind = opt.kind
    if kind in ("switch", "off-switch", "either"):
        if not isinstance(value, bool):
            raise TypeError(_expected(opt, value))
        return value
    if kind == "origins":
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            value = ",".join(value)
        elif not isinstance(value, str):
            raise TypeError(_expected(opt, value))
        return parse_text(opt, value)
    if kind in (int, "port", "port-or-off"):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            raise ValueError(f"expected a finite number, not {value}")
    else:
        ok = isinstance(value, str)
    if not ok:
        raise TypeError(_expected(opt, value))
    if opt.choices and value not in opt.choices:
        raise ValueError(f"expected one of {', '.join(opt.choices)}, not {value!r}")
    return parse_text(opt, str(value))


def _expected(opt: Option, value: Any) -> str:
    shown = f"a TOML {_toml_type(value)}" if opt.secret else repr(value)
    return f"expected {_KIND_WORDS.get(opt.kind, 'a string')}, not {shown}"


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return "string" if isinstance(value, str) else "date or time"


def _where(path: str, text: str, keys: tuple[str, ...]) -> str:
    line = line_of(text, keys)
    return f"{path}:{line}" if line else path


_HEADER = re.compile(r"^\[\[?\s*([^\]]*?)\s*\]\]?\s*(?:#.*)?$")
_PART = r"""(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
_ASSIGNMENT = re.compile(rf"^({_PART}(?:\s*\.\s*{_PART})*)\s*=")


def line_of(text: str, keys: tuple[str, ...]) -> int | None:
    """The line (from 1) where ``text`` sets the dotted key ``keys``, or, failing that, its
    nearest enclosing key or table (a key inside an inline table: the line of that table);
    None if not even the first key appears.

    A scan, not a parse: table headers and ``key =`` at the start of a line, bare or quoted,
    dotted or not.  A line inside a multi-line string that looks like either can mislead it.
    """
    best: tuple[int, int] | None = None  # (keys matched, line)
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        header = _HEADER.match(stripped)
        if header:
            table = _split_key(header.group(1))
            path = table
        else:
            assignment = _ASSIGNMENT.match(stripped)
            if not assignment:
                continue
            path = table + _split_key(assignment.group(1))
        depth = _common_prefix(path, keys)
        if depth == len(path) and depth and (best is None or depth > best[0]):
            best = (depth, number)
            if depth == len(keys):
                break
    return best[1] if best else None


def _split_key(dotted: str) -> tuple[str, ...]:
    return tuple(part.strip().strip("\"'") for part in dotted.split("."))


def _common_prefix(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n
