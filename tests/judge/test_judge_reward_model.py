"""The reward_model judge: any one-logit AutoModelForSequenceClassification checkpoint, batched as
scored one by one, tokenised as prefopt trains; a checkpoint with the wrong head is refused by path."""

from __future__ import annotations

import pytest
import torch

from prefopt.core.errors import PrefoptError
from prefopt.judge import build_judge

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _save_classifier(path, num_labels: int = 1, seed: int = 0):
    from transformers import LlamaForSequenceClassification

    from prefopt.model.loading import builtin_config, load_tokenizer

    cfg = builtin_config("tiny-arith")
    cfg.num_labels = num_labels
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(cfg)
    model.save_pretrained(path, safe_serialization=True)
    load_tokenizer("builtin:tiny-arith").save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("rm")
    _save_classifier(d)
    return d


def test_scores_batched_equal_scores_one_by_one_and_order_follows_the_input(rm_dir):
    prompts = ["1+1=", "12+30=", "count a 3:", "7+8=", "40+2="]
    replies = ["2", "42", "aaa", "a very long reply that pads the batch", ""]
    batched = build_judge({"type": "reward_model", "path": str(rm_dir), "batch_size": 4})
    single = build_judge({"type": "reward_model", "path": str(rm_dir), "batch_size": 1})
    got = batched.score(prompts, replies)
    assert got == pytest.approx(single.score(prompts, replies), abs=1e-5)
    assert len(set(round(x, 4) for x in got)) == len(got)  # a real model: the scores differ
    assert batched.name == f"reward_model:{rm_dir}"


def test_scores_are_the_head_logit_on_prefopts_tokenisation(rm_dir):
    from transformers import AutoModelForSequenceClassification

    from prefopt.data.tokenization import encode_completion, encode_prompt
    from prefopt.model.loading import load_tokenizer

    tok = load_tokenizer("builtin:tiny-arith")
    model = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    ids = encode_prompt(tok, "3+4=") + encode_completion(tok, "3+4=", "7")
    with torch.no_grad():
        want = float(model(input_ids=torch.tensor([ids])).logits[0, 0])
    judge = build_judge({"type": "reward_model", "path": str(rm_dir)})
    assert judge.score(["3+4="], ["7"]) == pytest.approx([want], abs=1e-6)
    assert ids[-1] == tok.eos_token_id  # the reply ends with EOS, as in training


def test_verdicts_follow_scores(rm_dir):
    judge = build_judge({"type": "reward_model", "path": str(rm_dir)})
    s = judge.score(["1+1=", "1+1="], ["2", "3"])
    (v,) = judge.compare(["1+1="], ["2"], ["3"])
    assert v.scores == pytest.approx(tuple(s))
    assert v.winner == ("a" if s[0] > s[1] else "b")


def test_relative_path_is_resolved_against_the_config_folder(rm_dir):
    judge = build_judge({"type": "reward_model", "path": rm_dir.name}, base_dir=str(rm_dir.parent))
    assert len(judge.score(["1+1="], ["2"])) == 1


def test_max_length_truncates_and_counts(rm_dir):
    judge = build_judge({"type": "reward_model", "path": str(rm_dir), "max_length": 8})
    judge.score(["12+30=", "1+1="], ["a long reply of many tokens", "2"])
    assert judge.truncated == 1
    assert len(judge.encode("12+30=", "a long reply of many tokens")) == 8


def test_a_causal_lm_checkpoint_is_refused_naming_the_path(tmp_path):
    from prefopt.model.loading import build_builtin, load_tokenizer

    build_builtin("tiny-arith", seed=0).save_pretrained(tmp_path)
    load_tokenizer("builtin:tiny-arith").save_pretrained(tmp_path)
    with pytest.raises(PrefoptError) as err:
        build_judge({"type": "reward_model", "path": str(tmp_path)})
    msg = str(err.value)
    assert err.value.where == "judge.path" and err.value.exit_code == 2
    assert f"the checkpoint at {tmp_path} is a LlamaForCausalLM, not a sequence-classification model" in msg
    assert "num_labels=1" in msg and "type: llm" in msg


def test_a_multi_label_head_is_refused(tmp_path):
    _save_classifier(tmp_path, num_labels=3)
    with pytest.raises(
        PrefoptError, match=r"has a 3-label classification head; a reward model has a single logit"
    ):
        build_judge({"type": "reward_model", "path": str(tmp_path)})


def test_missing_head_weights_are_refused_not_initialised_at_random(tmp_path):
    from safetensors.torch import load_file, save_file

    _save_classifier(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["score.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(PrefoptError, match=r"lacks weights the reward model needs \(score.weight\)"):
        build_judge({"type": "reward_model", "path": str(tmp_path)})


def test_missing_path_and_uncached_hub_id(tmp_path):
    with pytest.raises(PrefoptError) as err:
        build_judge({"type": "reward_model", "path": str(tmp_path / "nope")})
    assert err.value.where == "judge.path" and "does not exist" in str(err.value)
    with pytest.raises(PrefoptError, match="huggingface-cli download someone/not-cached-rm"):
        build_judge({"type": "reward_model", "path": "someone/not-cached-rm"})
