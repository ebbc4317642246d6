"""Hub dataset ids: loaded through `datasets` from the cache; offline and absent → a clear error."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import datasets
import pytest
from datasets import Dataset

from prefopt.core.errors import PrefoptError
from prefopt.data.registry import get_source
from prefopt.data.report import DropReport


def test_hub_id_goes_through_load_dataset_with_the_default_split(monkeypatch):
    calls = []
    prompt = "Name a colour."

    def fake_load_dataset(name, config=None, **kw):
        calls.append((name, config, kw))
        return Dataset.from_list(
            [
                {
                    "prompt": prompt,
                    "prompt_id": "x",
                    "chosen": [
                        {"content": prompt, "role": "user"},
                        {"content": "Blue.", "role": "assistant"},
                    ],
                    "rejected": [
                        {"content": prompt, "role": "user"},
                        {"content": "Seven.", "role": "assistant"},
                    ],
                    "messages": [],
                    "score_chosen": 8.0,
                    "score_rejected": 2.0,
                }
            ]
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    report = DropReport()
    ds = get_source("ultrafeedback_h4")(
        {"path": "HuggingFaceH4/ultrafeedback_binarized", "revision": "abc123"}, report=report
    )
    assert calls == [
        ("HuggingFaceH4/ultrafeedback_binarized", None, {"split": "train_prefs", "revision": "abc123"})
    ]
    assert ds[0]["chosen"] == [{"role": "assistant", "content": "Blue."}]
    assert "hub dataset HuggingFaceH4/ultrafeedback_binarized" in report.steps[0]["detail"]


def test_missing_split_is_explained(monkeypatch):
    def fake_load_dataset(name, config=None, **kw):
        raise ValueError("Unknown split \"test\". Should be one of ['train'].")

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with pytest.raises(PrefoptError, match="eval_fraction"):
        get_source("ultrafeedback_argilla")(
            {"path": "argilla/ultrafeedback-binarized-preferences-cleaned", "split": "test"},
            report=DropReport(),
        )


def test_offline_and_not_cached_says_how_to_download(tmp_path):
    """The real `datasets` call, offline, with an empty cache (in a subprocess so the offline flag is
    read at import time)."""
    code = textwrap.dedent(
        """
        from prefopt.data.registry import get_source
        from prefopt.data.report import DropReport
        from prefopt.core.errors import PrefoptError
        try:
            get_source("kto_mix")({"path": "trl-lib/kto-mix-14k"}, report=DropReport())
        except PrefoptError as e:
            print(e)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "not in the local Hugging Face cache" in out.stdout, out.stderr[-2000:]
    assert "huggingface-cli download --repo-type dataset trl-lib/kto-mix-14k" in out.stdout
