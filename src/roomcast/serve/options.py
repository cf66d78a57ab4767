"""Every option of ``roomcast serve``, defined once.

An option is declared in one place: a ``ServerConfig`` field made with ``option(...)`` (its
type, default and help), or, for the few that only the command line has (logging, workers,
the JWT key material), an ``Option`` in ``COMMAND_LINE``.  From that one declaration come the
flag (``--max-rooms``), its ``ROOMCAST_*`` variable (``ROOMCAST_MAX_ROOMS``), the value a
``--workers`` supervisor passes to its workers (secrets go by environment, never argv), and the
``ServerConfig`` the server runs with, and the key of the option in a ``--config`` file
(``roomcast.serve.config_file``), whose values replace the declared defaults.  A variable that
does not parse is an error that names the variable.  Numbers are checked here too: never
negative, and 0 only for an option declared ``off_at_zero`` (whose help then says what 0
turns off).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = [
    "COMMAND_LINE",
    "Option",
    "OptionError",
    "add_options",
    "config_values",
    "option",
    "options",
    "parse_text",
    "to_argv",
]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


class OptionError(ValueError):
    """A setting ``roomcast serve`` cannot start with (a ``ROOMCAST_*`` variable that does not
    parse, options that contradict each other, a port already taken); the message names the
    option and says what to do, on one line."""


@dataclasses.dataclass(frozen=True, slots=True)
class Option:
    """One option.

    Attributes:
        name: The ``ServerConfig`` field, or the argparse destination of a command-line one.
        help: What ``--help`` says.
        kind: ``int``, ``float``, ``str``, ``"switch"`` (a flag that turns it on),
            ``"off-switch"`` (``--no-NAME`` turns a default-on setting off), ``"either"``
            (``--NAME``/``--no-NAME``, unset: decided by other settings), ``"origins"`` (a
            comma-separated list), ``"port"`` (0 to 65535), ``"port-or-off"`` (a port, or
            none) or ``"redis-url"`` (``redis://``, ``rediss://`` or ``unix://``).
        default: The value without flag or variable.
        secret: Passed to workers in the environment, never on their command line.
        choices: The only values allowed, if any.
        group: The ``--help`` section, if not the main one.
        off_at_zero: For a number: 0 turns the feature off (else only positive numbers).
    """

    name: str
    help: str
    kind: Any
    default: Any = None
    secret: bool = False
    choices: tuple[str, ...] = ()
    group: str | None = None
    off_at_zero: bool = False

    @property
    def flag(self) -> str:
        prefix = "--no-" if self.kind == "off-switch" else "--"
        return prefix + self.name.replace("_", "-")

    @property
    def dest(self) -> str:
        """The attribute of the parsed arguments (``no_demo`` for ``--no-demo``)."""
        return self.flag[2:].replace("-", "_")

    @property
    def variable(self) -> str:
        return "ROOMCAST_" + self.flag[2:].replace("-", "_").upper()


def option(
    default: Any,
    help: str,
    *,
    kind: Any = None,
    secret: bool = False,
    group: str | None = None,
    off_at_zero: bool = False,
) -> Any:
    """A ``ServerConfig`` field that is also a command-line option (see ``Option``); the kind
    defaults to the default's type."""
    return dataclasses.field(
        default=default,
        metadata={"option": (help, kind or type(default), secret, group, off_at_zero)},
    )


COMMAND_LINE: tuple[Option, ...] = (
    Option(
        "config",
        "TOML file of options (keys as these flags, with _ for -) and [namespaces.*] tables; "
        "variables and flags override it (`roomcast genconfig` writes one)",
        str,
    ),
    Option(
        "log_level",
        "least severe log level shown",
        str,
        "info",
        choices=("debug", "info", "warning", "error"),
    ),
    Option(
        "log_format",
        "'json' writes one JSON object per line",
        str,
        "text",
        choices=("text", "json"),
    ),
    Option(
        "workers",
        "worker processes sharing the ports (SO_REUSEPORT), restarted if they die; more "
        "than 1 needs --redis-url, which makes them one hub",
        int,
        1,
    ),
    Option(
        "jwt_secret",
        "HMAC secret (HS256/384/512); prefer the ROOMCAST_JWT_SECRET variable",
        str,
        secret=True,
        group="authentication",
    ),
    Option("jwt_public_key", "PEM file of a public key", str, group="authentication"),
    Option("jwt_jwks", "JWKS JSON file", str, group="authentication"),
    Option(
        "jwt_algorithms",
        "comma-separated allow-list; without it: HS256 with a secret, RS256 otherwise",
        str,
        group="authentication",
    ),
    Option("jwt_audience", "the 'aud' tokens must carry", str, group="authentication"),
    Option("jwt_issuer", "the 'iss' tokens must carry", str, group="authentication"),
    Option(
        "jwt_leeway",
        "seconds of clock skew tolerated on exp/nbf/iat, at connect, refresh and expiry (0: none)",
        float,
        30.0,
        group="authentication",
        off_at_zero=True,
    ),
)
"""Options of the command line that are not ``ServerConfig`` fields."""


def options(config_class: type) -> Iterator[Option]:
    """Every option: ``config_class``'s fields made with ``option(...)``, then
    ``COMMAND_LINE``'s."""
    for field in dataclasses.fields(config_class):
        meta = field.metadata.get("option")
        if meta is not None:
            help_text, kind, secret, group, off_at_zero = meta
            yield Option(
                field.name,
                help_text,
                kind,
                field.default,
                secret,
                group=group,
                off_at_zero=off_at_zero,
            )
    yield from COMMAND_LINE


def add_options(
    parser: argparse.ArgumentParser,
    config_class: type,
    environ: Mapping[str, str],
    defaults: Mapping[str, Any] | None = None,
    source: str = "",
) -> None:
    """Add every option to ``parser``, with defaults read from ``environ``'s variables.

    Args:
        defaults: Values by option name (``demo``, not ``no_demo``), checked already, that
            replace the declared defaults: a config file's, named ``source`` in ``--help``.
            The variables override them, as the flags override the variables.

    Raises:
        OptionError: a variable does not parse; the message names it.
    """
    defaults = defaults or {}
    groups: dict[str, argparse._ArgumentGroup] = {}
    for opt in options(config_class):
        target: Any = parser
        if opt.group is not None:
            target = groups.get(opt.group) or parser.add_argument_group(opt.group)
            groups[opt.group] = target
        if opt.variable in environ:
            default, origin = _from_environment(opt, environ), opt.variable
        elif opt.name in defaults:
            value = defaults[opt.name]
            default = not value if opt.kind == "off-switch" else value
            origin = source
        else:
            default, origin = _from_environment(opt, environ), ""
        shown = _shown_default(opt, default, origin)
        help_text = f"{opt.help} ({shown})" if shown else opt.help
        if opt.kind == "switch" or opt.kind == "off-switch":
            target.add_argument(
                opt.flag, dest=opt.dest, action="store_true", default=default, help=help_text
            )
        elif opt.kind == "either":
            either = target.add_mutually_exclusive_group()
            either.add_argument(
                f"--{opt.name.replace('_', '-')}",
                dest=opt.name,
                action="store_true",
                default=default,
                help=help_text,
            )
            either.add_argument(
                f"--no-{opt.name.replace('_', '-')}",
                dest=opt.name,
                action="store_false",
                default=argparse.SUPPRESS,
                help=f"the opposite of --{opt.name.replace('_', '-')}",
            )
        else:
            target.add_argument(
                opt.flag,
                dest=opt.dest,
                type=_parser(opt),
                default=default,
                choices=opt.choices or None,
                help=help_text,
                metavar=None if opt.choices else opt.name.upper(),
            )


def config_values(args: argparse.Namespace, config_class: type) -> dict[str, Any]:
    """The ``ServerConfig`` fields that ``args`` sets (``off-switch`` options inverted)."""
    values: dict[str, Any] = {}
    for opt in options(config_class):
        if opt not in COMMAND_LINE:
            value = getattr(args, opt.dest)
            values[opt.name] = not value if opt.kind == "off-switch" else value
    return values


def to_argv(
    args: argparse.Namespace, config_class: type, skip: frozenset[str] = frozenset()
) -> tuple[list[str], dict[str, str]]:
    """The command line and the variables that give a worker the same options as ``args``:
    secrets go in the variables, never in the arguments (which ``ps`` shows)."""
    argv: list[str] = []
    env: dict[str, str] = {}
    for opt in options(config_class):
        value = getattr(args, opt.dest)
        if opt.name in skip or value is None:
            continue
        if opt.secret:
            env[opt.variable] = str(value)
        elif opt.kind == "switch" or opt.kind == "off-switch":
            argv += [opt.flag] if value else []
        elif opt.kind == "either":
            argv.append(("--" if value else "--no-") + opt.name.replace("_", "-"))
        elif opt.kind == "origins":  # (flag=value: a value may start with a dash)
            argv.append(f"{opt.flag}={','.join(sorted(value))}")
        else:
            argv.append(f"{opt.flag}={value}")
    return argv, env


def parse_text(opt: Option, text: str) -> Any:
    """``opt``'s value written as ``text``, checked as its flag checks it, so that a config
    file keeps the flags' rules.  Raises ``ValueError`` or ``argparse.ArgumentTypeError``,
    saying what it takes."""
    return _parser(opt)(text)


def _parser(opt: Option) -> Any:
    if opt.kind in (int, float):
        return _number(opt.kind, opt.off_at_zero)
    if opt.kind == "redis-url":
        return _redis_url
    if opt.kind == "origins":
        return _origins
    if opt.kind == "port-or-off":
        return _port_or_off
    if opt.kind == "port":
        return _port
    return opt.kind


def _number(kind: type[int] | type[float], off_at_zero: bool) -> Any:
    """The parser of a number option: a ``ValueError`` for text that is not a number (argparse:
    "invalid int value"), an ``ArgumentTypeError`` saying what is allowed for one out of
    range."""

    def number(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(
                "expected a whole number" if kind is int else "expected a number"
            ) from None
        if value < 0 or (value == 0 and not off_at_zero):
            allowed = (
                "0 (off) or more" if off_at_zero else "1 or more" if kind is int else "more than 0"
            )
            raise argparse.ArgumentTypeError(f"must be {allowed}, not {text.strip()}")
        return value

    number.__name__ = kind.__name__  # argparse: "invalid int value: 'x'"
    return number


_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def _redis_url(text: str) -> str:
    """A Redis URL, refused at start-up without a scheme (``localhost:6379``), which redis-py
    would refuse only on first use.  The message does not repeat the URL: it may hold a
    password."""
    if not text.lower().startswith(_REDIS_SCHEMES):
        raise argparse.ArgumentTypeError(
            "a Redis URL starts with redis:// (rediss:// for TLS, unix:// for a socket), "
            "e.g. redis://localhost:6379"
        )
    return text


def _origins(text: str) -> frozenset[str] | None:
    origins = frozenset(o.strip() for o in text.split(",") if o.strip())
    return origins or None


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(f"a port is 0 to 65535, not {port}")
    return port


def _port_or_off(text: str) -> int | None:
    return None if int(text) < 0 else _port(text)


_port.__name__ = _port_or_off.__name__ = "port"  # argparse: "invalid port value: '70000'"


def _shown_default(opt: Option, default: Any, origin: str) -> str:
    """What ``--help`` says of the value in force without the flag: the declared default, or
    the value its ``origin`` (a variable, a config file) gives (a secret's is not shown);
    nothing where there is nothing to show (an option off unless given, whose help says so
    in words)."""
    if origin:
        if opt.secret:
            return f"set by {origin}"
        if opt.kind in ("switch", "off-switch", "either"):
            if default is None:  # ("either", set but empty: decided by other settings)
                return ""
            return f"now {'on' if default else 'off'}, from {origin}"
        if opt.kind == "origins":
            value = ",".join(sorted(default)) if default else "any"
        else:
            value = "off" if default is None else str(default)
        return f"default: {value}, from {origin}"
    if opt.default is None or opt.kind in ("switch", "off-switch", "either"):
        return ""
    return f"default: {opt.default}"


def _from_environment(opt: Option, environ: Mapping[str, str]) -> Any:
    raw = environ.get(opt.variable)
    if raw is None:
        return opt.default if opt.kind != "off-switch" else False
    try:
        if opt.kind in ("switch", "off-switch", "either"):
            word = raw.strip().lower()
            if word not in _TRUE | _FALSE:
                raise ValueError("expected 1/true/yes/on or 0/false/no/off")
            if opt.kind == "either" and not word:
                return None
            return word in _TRUE
        value = _parser(opt)(raw.lower() if opt.choices else raw)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        shown = opt.variable if opt.secret else f"{opt.variable}={raw!r}"  # (a password?)
        raise OptionError(f"{shown} is not a valid {opt.flag} ({exc})") from None
    if opt.choices and value not in opt.choices:
        raise OptionError(f"{opt.variable}={raw!r}: expected one of {', '.join(opt.choices)}")
    return value
