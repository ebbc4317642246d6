#!/usr/bin/env python
"""Regenerate the smoke-test fixtures in this folder (deterministic: same output on every run).

Two kinds of file live here, one per data source that `prefopt train --smoke` swaps in
(see prefopt/config/smoke.py and SOURCES.md):

* synthetic rows in the exact published schema of datasets that have no real sample in the repository
  (UltraFeedback in its H4 / TRL / Argilla / raw OpenBMB shapes, trl-lib/kto-mix-14k). The text is made
  up and short (the builtin model's tokenizer is byte-level: one token per byte); the structure, key
  names and value types follow /work/shared/reference/datasets.md §1–§5, quirks included (score ties,
  "N/A" placeholders, string ratings, a truthful_qa row);
* the 32 shortest rows of real public samples (HH-RLHF, LLaMA-Factory ShareGPT ranking and KTO demos,
  torchtune's stack-exchange-paired slice), copied unchanged, in their original order. Pass --shared DIR (the folder holding
  those samples) to refresh them; without it they are left as they are.

    python prefopt/smoke_fixtures/generate.py [--shared ../shared/data]
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
N_REAL = 32

# (prompt, better answer, worse answer): short, so a prompt and a reply fit in 128 byte-level tokens.
TRIPLES = [
    ("What is 2 + 3?", "2 + 3 = 5.", "It is 6."),
    ("Name a primary color.", "Red is a primary color.", "Purple."),
    ("Capital of France?", "Paris.", "Lyon, I think."),
    ("Spell 'cat' backwards.", "tac", "act"),
    ("Is 7 a prime number?", "Yes, 7 is prime.", "No."),
    ("How many legs has a spider?", "Eight.", "Six legs."),
    ("Opposite of 'hot'?", "Cold.", "Warm."),
    ("What is 10 / 2?", "10 / 2 = 5.", "It is 20."),
    ("Which planet is largest?", "Jupiter.", "Mars is."),
    ("Boiling point of water (C)?", "100 degrees C at sea level.", "50 C."),
    ("Translate 'hola' to English.", "Hello.", "Goodbye."),
    ("First letter of 'apple'?", "A.", "P."),
    ("What is 4 squared?", "16.", "8."),
    ("Plural of 'mouse'?", "Mice.", "Mouses."),
    ("Color of a clear sky?", "Blue.", "Green."),
    ("How many days in a week?", "Seven.", "Five."),
    ("Largest ocean?", "The Pacific.", "The Arctic."),
    ("What gas do plants absorb?", "Carbon dioxide.", "Helium."),
    ("What is 9 - 4?", "5.", "13."),
    ("Author of Hamlet?", "Shakespeare.", "Dickens."),
    ("Freezing point of water (C)?", "0 degrees C.", "10 degrees."),
    ("Sum of angles in a triangle?", "180 degrees.", "360 degrees."),
    ("Chemical symbol for gold?", "Au.", "Gd."),
    ("What is 3 x 3?", "9.", "6."),
    ("Fastest land animal?", "The cheetah.", "The horse."),
    ("Rhyme with 'cat'.", "Hat.", "Dog."),
    ("How many continents?", "Seven.", "Nine."),
    ("Smallest prime number?", "2.", "1."),
    ("Tallest mountain?", "Mount Everest.", "Mont Blanc."),
    ("What is 12 / 4?", "3.", "4."),
    ("Past tense of 'go'?", "Went.", "Goed."),
    ("Water's chemical formula?", "H2O.", "CO2."),
    ("Hours in a day?", "24.", "12."),
    ("Opposite of 'up'?", "Down.", "Left."),
    ("What is 5 + 5?", "10.", "55."),
    ("Color of grass?", "Green.", "Red."),
]
MODELS = ["gpt-4", "llama-2-13b-chat", "alpaca-7b", "falcon-40b-instruct"]


def msgs(*turns: tuple[str, str]) -> list[dict[str, str]]:
    # Hub Arrow order: content before role (datasets.md: "never depend on key order")
    return [{"content": text, "role": role} for role, text in turns]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def ultrafeedback_h4() -> list[dict]:
    rows = []
    for i, (p, good, bad) in enumerate(TRIPLES):
        chosen = msgs(("user", p), ("assistant", good))
        rejected = msgs(("user", p), ("assistant", bad))
        sc, sr = 8.0 + (i % 3) * 0.5, 4.5 + (i % 4)
        if i == 5:  # the H4 build allows score ties (its re-draw compares (score, text, model) tuples)
            sc = sr = 7.5
        if i == 9:  # fewer than two completions: both sides get the literal "N/A"
            chosen = msgs(("user", p), ("assistant", "N/A"))
            rejected = msgs(("user", p), ("assistant", "N/A"))
            sc = sr = 1.0
        rows.append(
            {
                "prompt": p,
                "prompt_id": sha(p),
                "chosen": chosen,
                "rejected": rejected,
                "messages": chosen,
                "score_chosen": sc,
                "score_rejected": sr,
            }
        )
    return rows


def ultrafeedback_trl() -> list[dict]:
    return [
        {
            "chosen": r["chosen"],
            "rejected": r["rejected"],
            "score_chosen": r["score_chosen"],
            "score_rejected": r["score_rejected"],
        }
        for r in ultrafeedback_h4()
    ]


def ultrafeedback_argilla() -> list[dict]:
    subsets = ["evol_instruct", "false_qa", "flan", "sharegpt", "ultrachat"]
    rows = []
    for i, (p, good, bad) in enumerate(TRIPLES):
        # one truthful_qa row: the cleaned set has none, the reader drops it (drop_truthful_qa)
        subset = "truthful_qa" if i == 7 else subsets[i % len(subsets)]
        rows.append(
            {
                "source": subset,
                "prompt": p,
                "chosen": msgs(("user", p), ("assistant", good)),
                "chosen-rating": [5.0, 4.75, 4.5][i % 3],
                "chosen-model": MODELS[i % 4],
                "rejected": msgs(("user", p), ("assistant", bad)),
                "rejected-rating": [1.25, 2.0, 3.5][i % 3],
                "rejected-model": MODELS[(i + 2) % 4],
            }
        )
    return rows


def _annotation(rating: str, typed: bool) -> dict:
    if not typed:
        return {"Rating": rating, "Rationale": "Fixture rationale."}
    return {
        "Type": ["1", "2"],
        "Rationale": "Fixture rationale.",
        "Rating": rating,
        "Rationale For Rating": "Fixture rationale for the rating.",
    }


def ultrafeedback_raw() -> list[dict]:
    rows = []
    for i, (p, good, bad) in enumerate(TRIPLES):
        answers = [
            (good, "5", 9.0),
            (bad, "2", 4.0),
            (good.rstrip(".") + ", I believe.", "4", 7.5),
            (bad + " Not sure.", "N/A" if i % 5 == 0 else "1", 2.0),
        ]
        comps = []
        for j, (text, rating, overall) in enumerate(answers):
            comps.append(
                {
                    "model": MODELS[(i + j) % 4],
                    "principle": ["helpfulness", "truthfulness", "honesty", "verbalized_calibration"][j],
                    "custom_system_prompt": "You are a helpful assistant.",
                    "response": text,
                    "annotations": {
                        "instruction_following": _annotation(rating, False),
                        "honesty": _annotation(rating, False),
                        "truthfulness": _annotation(rating, True),
                        "helpfulness": _annotation(rating, True),
                    },
                    "critique": "Fixture critique.",
                    "overall_score": overall,
                    "fine-grained_score": 4.5 if rating == "5" else 2.0,
                }
            )
        rows.append(
            {
                "source": ["evol_instruct", "flan", "sharegpt", "ultrachat"][i % 4],
                "instruction": p,
                "models": [c["model"] for c in comps],
                "correct_answers": ["None"],
                "incorrect_answers": ["None"],
                "completions": comps,
            }
        )
    return rows


def kto_mix() -> list[dict]:
    rows = []
    for p, good, bad in TRIPLES[: len(TRIPLES) // 2]:  # every pair gives one True and one False row
        prompt = msgs(("user", p))
        rows.append({"prompt": prompt, "completion": msgs(("assistant", good)), "label": True})
        rows.append({"prompt": prompt, "completion": msgs(("assistant", bad)), "label": False})
    return rows


SYNTHETIC = {
    "ultrafeedback_h4.jsonl": ultrafeedback_h4,
    "ultrafeedback_trl.jsonl": ultrafeedback_trl,
    "ultrafeedback_argilla.jsonl": ultrafeedback_argilla,
    "ultrafeedback_raw.jsonl": ultrafeedback_raw,
    "kto_mix.jsonl": kto_mix,
}
# fixture name → file in the shared samples folder (real rows, copied unchanged)
REAL = {
    "hh_rlhf.jsonl": "anthropics_hh-rlhf__harmless-base__test.jsonl",
    "sharegpt_ranking.json": "hiyouga_LLaMA-Factory__dpo_en_demo.json",
    "messages_label.json": "hiyouga_LLaMA-Factory__kto_en_demo.json",
    "stack_exchange.json": "pytorch_torchtune__stack_exchange_paired_tiny.json",
}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _shortest(items: list, size) -> list:
    """The N_REAL shortest items, in their original order (short rows fit the smoke's 128 tokens)."""
    keep = sorted(sorted(range(len(items)), key=lambda i: (size(items[i]), i))[:N_REAL])
    return [items[i] for i in keep]


def copy_real(shared: Path) -> None:
    for name, src in REAL.items():
        text = (shared / src).read_text(encoding="utf-8")
        if src.endswith(".jsonl"):
            lines = _shortest(text.splitlines(keepends=True), len)
            (HERE / name).write_text("".join(lines), encoding="utf-8")
        else:
            rows = _shortest(json.loads(text), lambda r: len(json.dumps(r, ensure_ascii=False)))
            (HERE / name).write_text(json.dumps(rows, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--shared", type=Path, help="folder with the real samples (refreshes the copied fixtures)"
    )
    args = ap.parse_args()
    for name, make in SYNTHETIC.items():
        write_jsonl(HERE / name, make())
    if args.shared:
        copy_real(args.shared)


if __name__ == "__main__":
    main()
