"""Judges on a set of labelled pairs: ``prefopt data agree`` and the judge figures of ``data generate``.

A pair is (prompt, chosen, rejected): the chosen side is its label — a person's preference in a
human-labelled set, or the verdict of the judge that made the data. Each pair is shown to the judges
with the chosen reply in position a or b by a seeded coin, so the labels are balanced between a and b
and a judge that follows a position cannot look accurate. On those pairs
:func:`~prefopt.judge.agreement.agreement_table` gives, per judge, its counts, its accuracy against
the labels, its length bias (how often the longer reply wins) and, for an LLM judge, its position
bias; per pair of judges, agreement and Cohen's κ.

The judges config of ``prefopt data agree --config`` holds ``judges:`` (a list of judge blocks, or a
mapping name → block) and optionally ``pairs:`` (the file) and ``human: true``.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefopt.config.recipe import read_yaml, safe_load
from prefopt.core.errors import PrefoptError
from prefopt.judge.agreement import agreement_table
from prefopt.judge.base import Judge, build_judge, parse_judge_config


def reply_text(reply: Any) -> str:
    """A reply as text: a string, or the content of a message list."""
    if isinstance(reply, str):
        return reply
    if isinstance(reply, list):
        return "".join(str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in reply)
    return str(reply)


def text_length(reply: Any) -> int:
    return len(reply_text(reply))


def positions(n: int, seed: int) -> list[bool]:
    """For each pair: True when the chosen reply goes in position b (a seeded coin per pair)."""
    rng = random.Random(f"agree|{seed}")
    return [rng.random() < 0.5 for _ in range(n)]


def agreement_report(
    judges: dict[str, Judge],
    prompts: Sequence[Any],
    chosen: Sequence[Any],
    rejected: Sequence[Any],
    *,
    labels_judge: str | None = None,
    human: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Judge every pair with every judge and tabulate (see the module docstring).

    ``labels_judge`` names the labels as one more judge (the one that made the data), so κ between it
    and each other judge is reported; ``human`` reports each judge's accuracy against the labels."""
    if not (len(prompts) == len(chosen) == len(rejected)):
        raise ValueError("prompts, chosen and rejected differ in length")
    swap = positions(len(prompts), seed)
    a = [r if s else c for c, r, s in zip(chosen, rejected, swap)]
    b = [c if s else r for c, r, s in zip(chosen, rejected, swap)]
    labels = ["b" if s else "a" for s in swap]
    verdicts: dict[str, Sequence[Any]] = {}
    if labels_judge is not None:
        verdicts[labels_judge] = labels
    for name, judge in judges.items():
        verdicts[name] = judge.compare(list(prompts), a, b)
    table = agreement_table(
        verdicts, human=labels if human else None, replies_a=a, replies_b=b, length=text_length
    )
    table["n_pairs"] = len(prompts)
    table["chosen_in_position_b"] = sum(swap)
    table["labels"] = "human" if human else (f"judge {labels_judge}" if labels_judge else None)
    table["judge_configs"] = {name: j.describe() for name, j in judges.items()}
    return table


# ------------------------------------------------------------------------------------------ inputs
def unique_names(judges: list[tuple[str | None, Judge]]) -> dict[str, Judge]:
    """name → judge, with ``#2``, ``#3`` appended to repeated names."""
    out: dict[str, Judge] = {}
    for given, j in judges:
        name = given or j.name
        base, n = name, 2
        while name in out:
            name, n = f"{base}#{n}", n + 1
        out[name] = j
    return out


Block = tuple[str | None, Any, str, str | None]
"""A judge block as given: (its name or None, the block, where it was written, the folder its paths
are relative to)."""


def judge_blocks(config: str | None, inline: Sequence[str]) -> tuple[list[Block], dict]:
    """The judge blocks of ``--config FILE`` (``judges:`` list or mapping) and of each ``--judge``
    (a YAML mapping, or the path of a YAML file holding one). Returns ``[(name, block, where)]`` and
    the config's other keys."""
    blocks: list[Block] = []
    rest: dict[str, Any] = {}
    if config is not None:
        raw = read_yaml(config)
        unknown = sorted(set(raw) - {"judges", "pairs", "human", "seed", "max_pairs"})
        if unknown:
            raise PrefoptError(
                f'unknown key "{unknown[0]}".',
                where=config,
                fix="a judges config holds judges (a list or a name → block mapping), and optionally pairs, "
                "human, seed, max_pairs.",
            )
        js = raw.get("judges")
        base = str(Path(config).resolve().parent)
        if isinstance(js, dict):
            blocks += [(str(k), v, f"{config}: judges.{k}", base) for k, v in js.items()]
        elif isinstance(js, list):
            blocks += [(None, v, f"{config}: judges[{i}]", base) for i, v in enumerate(js)]
        elif js is not None:
            raise PrefoptError(
                "judges must be a list of judge blocks or a mapping.", where=f"{config}: judges"
            )
        rest = {k: v for k, v in raw.items() if k != "judges"}
    for i, text in enumerate(inline):
        where, base_dir = f"--judge #{i + 1}", None
        p = Path(text).expanduser()
        if p.suffix.lower() in (".yaml", ".yml") or p.is_file():
            if not p.is_file():
                raise PrefoptError(
                    f"the judge file {p} does not exist.",
                    where=where,
                    fix="give the path of a YAML file holding a judge block, or the block itself as YAML.",
                )
            data = read_yaml(p)
            where, base_dir = str(p), str(p.resolve().parent)
            data = data.get("judge", data) if isinstance(data, dict) else data
        else:
            data = safe_load(text, where=where, what="judge block")
        blocks.append((None, data, where, base_dir))
    return blocks, rest


