"""Packaging promises: the seed's import path, namespace packages, optional dependencies."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import roomcast

SRC = pathlib.Path(__file__).resolve().parents[1] / "src"


def test_seed_path_exports_the_same_objects() -> None:
    """library.components.realtime.websocket_manager re-exports roomcast's public API."""
    from library.components.realtime import websocket_manager

    assert websocket_manager.__all__ == roomcast.__all__
    for name in roomcast.__all__:
        assert getattr(websocket_manager, name) is getattr(roomcast, name)


def test_library_levels_are_namespace_packages() -> None:
    """No __init__.py in library/, so a user's own `library` namespace can coexist."""
    for level in ("library", "library/components", "library/components/realtime"):
        assert not (SRC / level / "__init__.py").exists()


def test_import_loads_no_optional_dependency() -> None:
    """Importing roomcast (and the seed path) imports no framework, broker or JWT library."""
    code = (
        "import sys, library.components.realtime.websocket_manager\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "{'starlette', 'fastapi', 'redis', 'jwt', 'uvicorn', 'websockets'}]\n"
        "print(','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""


def test_version_is_exposed() -> None:
    """roomcast.__version__ is a version string."""
    assert roomcast.__version__.count(".") == 2
