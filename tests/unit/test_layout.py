"""The package's dependency rules, checked from its imports (``docs/design.md`` draws them):
each module may import only the layers its rule names, so the layout cannot drift.

Imports under ``if TYPE_CHECKING:`` do not count: they name types for the checker and make
no module load another (``_state`` names ``Celery`` as the type of the current app).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "celeriac"

#: Modules that import nothing of celeriac's but each other: anything may import them.
LEAVES = ("errors", "states", "ids", "_install", "_celery_settings", "rates", "signals")
#: Each top-level module or package, and the others it may import. Within transports/, a
#: technology package (redis/, sqlite/, ...) imports the contracts, never another technology.
LAYERS: dict[str, tuple[str, ...]] = {
    "protocol": (),
    "config": (),
    "discovery": (),
    "resources": (),
    "_bridge": (),
    "_state": (),
    "transports": ("protocol",),
    # the client, in one direction: app -> task -> sending, result -> _state, _bridge
    "result": ("protocol", "_bridge", "_state"),
    "sending": ("protocol", "config", "_state"),
    "connections": ("protocol", "transports", "config", "sending"),
    "canvas": ("protocol", "transports", "config", "sending", "connections", "result", "_bridge",
               "_state"),
    "task": ("resources", "_bridge", "_state", "result", "sending", "canvas"),
    "control": ("protocol", "_bridge"),
    "control_output": (),
    "app": ("protocol", "transports", "config", "discovery", "resources", "_bridge", "_state",
            "connections", "task", "sending", "result", "canvas", "control"),
    "worker": ("protocol", "transports", "config", "resources", "_bridge", "_state",
               "connections", "app", "task", "result", "canvas"),
    "web": ("protocol", "result"),
    "events": ("protocol", "transports", "connections", "_bridge", "config"),
    "schedules": (),
    "beat": ("transports", "config", "sending", "connections", "_bridge", "schedules", "worker"),
    "cli": ("*",),
    "__init__": ("_state", "app", "canvas", "resources", "result", "task"),
}  # fmt: skip


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def imported(path: Path) -> set[str]:
    """The celeriac modules ``path`` imports (as names relative to the package)."""
    names: set[str] = set()
    tree = ast.parse(path.read_text())
    for guarded in ast.walk(tree):  # drop ``if TYPE_CHECKING:`` blocks (types only)
        if isinstance(guarded, ast.If) and ast.unparse(guarded.test).endswith("TYPE_CHECKING"):
            guarded.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("celeriac."))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "celeriac":
                names.update(f"celeriac.{a.name}" for a in node.names)
            elif node.module.startswith("celeriac."):
                names.add(node.module)
    return {name.removeprefix("celeriac.") for name in names}


def allowed(importer: str, target: str) -> bool:
    own, top = importer.split(".")[0], target.split(".")[0]
    if top in LEAVES:
        return True
    if own in LEAVES:
        return False
    rule = LAYERS[own]
    if "*" not in rule and top not in rule and top != own:
        return False
    return not crosses_technologies(importer, target)


def crosses_technologies(importer: str, target: str) -> bool:
    """One technology package reaching into another (redis importing sqlite's code)."""
    mine, theirs = importer.split("."), target.split(".")
    if mine[0] != "transports" or theirs[0] != "transports" or len(theirs) < 3:
        return False
    return len(mine) < 3 or mine[1] != theirs[1]


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_rule() -> None:
    tops = {module_name(p).split(".")[0] for p in MODULES}
    assert sorted(tops - set(LAYERS) - set(LEAVES)) == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_follow_the_rules(path: Path) -> None:
    importer = module_name(path)
    wrong = sorted(t for t in imported(path) if not allowed(importer, t))
    assert wrong == [], f"{importer} may not import {wrong} (docs/design.md, 'Layout')"


def test_leaves_import_only_leaves() -> None:
    for path in MODULES:
        importer = module_name(path)
        if importer.split(".")[0] in LEAVES:
            assert {t.split(".")[0] for t in imported(path)} <= set(LEAVES), importer