def check_blocks(blocks: list[Block], need: int = 1) -> list:
    """Validate every judge block (nothing loads); at least ``need`` of them."""
    if len(blocks) < need:
        raise PrefoptError(
            f"{len(blocks)} judge(s) given; agreement needs at least {need}.",
            where="prefopt data agree",
            fix="name the judges in --config FILE (judges: [...]) or with --judge '{type: ...}' (repeatable).",
        )
    out = []
    for _, block, where, _ in blocks:
        try:
            out.append(parse_judge_config(block, "judge"))
        except PrefoptError as err:
            raise PrefoptError(str(err), where=where) from None
    return out


def build_judges(blocks: list[Block], cfgs: list) -> dict[str, Judge]:
    """The judges of checked blocks (a reward model's head is checked before its weights load)."""
    judges = []
    for (name, _, where, base_dir), cfg in zip(blocks, cfgs):
        try:
            judges.append((name, build_judge(cfg, where="judge", base_dir=base_dir)))
        except PrefoptError as err:
            raise PrefoptError(str(err), where=where) from None
    return unique_names(judges)


def read_pairs(path: str | Path, *, max_pairs: int | None = None) -> tuple[list, list, list]:
    """(prompts, chosen, rejected) of a JSONL / JSON file of canonical paired rows."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise PrefoptError(
            f"the pairs file {p} does not exist." if not p.exists() else f"{p} is not a file.",
            where="--pairs",
            fix="give a JSONL file of {prompt, chosen, rejected} rows (e.g. what `prefopt data generate` wrote).",
        )
    text = p.read_text(encoding="utf-8-sig")
    if p.suffix.lower() == ".json":
        rows = json.loads(text)
        numbered = list(enumerate(rows if isinstance(rows, list) else [rows], 1))
    else:
        numbered = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                numbered.append((n, json.loads(line)))
            except json.JSONDecodeError as err:
                raise PrefoptError(f"line {n} is not JSON ({err.msg}).", where=str(p)) from None
    prompts, chosen, rejected = [], [], []
    for n, row in numbered:
        missing = [k for k in ("prompt", "chosen", "rejected") if not isinstance(row, dict) or k not in row]
        if missing:
            raise PrefoptError(
                f"line {n} has no {', '.join(missing)}: a pairs file holds paired rows.",
                where=str(p),
                fix="give paired rows {prompt, chosen, rejected}; convert other formats with `prefopt data convert`.",
            )
        prompts.append(row["prompt"])
        chosen.append(row["chosen"])
        rejected.append(row["rejected"])
        if max_pairs is not None and len(prompts) >= max_pairs:
            break
    if not prompts:
        raise PrefoptError(f"{p} holds no pairs.", where="--pairs", fix="give a file with at least one pair.")
    return prompts, chosen, rejected


# ------------------------------------------------------------------------------------------ printing
def _f(x: Any) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.3f}"
    return str(x)


def format_agreement(table: dict[str, Any]) -> str:
    """The agreement table as text: one line per judge, one per pair of judges."""
    lines = [
        f"{table.get('n_pairs', '?')} pairs (chosen reply in position b for {table.get('chosen_in_position_b', '?')}; "
        f"labels: {table.get('labels') or 'none'})"
    ]
    lines.append(
        f"{'judge':24s} {'a':>5s} {'b':>5s} {'tie':>5s} {'none':>5s} {'acc':>6s} {'longer':>7s} {'pos A':>6s}"
    )
    for name, e in table["judges"].items():
        c = e["counts"]
        none = sum(v for k, v in c.items() if k not in ("a", "b", "tie"))
        acc = (e.get("human") or {}).get("accuracy")
        longer = (e.get("length_bias") or {}).get("longer_win_rate")
        pos = (e.get("position_bias") or {}).get("first_position_rate")
        lines.append(
            f"{name[:24]:24s} {c['a']:5d} {c['b']:5d} {c['tie']:5d} {none:5d} {_f(acc):>6s} {_f(longer):>7s} {_f(pos):>6s}"
        )
    for pair, s in table["pairs"].items():
        lines.append(
            f"{pair}: agreement {_f(s.get('agreement'))}, Cohen's κ {_f(s.get('kappa'))} on {s['n']} pairs"
        )
    lines.append(
        "acc: accuracy against the labels (decided pairs); longer: how often the longer reply wins; "
        "pos A: share of single-order LLM answers naming position A (0.5 = no position bias)."
    )
    return "\n".join(lines)
