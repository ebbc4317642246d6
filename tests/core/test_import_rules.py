"""The layered layout holds: every module imports only its own layer or lower ones, no prefopt import sits
inside a function outside cli/, core/config/data load no torch or trl, no module reaches for another's
_private names (checked on the source by tests/core/import_rules.py), and import-linter's contracts in
pyproject.toml hold. Each rule is also shown to catch a violation, so none of these can pass vacuously."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from import_rules import LAYERS, PACKAGE_DIR, check_file, check_package, is_shim

ROOT = PACKAGE_DIR.parent


def test_the_package_follows_every_import_rule():
    violations = check_package()
    assert not violations, "\n".join(str(v) for v in violations)


def test_every_layer_is_a_folder_and_every_module_is_in_one():
    """Top-level modules are only the one-release shims of old paths (and the package's __init__)."""
    folders = {p.name for p in PACKAGE_DIR.iterdir() if (p / "__init__.py").exists()}
    assert folders <= set(LAYERS), folders - set(LAYERS)
    loose = [p.name for p in PACKAGE_DIR.glob("*.py") if p.name != "__init__.py" and not is_shim(p)]
    assert not loose, f"top-level modules outside a layer folder: {loose}"


@pytest.fixture
def fake_package(tmp_path):
    """A copy of the layer folders' skeleton (empty __init__ files) to plant violations in."""
    pkg = tmp_path / "prefopt"
    for layer in LAYERS:
        (pkg / layer).mkdir(parents=True)
        (pkg / layer / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "training" / "fit.py").write_text("def fit():\n    pass\n")
    (pkg / "data" / "_private_mod.py").write_text("X = 1\n")
    (pkg / "data" / "schema.py").write_text("_secret = 1\nPUBLIC = 2\n")
    (pkg / "oldname.py").write_text('"""Moved to prefopt.data.schema; kept for one release."""\n')

    def plant(rel: str, source: str) -> Path:
        path = pkg / rel
        path.write_text(textwrap.dedent(source))
        return path

    plant.pkg = pkg
    return plant


@pytest.mark.parametrize(
    ("where", "source", "rule"),
    [
        ("model/upward.py", "from prefopt.training.fit import fit\n", "upward"),
        ("model/upward2.py", "from prefopt import training\n", "upward"),
        ("core/upward3.py", "import prefopt.cli\n", "upward"),
        ("world/local.py", "def f():\n    from prefopt.data import schema\n", "function-local"),
        ("config/heavy.py", "import torch\n", "heavy-at-import"),
        ("data/heavy2.py", "from trl import DPOConfig\n", "heavy-at-import"),
        ("model/private.py", "from prefopt.data.schema import _secret\n", "private"),
        ("model/private2.py", "from prefopt.data import schema\nx = schema._secret\n", "private"),
        ("model/private3.py", "from prefopt.data._private_mod import X\n", "private"),
        ("cli/shim_user.py", "from prefopt.oldname import thing\n", "shim"),
    ],
)
def test_each_rule_catches_its_violation(fake_package, where, source, rule):
    path = fake_package(where, source)
    found = check_file(path, fake_package.pkg)
    assert [v.rule for v in found] == [rule], found


@pytest.mark.parametrize(
    ("where", "source"),
    [
        ("training/ok.py", "from prefopt.data.schema import PUBLIC\nimport torch\n"),
        ("cli/ok.py", "def main():\n    from prefopt.training.fit import fit\n"),
        ("config/ok.py", "def f():\n    import torch\n"),  # a deferred third-party import is fine
        ("data/ok.py", "from prefopt.data._private_mod import X\n"),  # a private module of its own package
        ("world/ok.py", "from prefopt.model import loading\n"),
    ],
)
def test_allowed_imports_are_not_flagged(fake_package, where, source):
    assert check_file(fake_package(where, source), fake_package.pkg) == []


def test_core_config_and_data_load_without_torch_or_trl():
    """Importing every module of the three lowest layers pulls in neither torch nor trl."""
    code = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        for layer in ("core", "config", "data"):
            pkg = importlib.import_module("prefopt." + layer)
            for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
                importlib.import_module(m.name)
        print(sorted(m for m in ("torch", "trl") if m in sys.modules))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def _lint_imports() -> list[str]:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).exists():
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    return [exe, "--no-cache"]


def test_import_linter_contracts_are_kept():
    proc = subprocess.run(_lint_imports(), cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_import_linter_breaks_on_an_upward_import(tmp_path):
    """A copy of the package with model/ importing training/ breaks the layers contract."""
    copy = tmp_path / "prefopt"
    shutil.copytree(
        PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__", "smoke_fixtures", "builtin")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(copy / "model" / "loading.py", "a") as fh:
        fh.write("\nfrom prefopt.training import fit as _upward  # planted by the test\n")
    proc = subprocess.run(_lint_imports(), cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "prefopt.model.loading -> prefopt.training" in proc.stdout.replace("\n", " ").replace("  ", " ")
