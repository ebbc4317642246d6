"""Source registry: names, did-you-mean, option checking."""

from __future__ import annotations

import pytest
from data_helpers import FIXTURES

from prefopt.core.errors import PrefoptError
from prefopt.data.registry import Option, get_source, register_source, source_info, source_names
from prefopt.data.report import DropReport

BUILTIN = {
    "ultrafeedback_h4",
    "ultrafeedback_trl",
    "ultrafeedback_argilla",
    "ultrafeedback_raw",
    "kto_mix",
    "hh_rlhf",
    "sharegpt_ranking",
    "stack_exchange",
    "messages_label",
    "jsonl",
    "json",
    "parquet",
}


def test_every_builtin_source_is_registered():
    assert BUILTIN <= set(source_names())
    for name in BUILTIN:
        info = source_info(name)
        assert info.description and info.options is not None and info.kinds


def test_unknown_source_suggests_the_closest_name():
    with pytest.raises(PrefoptError) as e:
        get_source("ultrafeedback_h5")
    assert 'Did you mean "ultrafeedback_h4"?' in str(e.value) and "hh_rlhf" in str(e.value)


def test_unknown_and_mistyped_options_are_errors():
    read = get_source("hh_rlhf")
    spec = {"path": str(FIXTURES / "hh_rlhf.jsonl")}
    with pytest.raises(PrefoptError) as e:
        read({**spec, "inner_tag": "drop"}, report=DropReport())
    assert 'unknown option "inner_tag"' in str(e.value) and 'Did you mean "inner_tags"' in str(e.value)
    with pytest.raises(PrefoptError, match="not one of"):
        read({**spec, "inner_tags": "remove"}, report=DropReport())
    with pytest.raises(PrefoptError, match="type bool"):
        get_source("ultrafeedback_h4")({**spec, "keep_ties": "yes"}, report=DropReport())
    with pytest.raises(PrefoptError, match="max_rows"):
        read({**spec, "max_rows": 0}, report=DropReport())


def test_register_source_rejects_a_second_owner():
    @register_source("test_data_registry_tmp", options={"x": Option(1, "an option", "int")})
    def first(spec, *, base_dir=None, seed=0, report):
        return spec

    assert get_source("test_data_registry_tmp")({}, report=None)["x"] == 1
    with pytest.raises(ValueError, match="already registered"):

        @register_source("test_data_registry_tmp")
        def second(spec, *, base_dir=None, seed=0, report):  # pragma: no cover - never registered
            return spec
