"""Generation engines: one interface for everything that samples replies (see :mod:`prefopt.model.engines.base`)."""

from prefopt.model.engines.base import (
    Completion,
    Engine,
    GenerationSection,
    build_engine,
    engine_names,
    register_engine,
)

__all__ = ["Completion", "Engine", "GenerationSection", "build_engine", "engine_names", "register_engine"]
