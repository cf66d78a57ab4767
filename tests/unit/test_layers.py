"""The architecture as rules the imports must keep (read from the source, nothing imported).

* the core (vocabulary and engines at the top level of ``roomcast``) imports no I/O library;
* brokers and presence never import a face (``roomcast.fastapi``, ``roomcast.serve``);
* the two faces never import each other;
* the Python client (``roomcast.client``) imports only the core: it talks to a server over the
  wire and never loads the server's code;
* no import cycles among module-level imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[2] / "src" / "roomcast"
IO_LIBRARIES = (
    "redis",
    "picows",
    "starlette",
    "uvicorn",
    "fastapi",
    "httptools",
    "uvloop",
    "aiohttp",
)
CORE = (
    "roomcast.errors",
    "roomcast.messages",
    "roomcast.frame",
    "roomcast.connection",
    "roomcast.registry",
    "roomcast.heartbeat",
    "roomcast.expiry",
    "roomcast.limits",
    "roomcast.identifiers",
    "roomcast.logbudget",
    "roomcast.protocol",
    "roomcast.tasks",
    "roomcast.hub",
    "roomcast.brokers.base",
    "roomcast.brokers.envelope",
    "roomcast.brokers.memory",
    "roomcast.rules",
    "roomcast.rules.capabilities",
    "roomcast.rules.namespaces",
    "roomcast.rules.rooms",
    "roomcast.events.schema",
    "roomcast.events.signing",
    "roomcast.events.outbox",
    "roomcast.events.memory",
    "roomcast.events.stats",
    "roomcast.events.lifecycle",
    "roomcast.figures",
    "roomcast.events.feed",
    "roomcast.hooks.decisions",
    "roomcast.hooks.metrics",
)
COMPATIBILITY_PATHS = (
    "roomcast.server",
    "roomcast.cli",
    "roomcast.manager",
    "roomcast.distributed",
    "roomcast.auth_manager",
    "roomcast.redis_pubsub",
    "roomcast.broker",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Modules ``path`` imports (absolute names), at module level only if asked."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


MODULES = {module_name(path): path for path in SOURCE.rglob("*.py")}


def roomcast_imports(name: str, top_level_only: bool = False) -> set[str]:
    return {m for m in imports(MODULES[name], top_level_only) if m in MODULES and m != name}


def test_the_core_imports_no_io_library() -> None:
    """The pure modules can be used (and tested) without Redis, picows, Starlette, uvicorn or
    aiohttp."""
    for name in CORE:
        foreign = {m for m in imports(MODULES[name]) if m.split(".")[0] in IO_LIBRARIES}
        assert not foreign, f"{name} imports {sorted(foreign)}"
        faces = {
            m
            for m in roomcast_imports(name)
            if m.startswith(("roomcast.fastapi", "roomcast.serve"))
        }
        assert not faces, f"{name} imports {sorted(faces)}"


@pytest.mark.parametrize("package", ["roomcast.brokers", "roomcast.presence"])
def test_brokers_and_presence_never_import_a_face(package: str) -> None:
    """What carries and tracks connections does not know who serves them."""
    for name in MODULES:
        if name.startswith(package):
            faces = {
                m
                for m in roomcast_imports(name)
                if m.startswith(("roomcast.fastapi", "roomcast.serve"))
            }
            assert not faces, f"{name} imports {sorted(faces)}"


@pytest.mark.parametrize(("face", "other"), [("fastapi", "serve"), ("serve", "fastapi")])
def test_the_faces_never_import_each_other(face: str, other: str) -> None:
    """The FastAPI managers and roomcast serve stand side by side on the hub."""
    for name in MODULES:
        if name.startswith(f"roomcast.{face}"):
            crossing = {m for m in roomcast_imports(name) if m.startswith(f"roomcast.{other}")}
            assert not crossing, f"{name} imports {sorted(crossing)}"


def test_the_client_imports_only_the_core() -> None:
    """roomcast.client needs websockets and the core's vocabulary, nothing of a server."""
    names = [name for name in MODULES if name.startswith("roomcast.client")]
    assert "roomcast.client.session" in names
    for name in names:
        outside = {m for m in roomcast_imports(name) if not m.startswith("roomcast.client")}
        assert outside <= set(CORE), f"{name} imports {sorted(outside - set(CORE))}"
        foreign = {m for m in imports(MODULES[name]) if m.split(".")[0] in IO_LIBRARIES}
        assert not foreign, f"{name} imports {sorted(foreign)}"


def test_no_import_cycles() -> None:
    """Module-level imports form no cycle (a module may still import lazily inside a
    function, e.g. the Redis broker behind an optional extra)."""
    graph = {
        name: {m for m in roomcast_imports(name, top_level_only=True) if m in MODULES}
        for name in MODULES
        if name not in COMPATIBILITY_PATHS
    }
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        assert name not in visiting, "import cycle: " + " -> ".join([*visiting, name])
        visiting.append(name)
        for target in sorted(graph.get(name, ())):
            visit(target)
        visiting.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


def test_no_module_is_over_400_lines() -> None:
    """Small modules with one job each."""
    long = {
        name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > 400
    }
    assert not long, long
