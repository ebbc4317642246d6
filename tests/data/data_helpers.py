"""Helpers shared by the data-layer tests (imported by name; tests/data is on sys.path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
# the real samples live in the `shared` folder beside the repository root (../shared/data)
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def read(name: str, path: str | Path, **options: Any):
    """Run source ``name`` on ``path``; returns ``(dataset, report)``."""
    from prefopt.data.registry import get_source
    from prefopt.data.report import DropReport

    report = DropReport()
    ds = get_source(name)({"path": str(path), **options}, base_dir=None, seed=0, report=report)
    return ds, report


def examples(report: Any, reason: str) -> list[int]:
    """Row indices recorded for ``reason``."""
    return [e["index"] for e in report.examples.get(reason, [])]
