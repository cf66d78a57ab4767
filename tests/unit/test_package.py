"""Packaging promises: the compatibility import path, namespace packages, optional
dependencies, one version."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import roomcast

SRC = pathlib.Path(__file__).resolve().parents[2] / "src"


def test_seed_path_exports_the_same_objects() -> None:
    """library.components.realtime.websocket_manager re-exports roomcast's public API."""
    from library.components.realtime import websocket_manager

    assert websocket_manager.__all__ == roomcast.__all__
    for name in roomcast.__all__:
        assert getattr(websocket_manager, name) is getattr(roomcast, name)


def test_library_levels_are_namespace_packages(tmp_path: pathlib.Path) -> None:
    """``library`` is a namespace package: an application's own ``library.components.x``
    imports beside roomcast's ``library.components.realtime``."""
    own = tmp_path / "library" / "components" / "mine"
    own.mkdir(parents=True)
    (own / "tool.py").write_text("VALUE = 42\n")
    code = (
        "from library.components.mine.tool import VALUE\n"
        "from library.components.realtime.websocket_manager import ConnectionManager\n"
        "print(VALUE, ConnectionManager.__module__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}:{SRC}"},
    )
    assert result.stdout.split() == ["42", "roomcast.fastapi.manager"]


def test_import_loads_no_optional_dependency() -> None:
    """Importing roomcast (and the seed path) imports no framework, broker, JWT or HTTP client
    library."""
    code = (
        "import sys, library.components.realtime.websocket_manager\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "{'starlette', 'fastapi', 'redis', 'jwt', 'uvicorn', 'websockets', 'aiohttp'}]\n"
        "print(','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""


def test_version_is_the_packages() -> None:
    """roomcast.__version__ is the version in pyproject.toml (what pip installs), and what
    ``roomcast --version`` prints."""
    import tomllib

    pyproject = tomllib.loads((SRC.parent / "pyproject.toml").read_text())
    assert roomcast.__version__ == pyproject["project"]["version"]
    result = subprocess.run(
        [sys.executable, "-m", "roomcast.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.strip() == f"roomcast {roomcast.__version__}"
