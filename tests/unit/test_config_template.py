"""``roomcast genconfig``'s file: every option and namespace setting, documented from their
declarations, commented out so that it starts the server as it would start without it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from roomcast.rules import Namespace
from roomcast.serve.config import ServerConfig
from roomcast.serve.config_file import parse_config
from roomcast.serve.config_template import _attributes, template, write_template
from roomcast.serve.options import options

SETTING_LINE = re.compile(r"^#(?=[A-Za-z\[])", re.MULTILINE)
EXAMPLE_LINE = re.compile(r"^# (?=\w+ = .*# \(an example: unset by default\)$)", re.MULTILINE)


def test_the_file_as_written_sets_nothing() -> None:
    """Everything is commented out: the server starts as without a file."""
    config = parse_config(template(), "rc.toml", ServerConfig)
    assert config.values == {} and config.namespaces is None


def test_every_setting_line_uncommented_gives_the_defaults() -> None:
    """``#key = value`` lines hold the declared defaults: uncommented, they change nothing;
    the default namespace is Namespace() and the example namespace parses."""
    config = parse_config(SETTING_LINE.sub("", template()), "rc.toml", ServerConfig)
    declared = {opt.name: opt.default for opt in options(ServerConfig) if opt.name != "config"}
    assert config.values == {k: v for k, v in declared.items() if v is not None}
    assert config.namespaces is not None
    assert config.namespaces.default == Namespace()
    assert config.namespaces.of("chat:lobby").max_members == 500


def test_the_examples_of_options_without_a_default_parse() -> None:
    """An option without a default has an example, as prose; taken as is, it is valid."""
    text = EXAMPLE_LINE.sub("", SETTING_LINE.sub("", template()))
    config = parse_config(text, "rc.toml", ServerConfig)
    examples = {opt.name for opt in options(ServerConfig) if opt.default is None} - {"config"}
    assert examples <= set(config.values)
    assert config.namespaces is not None and config.namespaces.default.history_size == 100


def test_every_option_and_namespace_setting_is_documented() -> None:
    """Each option appears with its help; each namespace setting with the description its
    docstring gives (so the file cannot drift from the declarations)."""
    text = " ".join(line.removeprefix("# ") for line in template().splitlines())
    for opt in options(ServerConfig):
        if opt.name != "config":
            assert f"{opt.name} = " in text and opt.help.split(";")[0][:40] in text, opt.name
    described = _attributes(Namespace)
    for field in dataclasses.fields(Namespace):
        if field.name != "name":
            assert described[field.name] and f"{field.name} = " in text, field.name
    assert "config = " not in text


def test_a_class_without_a_docstring_has_no_attributes() -> None:
    """(Under python -OO the descriptions are missing, not the settings.)"""

    class Bare:
        pass

    Bare.__doc__ = None
    assert _attributes(Bare) == {}


def test_writing_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An existing file is kept (exit status 2, one line) unless --force; "-" is stdout."""
    path = tmp_path / "rc.toml"
    assert write_template(str(path)) == 0
    assert path.read_text() == template()
    assert "roomcast serve --config" in capsys.readouterr().err
    path.write_text("port = 1\n")
    assert write_template(str(path)) == 2
    assert capsys.readouterr().err == (
        f"roomcast: error: {path} exists: give --force to overwrite it\n"
    )
    assert path.read_text() == "port = 1\n"
    assert write_template(str(path), force=True) == 0
    assert path.read_text() == template()
    capsys.readouterr()
    assert write_template("-") == 0
    assert capsys.readouterr().out == template()
    assert write_template(str(tmp_path / "no" / "such" / "dir.toml")) == 2
    assert "cannot write it (No such file or directory)" in capsys.readouterr().err
