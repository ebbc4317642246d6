"""The import rules of prefopt's layered layout, checked on the source with :mod:`ast`.

The package is layered, lowest first (``LAYERS``); a module may import its own layer or lower ones.
Also: no ``prefopt`` import inside a function outside ``cli/`` (a function-local import of prefopt's own
code hides a cycle: the code is in the wrong room); ``core``, ``config`` and ``data`` import no torch or
trl at module level; no module imports another module's ``_private`` names. import-linter checks the
layers too (``make lint``), but it cannot see where an import sits; this checker can.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "prefopt"

LAYERS = (
    "core",
    "config",
    "data",
    "model",
    "world",
    "training",
    "judge",
    "evaluate",
    "pipeline",
    "studies",
    "cli",
)
"""Lowest first. ``prefopt/__init__.py`` (the version) counts as core."""

FUNCTION_LOCAL_ALLOWED = ("cli",)
"""Layers whose functions may import prefopt lazily (argument parsing must stay fast)."""

NO_HEAVY_AT_IMPORT = ("core", "config", "data")

SHIM_DOC = "Moved to "
"""A module directly under prefopt/ whose docstring starts with this is a one-release re-export shim of an
old path: it may import anything, and no module of the package may import it."""
HEAVY = ("torch", "trl")


@dataclass(frozen=True)
class Violation:
    module: str
    line: int
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line}: [{self.rule}] {self.detail}"


def module_name(path: Path, package_dir: Path = PACKAGE_DIR) -> str:
    rel = path.relative_to(package_dir.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def is_shim(path: Path, package_dir: Path = PACKAGE_DIR) -> bool:
    if path.parent != package_dir or path.name == "__init__.py":
        return False
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return doc.startswith(SHIM_DOC)


def shim_modules(package_dir: Path = PACKAGE_DIR) -> set[str]:
    return {f"prefopt.{p.stem}" for p in package_dir.glob("*.py") if is_shim(p, package_dir)}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "prefopt":
        return None
    if len(parts) == 1:
        return "core"
    return parts[1] if parts[1] in LAYERS else None


def _is_package_module(module: str, package_dir: Path) -> bool:
    rel = Path(*module.split(".")[1:])
    base = package_dir / rel
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def _resolve_from(node: ast.ImportFrom, module: str, is_package: bool) -> str | None:
    if node.level == 0:
        return node.module
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _private_module(target: str) -> str | None:
    """``prefopt.a._b.c`` → ``prefopt.a`` (the package a private module belongs to), else None."""
    parts = target.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return None


def check_file(path: Path, package_dir: Path = PACKAGE_DIR) -> list[Violation]:
    module = module_name(path, package_dir)
    is_package = path.name == "__init__.py"
    layer = layer_of(module)
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[Violation] = []
    if is_shim(path, package_dir):
        return out
    shims = shim_modules(package_dir)
    if layer is None:
        out.append(Violation(module, 1, "unknown-layer", f"{module} is not in a layer folder {LAYERS}"))
        return out

    top_level = set()
    for node in tree.body:
        for sub in ast.walk(node):
            if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                break
        top_level.add(id(node))

    def in_function(node) -> bool:
        return id(node) in in_func

    in_func: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for sub in ast.walk(node):
                if sub is not node:
                    in_func.add(id(sub))

    module_aliases: dict[str, str] = {}  # local name → prefopt module it is bound to
    for node in ast.walk(tree):
        targets: list[tuple[str, list[str]]] = []  # (imported module, [names])
        if isinstance(node, ast.Import):
            for a in node.names:
                targets.append((a.name, []))
                if a.name.startswith("prefopt") and a.asname:
                    module_aliases[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom):
            src = _resolve_from(node, module, is_package)
            if src is None:
                continue
            targets.append((src, [a.name for a in node.names]))
            if src.startswith("prefopt"):
                for a in node.names:
                    sub = f"{src}.{a.name}"
                    if _is_package_module(sub, package_dir):
                        module_aliases[a.asname or a.name] = sub
        else:
            continue
        local = in_function(node)
        for target, names in targets:
            root = target.split(".")[0]
            if root in HEAVY and layer in NO_HEAVY_AT_IMPORT and not local:
                out.append(
                    Violation(
                        module, node.lineno, "heavy-at-import", f"{layer}/ imports {target} at import time"
                    )
                )
            if root != "prefopt":
                continue
            for name in names or [None]:
                full = f"{target}.{name}" if name else target
                if target in shims or full in shims:
                    out.append(
                        Violation(
                            module,
                            node.lineno,
                            "shim",
                            f"imports the old-path shim {target if target in shims else full}",
                        )
                    )
            if local and layer not in FUNCTION_LOCAL_ALLOWED:
                out.append(
                    Violation(module, node.lineno, "function-local", f"imports {target} inside a function")
                )
            for name in names or [None]:
                full = (
                    f"{target}.{name}"
                    if name and _is_package_module(f"{target}.{name}", package_dir)
                    else target
                )
                tl = layer_of(full)
                if tl is not None and LAYERS.index(tl) > LAYERS.index(layer):
                    out.append(
                        Violation(module, node.lineno, "upward", f"{layer}/ imports {full} ({tl}/ is higher)")
                    )
                owner = _private_module(full)
                if owner is not None and not (module == owner or module.startswith(owner + ".")):
                    out.append(Violation(module, node.lineno, "private", f"imports private module {full}"))
            for name in names:
                if name.startswith("_") and not name.startswith("__") and target != module:
                    out.append(
                        Violation(
                            module, node.lineno, "private", f"imports the private name {name} from {target}"
                        )
                    )
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in module_aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            out.append(
                Violation(
                    module,
                    node.lineno,
                    "private",
                    f"uses the private name {module_aliases[node.value.id]}.{node.attr}",
                )
            )
    return out


def check_package(package_dir: Path = PACKAGE_DIR) -> list[Violation]:
    out: list[Violation] = []
    for path in sorted(package_dir.rglob("*.py")):
        if "smoke_fixtures" in path.parts:  # a standalone script beside the fixtures, not package code
            continue
        out.extend(check_file(path, package_dir))
    return out


if __name__ == "__main__":  # pragma: no cover - python tests/core/import_rules.py
    found = check_package()
    for v in found:
        print(v)
    print(f"{len(found)} violation(s)")
