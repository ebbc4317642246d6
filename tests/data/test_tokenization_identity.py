"""The token ids of a (prompt, completion) are identical across SFT, all five trainers, generation
and evaluation (issue: ORPO/CPO prepend BOS where DPO/SFT do not)."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from prefopt.config.recipe import Recipe
from prefopt.data.tokenization import encode_completion, encode_prompt, tokenize_dataset
from prefopt.model.loading import load_tokenizer
from prefopt.training.build import build_trainer

EXAMPLES = [
    {"prompt": "37+48=", "chosen": "85", "rejected": "86"},
    {"prompt": "2+2=", "chosen": "4", "rejected": "44"},
]
CHAT = [
    {
        "prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "chosen": [{"role": "assistant", "content": "hello"}],
        "rejected": [{"role": "assistant", "content": "go away"}],
    }
]


def _recipe(algorithm: str) -> Recipe:
    return Recipe(
        algorithm=algorithm,
        model={"name": "builtin:tiny-arith"},
        data={"train": [{"source": "world"}]},
        training={"per_device_train_batch_size": 4, "max_steps": 1, "disable_tqdm": True},
    )


def _expected(tok, ex, side):
    return encode_prompt(tok, ex["prompt"]), encode_completion(tok, ex["prompt"], ex[side])


def _unpaired(rows):
    out = []
    for r in rows:
        out.append({"prompt": r["prompt"], "completion": r["chosen"], "label": True})
        out.append({"prompt": r["prompt"], "completion": r["rejected"], "label": False})
    return out


def _batch_sequences(algorithm, batch):
    """(prompt ids, completion ids) per row of the first collated batch, whatever the trainer's format."""
    seqs = []
    if algorithm in ("dpo", "ipo", "kto"):
        ids, cmask, amask = batch["input_ids"], batch["completion_mask"], batch["attention_mask"]
        for row, cm, am in zip(ids.tolist(), cmask.tolist(), amask.tolist()):
            real = [t for t, a in zip(row, am) if a]
            comp = [t for t, c in zip(row, cm) if c]
            seqs.append((real[: len(real) - len(comp)], comp))
    else:  # orpo / simpo: legacy rows
        for side in ("chosen", "rejected"):
            for row, lab, am in zip(
                batch[f"{side}_input_ids"].tolist(),
                batch[f"{side}_labels"].tolist(),
                batch[f"{side}_attention_mask"].tolist(),
            ):
                real = [t for t, a in zip(row, am) if a]
                comp = [t for t, label in zip(row, lab) if label != -100]
                seqs.append((real[: len(real) - len(comp)], comp))
    return seqs


@pytest.mark.parametrize("rows", [EXAMPLES, CHAT], ids=["text", "chat"])
@pytest.mark.parametrize("algorithm", ["dpo", "ipo", "kto", "orpo", "simpo"])
def test_every_trainer_sees_prefopt_token_ids(algorithm, rows, tmp_path):
    from prefopt.model.loading import build_builtin

    tok = load_tokenizer("builtin:tiny-arith")
    kind = "unpaired" if algorithm == "kto" else "paired"
    data = Dataset.from_list(_unpaired(rows) if kind == "unpaired" else rows)
    tokenized, _ = tokenize_dataset(data, kind, tok)
    trainer = build_trainer(
        _recipe(algorithm), build_builtin("tiny-arith", 0), tok, tokenized, None, output_dir=str(tmp_path)
    )
    batch = next(iter(trainer.get_train_dataloader()))
    seen = _batch_sequences(algorithm, batch)
    if kind == "unpaired":
        expected = [_expected(tok, {"prompt": r["prompt"], "c": r["completion"]}, "c") for r in data]
    elif algorithm in ("dpo", "ipo"):  # chosen rows then rejected rows
        expected = [_expected(tok, r, "chosen") for r in rows] + [_expected(tok, r, "rejected") for r in rows]
    else:
        expected = [_expected(tok, r, "chosen") for r in rows] + [_expected(tok, r, "rejected") for r in rows]
    # the train sampler may reorder rows: compare as multisets
    assert sorted(map(str, seen)) == sorted(map(str, expected))
    if algorithm in ("orpo", "simpo"):
        assert all(p[0] != tok.bos_token_id for p, _ in seen), "no BOS may be prepended"


def test_generation_and_evaluation_use_the_same_prompt_ids():
    from prefopt.model.generation import sample

    tok = load_tokenizer("builtin:tiny-arith")
    seen = []

    class Spy(torch.nn.Module):
        """A model that records the prompt ids generation feeds it, then emits EOS."""

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(
            self, input_ids, attention_mask, position_ids=None, past_key_values=None, use_cache=False
        ):
            if past_key_values is None:
                for row, m in zip(input_ids.tolist(), attention_mask.tolist()):
                    seen.append([t for t, a in zip(row, m) if a])
            logits = torch.full((input_ids.size(0), input_ids.size(1), 264), -1e9)
            logits[..., tok.eos_token_id] = 0
            return type("O", (), {"logits": logits, "past_key_values": ()})()

    sample(Spy(), tok, ["37+48=", "2+2="], num_samples=1)
    assert seen == [encode_prompt(tok, "37+48="), encode_prompt(tok, "2+2=")]


def test_sft_sequences_match_the_trainers():
    """The world's SFT warm start trains on exactly the ids the preference trainers see."""
    from prefopt import world

    tok = load_tokenizer("builtin:tiny-arith")
    ids, labels = world.sft_sequence(tok, "37+48=", "85")
    p, c = _expected(tok, EXAMPLES[0], "chosen")
    assert ids == p + c
    assert labels == [-100] * len(p) + c
    assert c[-1] == tok.eos_token_id and p[0] != tok.bos_token_id
