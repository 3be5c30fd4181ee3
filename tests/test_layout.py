"""The layout's rules, read from the source (ast, nothing imported): the module graph of shared/
and services/ has no cycle; a service imports no other service; shared/ imports no service;
shared/store imports no shared/domain; nothing there imports the embedded dev servers. Imports
under `if TYPE_CHECKING:` are left out (they never run)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("shared", "services")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node but those under `if TYPE_CHECKING:`: an import there is for the type checker
    only, never executed, so it cannot make an import cycle at run time."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if isinstance(node, ast.If) and ast.unparse(node.test) in {
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        }:
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return out


def imports_of(path: Path, name: str) -> set[str]:
    """Every module this file imports, absolute, `from a import b` counted as `a.b` when `a.b` is a
    module (so `from shared.store import keys` is an edge to shared.store.keys)."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{alias.name}" for alias in node.names)
    return out


def all_imports() -> dict[str, set[str]]:
    """Every module under shared/ and services/, with everything it imports."""
    files = {
        module_name(p): p
        for pkg in PACKAGES
        for p in (ROOT / pkg).rglob("*.py")
        if "__pycache__" not in p.parts
    }
    return {name: imports_of(p, name) for name, p in files.items()}


def edges() -> dict[str, set[str]]:
    """Internal edges only: to the modules of shared/ and services/."""
    g = all_imports()
    return {name: {d for d in deps if d in g and d != name} for name, deps in g.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(g, white)
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        colour[n] = grey
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if colour.get(m, black) == grey:
                return [*stack[stack.index(m) :], m]
            if colour.get(m) == white and (c := visit(m)) is not None:
                return c
        stack.pop()
        colour[n] = black
        return None

    for n in sorted(g):
        if colour[n] == white and (c := visit(n)) is not None:
            return c
    return None


def service_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "services" and len(parts) > 1 else None


def test_the_graph_is_read() -> None:
    # The checks below mean nothing if the walk finds nothing: a few known edges must be there.
    g = edges()
    assert "shared.store.keys" in g["shared.store.scripts"]
    assert "shared.store.scripts" in g["shared.infra.cache"]
    assert any(m.startswith("shared.") for m in g["services.api.app"])


def test_no_import_cycle() -> None:
    assert find_cycle(edges()) is None, find_cycle(edges())


def test_the_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_service_imports_another() -> None:
    bad = [
        (name, dep)
        for name, deps in all_imports().items()
        if (own := service_of(name)) is not None
        for dep in deps
        if (other := service_of(dep)) is not None and other != own
    ]
    assert bad == []


def test_shared_imports_no_service() -> None:
    bad = [
        (name, dep)
        for name, deps in all_imports().items()
        if name.startswith("shared")
        for dep in deps
        if dep == "services" or dep.startswith("services.")
    ]
    assert bad == []


def test_the_store_imports_no_domain() -> None:
    bad = [
        (name, dep)
        for name, deps in all_imports().items()
        if name.startswith("shared.store")
        for dep in deps
        if dep == "shared.domain" or dep.startswith("shared.domain.")
    ]
    assert bad == []


def test_nothing_shipped_imports_the_embedded_servers() -> None:
    # deploy/embedded.py needs the `local` dependency group, which the production image omits.
    bad = [
        (name, dep)
        for name, deps in all_imports().items()
        for dep in deps
        if dep == "deploy.embedded" or dep.startswith("deploy.embedded.")
    ]
    assert bad == []


def test_the_image_does_not_ship_the_embedded_servers() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    copies = [
        line for line in dockerfile.splitlines() if line.startswith("COPY") and "deploy" in line
    ]
    assert copies, "the Dockerfile copies part of deploy/"
    assert all("embedded" not in line and "deploy ./deploy" not in line for line in copies)
