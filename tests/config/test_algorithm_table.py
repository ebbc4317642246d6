"""One table of algorithms: prefopt/config/algorithms.py is where each algorithm is described, and the
adapters (prefopt/training/algorithms/) are where it is mapped onto TRL. Nowhere else in the package may an
algorithm's name appear as a string literal or in a comparison: everything else asks the table."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from prefopt.config import algorithms as table
from prefopt.config.recipe import Recipe
from prefopt.training.algorithms import LOSS_FUNCTIONS, get_adapter, registered

PACKAGE = Path(__file__).resolve().parents[2] / "prefopt"
OWNERS = (PACKAGE / "config" / "algorithms.py", PACKAGE / "training" / "algorithms")
NAMES = frozenset(table.ALGORITHMS)


def _owned(path: Path) -> bool:
    return any(path == o or o in path.parents for o in OWNERS)


def spelled_names(path: Path) -> list[tuple[int, str]]:
    """(line, name) for every string constant that is exactly an algorithm's name."""
    tree = ast.parse(path.read_text())
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.lower() in NAMES
    ]


def test_no_algorithm_name_is_spelled_outside_the_table_and_the_adapters():
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {name!r}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if not _owned(path)
        for line, name in spelled_names(path)
    ]
    assert not found, "algorithm names outside the table/adapters:\n" + "\n".join(found)


def test_the_scan_finds_a_spelled_name(tmp_path):
    """The check above is not vacuous: a comparison with a name, a tuple of names, a Literal are found."""
    f = tmp_path / "m.py"
    f.write_text(
        "from typing import Literal\n"
        "def f(a):\n    return a == 'kto' or a in ('dpo', 'ipo')\n"
        "X = Literal['simpo']\n"
        "Y = 'iterative_dpo'  # not a name\n"
    )
    assert sorted(name for _, name in spelled_names(f)) == ["dpo", "ipo", "kto", "simpo"]


def test_every_row_has_its_adapter_and_every_adapter_its_row():
    assert list(registered()) == list(table.ALGORITHMS) == table.algorithm_names()
    assert list(LOSS_FUNCTIONS) == list(table.ALGORITHMS)


@pytest.mark.parametrize("name", sorted(NAMES))
def test_adapter_and_row_agree(name):
    spec, adapter = table.get_spec(name), get_adapter(name)
    assert adapter.spec is spec
    assert (adapter.name, adapter.data_kind, adapter.uses_reference) == (
        name,
        spec.data_kind,
        spec.uses_reference,
    )
    cfg = adapter.config_class()
    assert f"{cfg.__module__}.{cfg.__qualname__}".endswith(spec.trl_config.rpartition(".")[2])
    assert cfg is spec.config_class()
    trainer = adapter.trainer_class(None)
    base = spec.trl_trainer.rpartition(".")[2]
    assert base in {c.__name__ for c in trainer.__mro__}, (trainer, base)
    # TRL's beta comes from a loss: key the schema has (a reward model has no beta)
    assert spec.scale_param is None or spec.scale_param in spec.loss.model_fields


def test_the_recipe_and_the_table_agree_on_names_and_loss_schemas():
    from typing import get_args

    assert set(get_args(Recipe.model_fields["algorithm"].annotation)) == NAMES
    assert table.LOSS_CLASSES == {n: s.loss for n, s in table.ALGORITHMS.items()}


def test_an_unknown_algorithm_is_named_with_a_suggestion():
    from prefopt.core.errors import PrefoptError

    with pytest.raises(PrefoptError, match='unknown algorithm "kt0". Did you mean "kto"'):
        table.get_spec("kt0")
