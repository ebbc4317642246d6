"""``prefopt data generate --config GEN.yaml``: the config schema, its checks, and the run.

A generation config names where the prompts come from, the policy that answers them, how it samples,
the judge, the pairing and the output::

    seed: 42
    prompts: {source: world, task: arith, size: 4000}     # any data source (its prompt column) ...
    # prompts: {file: prompts.txt}                        # ... or a file: one prompt per line, or JSONL
    model: {name: world:arith}                            # a recipe's model: block (world:, builtin:, a path)
    generation: {k: 4, temperature: [1.0], max_new_tokens: 8, engine: transformers}
    judge: {type: callable, function: "prefopt.world:TASKS.arith.reward"}
    pairing: best_vs_worst                                # best_vs_random | all_above_margin | unpaired
    output: data/arith-generated.jsonl

Everything a user can get wrong is checked by :func:`load_generate_config` and :func:`preflight`
before any model loads, and refused with exit 2 naming the file and the key: unknown keys, a missing
judge or output, an unknown judge type, engine or pairing, ``k < 2`` for a pairing, a prompts file
that is missing or empty, a reward model whose checkpoint has no one-logit head, a callable that
cannot be imported, the vllm engine without vllm.

**A judge that raises** during the run stops it with exit 2: the message names the config file, the
judge's key (``judge`` or ``judge.judges[i]``) and the index of the prompt it failed on (prefopt
re-runs a failing batch item by item to find it). Scores that are merely unusable (``None``, NaN)
are not errors: they are counted as ``judge_failed`` in the drop report. Every chunk of prompts
finished before the failure is in the state file, so the rerun after the fix resumes there.

Beside the output (``OUT``): ``OUT.report.json`` (the drop report, the run's counts and the judge
figures: length bias, and for a pairwise judge its consistency; agreement with ``check_judges``)
and ``OUT.state.jsonl`` (the resumable state: a killed run started again skips finished prompts).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from prefopt.config.recipe import ModelSection, SourceSection, apply_overrides, read_yaml
from prefopt.config.schema import StrictModel, validate
from prefopt.core.errors import PrefoptError, did_you_mean
from prefopt.data.report import REASONS, DropReport
from prefopt.data.transforms import load_source
from prefopt.judge.agree import agreement_report
from prefopt.judge.base import JudgeSection, build_judge, parse_judge_config
from prefopt.judge.callable_judge import resolve_function
from prefopt.judge.pipeline import PAIRINGS, GenerationResult, generate_preferences
from prefopt.judge.reward_model import check_head, resolve_path
from prefopt.model.engines import GenerationSection, build_engine, engine_names
from prefopt.model.engines.base import temperatures_of
from prefopt.model.engines.vllm import import_vllm
from prefopt.model.loading import check_model_source, load_model, load_trained

PROMPT_FIELDS = ("prompt", "instruction", "question")
"""Columns a JSONL/JSON prompts file may hold its prompt in (the first one present is used)."""
REASONS.setdefault("duplicate_prompt", "the prompt was read before (prompts.dedupe: true)")


# ------------------------------------------------------------------------------------------ schema
class PromptsSection(StrictModel):
    """Where the prompts come from: ``file`` (a prompts file) or ``source`` (a data source, as in a
    recipe's ``data.train`` list; the other keys are that source's options). Prompts are taken in the
    order read; repeats are dropped (``dedupe``), since with per-sample seeding a repeated prompt
    would get the same replies again."""

    model_config = ConfigDict(extra="allow", validate_assignment=True, allow_inf_nan=False)

    file: str | None = Field(
        None,
        description="A .txt file (one prompt per line; blank lines skipped) or .jsonl/.json with a prompt column "
        f"({', '.join(PROMPT_FIELDS)}; text or a message list). Relative to the config's folder.",
    )
    field: str | None = Field(None, description="The prompt column of a JSONL/JSON prompts file.")
    source: str | None = Field(None, description="A data source name (see `prefopt data sources`).")
    path: str | None = Field(None, description="The source's path (relative to the config's folder).")
    split: str | None = None
    max_rows: int | None = Field(None, gt=0, description="Rows the source reads at most.")
    max_prompts: int | None = Field(None, gt=0, description="Use at most this many prompts (the first).")
    dedupe: bool = Field(True, description="Drop repeated prompts (counted in the report).")

    @model_validator(mode="after")
    def _one_origin(self):
        if (self.file is None) == (self.source is None):
            raise ValueError(
                "give exactly one of prompts.file (a prompts file) and prompts.source (a data source)"
            )
        if self.file is not None and self.model_extra:
            name = sorted(self.model_extra)[0]
            raise ValueError(f'unknown key "prompts.{name}" for a prompts file (source options need source:)')
        return self


class GenerationBlock(GenerationSection):
    """The ``generation:`` block: the engine's settings plus what to sample."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    k: int = Field(4, description="Replies per prompt and temperature (≥ 2 for pairs).")
    temperature: float | list[float] = Field(
        1.0, description="A temperature or a list (k replies at each); 0 is greedy."
    )
    max_new_tokens: int = Field(64, gt=0, description="New tokens per reply at most.")
    chunk_size: int = Field(64, gt=0, description="Prompts per chunk; the state file is written after each.")


class GenerateConfig(StrictModel):
    """A ``prefopt data generate`` config (see the module docstring)."""

    seed: int = Field(42, description="Seeds every sample's random stream and the random pairings.")
    prompts: PromptsSection
    model: ModelSection
    generation: GenerationBlock = Field(default_factory=GenerationBlock)
    judge: Any = Field(None, description="The judge block (see docs/judges.md).")
    pairing: Literal["best_vs_worst", "best_vs_random", "all_above_margin", "unpaired"] = "best_vs_worst"
    margin: float = Field(0.0, ge=0, description="Score pairs must differ by more than this.")
    threshold: float | None = Field(
        None, description="pairing: unpaired — a reply scoring ≥ this is desirable."
    )
    output: str = Field(..., description="The canonical JSONL to write (relative to the config's folder).")
    state: str | None = Field(None, description="The resumable state file (default: OUTPUT.state.jsonl).")
    report: str | None = Field(None, description="The report (default: OUTPUT.report.json).")
    check_judges: list[Any] = Field(
        default_factory=list,
        description="More judges to judge the made pairs with: their agreement and κ with the data's "
        "judge, and their length bias, go into the report.",
    )
    _base: Path = PrivateAttr(default_factory=Path.cwd)  # the config's folder
    _judge_cfg: Any = PrivateAttr(None)  # the validated judge block
    _check_cfgs: list = PrivateAttr(default_factory=list)


# ------------------------------------------------------------------------------------------ loading
@contextmanager
def in_file(path: str | Path) -> Iterator[None]:
    """Name the config file in every PrefoptError raised inside (unless it is named already)."""
    try:
        yield
    except PrefoptError as err:
        if str(path) in str(err):
            raise
        raise PrefoptError(str(err), where=str(path)) from None


def _resolve(base: Path, value: str | None) -> str | None:
    if value is None:
        return None
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p))


def load_generate_config(path: str | Path, overrides: list[str] | None = None) -> GenerateConfig:
    """Read and validate a generation config; paths are made absolute against its folder. Nothing is
    loaded (no data, no model)."""
    where = str(path)
    raw = read_yaml(path)
    raw = apply_overrides(raw, overrides or [])
    cfg = validate(GenerateConfig, raw, where, choices={"pairing": PAIRINGS})
    base = Path(path).resolve().parent
    cfg._base = base
    cfg.output = _resolve(base, cfg.output)
    cfg.state = _resolve(base, cfg.state) or cfg.output + ".state.jsonl"
    cfg.report = _resolve(base, cfg.report) or cfg.output + ".report.json"
    if cfg.prompts.file is not None:
        cfg.prompts.file = _resolve(base, cfg.prompts.file)
    check_config(cfg, where)
    return cfg


def check_config(cfg: GenerateConfig, where: str) -> None:
    """The checks the schema cannot express, each naming the key."""
    gen = cfg.generation
    names = engine_names()
    if gen.engine not in names:
        raise PrefoptError(
            f'"generation.engine" = "{gen.engine}": unknown generation engine.{did_you_mean(gen.engine, names)}',
            where=where,
            fix=f"choose one of: {', '.join(names)}.",
        )
    if cfg.pairing != "unpaired" and gen.k < 2:
        raise PrefoptError(
            f'"generation.k" = {gen.k}: pairing {cfg.pairing} needs two replies per prompt to make a pair.',
            where=where,
            fix="use k ≥ 2 (or pairing: unpaired, which labels single replies by a threshold).",
        )
    if gen.k < 1:
        raise PrefoptError(f'"generation.k" = {gen.k}: use k ≥ 1.', where=where)
    with in_file(where):
        temperatures_of(gen.temperature)
    if cfg.pairing == "unpaired" and cfg.threshold is None:
        raise PrefoptError(
            '"threshold" is missing: pairing unpaired labels each reply by its score.',
            where=where,
            fix="set threshold (a reply scoring ≥ it is desirable), e.g. 0.5 for the world's 0/1 reward.",
        )
    with in_file(where):
        judge_cfg = parse_judge_config(cfg.judge, "judge")
        checks = [parse_judge_config(j, f"check_judges[{i}]") for i, j in enumerate(cfg.check_judges)]
    if cfg.pairing == "unpaired" and judge_cfg.type == "llm":
        raise PrefoptError(
            '"pairing" = "unpaired": the llm judge gives verdicts on pairs, not scores, so single replies '
            "cannot be labelled by a threshold.",
            where=where,
            fix="use a score judge (callable, reward_model, ensemble) for unpaired rows, or a paired pairing.",
        )
    cfg._judge_cfg, cfg._check_cfgs = judge_cfg, checks
    out = Path(cfg.output)
    if out.is_dir():
        raise PrefoptError(
            f'"output" = {cfg.output} is a directory; it must name the JSONL file to write.',
            where=where,
            fix=f"give a file name, e.g. output: {out / 'generated.jsonl'}.",
        )


def preflight_judge(cfg: JudgeSection, where: str, base_dir: str | None) -> None:
    """What can be checked of a judge without loading its weights: a callable's function is importable,
    a reward model's checkpoint has a one-logit head (read from its config), recursively for ensembles."""
    kind = cfg.type
    if kind == "callable":
        resolve_function(cfg.function, where=f"{where}.function")
    elif kind == "reward_model":
        key = f"{where}.path"
        path = resolve_path(cfg.path, where=key, base_dir=base_dir, revision=cfg.revision)
        check_head(path, where=key, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    elif kind == "ensemble":
        for i, member in enumerate(cfg.judges):
            preflight_judge(
                parse_judge_config(member, f"{where}.judges[{i}]"), f"{where}.judges[{i}]", base_dir
            )


def preflight(cfg: GenerateConfig, where: str) -> None:
    """The checks that need the file system or imports, before any model loads: the judges, the vllm
    engine's import, the policy's source (pickle weights, custom code)."""
    base = str(cfg._base)
    with in_file(where):
        preflight_judge(cfg._judge_cfg, "judge", base)
        for i, c in enumerate(cfg._check_cfgs):
            preflight_judge(c, f"check_judges[{i}]", base)
        if cfg.generation.engine == "vllm":
            import_vllm()
        if not _is_run_dir(cfg.model.name):
            check_model_source(_model_section(cfg))


# ------------------------------------------------------------------------------------------ prompts
def _prompt_of(row: Any, field: str | None, where: str) -> Any:
    if isinstance(row, str):
        return row
    if not isinstance(row, dict):
        raise PrefoptError(f"{where}: a row is a {type(row).__name__}, not an object with a prompt.")
    keys = [field] if field else [k for k in PROMPT_FIELDS if k in row]
    if not keys or keys[0] not in row:
        raise PrefoptError(
            f"{where}: the row has no {field or ' / '.join(PROMPT_FIELDS)} column (it has: {', '.join(map(str, row))}).",
            fix="name the prompt column with prompts.field.",
        )
    return row[keys[0]]


def read_prompts_file(path: str, field: str | None = None) -> list[Any]:
    """Prompts from a .txt (one per line) or .jsonl/.json file (a prompt column, text or messages)."""
    p = Path(path)
    if not p.is_file():
        raise PrefoptError(
            f"the prompts file {p} does not exist." if not p.exists() else f"{p} is not a file.",
            where="prompts.file",
            fix="check the path (relative paths are read from the config's folder).",
        )
    text = p.read_text(encoding="utf-8-sig")
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise PrefoptError(f"{p} is not JSON ({err}).", where="prompts.file") from None
        rows = data if isinstance(data, list) else [data]
        return [_prompt_of(r, field, f"{p} item {i}") for i, r in enumerate(rows)]
    if p.suffix.lower() == ".jsonl":
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise PrefoptError(
                    f"line {n} of {p} is not JSON ({err.msg}).", where="prompts.file"
                ) from None
            out.append(_prompt_of(row, field, f"line {n} of {p}"))
        return out
    return [line for line in text.splitlines() if line.strip()]


def read_prompts(cfg: GenerateConfig, report: DropReport) -> list[Any]:
    """The prompts a config names, repeats dropped (counted), capped at ``max_prompts``. An empty
    result is an error naming the origin."""
    ps = cfg.prompts
    if ps.file is not None:
        prompts = read_prompts_file(ps.file, ps.field)
        origin = f"prompts.file {ps.file}"
    else:
        fields = {"source": ps.source, "path": _resolve(cfg._base, ps.path) if ps.path else None}
        fields |= {"split": ps.split, "max_rows": ps.max_rows, **(ps.model_extra or {})}
        src = SourceSection(**{k: v for k, v in fields.items() if v is not None})
        ds = load_source(src, where="prompts", base_dir=cfg._base, seed=cfg.seed, report=report)
        prompts = list(ds["prompt"]) if len(ds) else []
        origin = f"prompts.source {ps.source}"
    n_read = len(prompts)
    if ps.dedupe:
        seen: set[str] = set()
        unique = []
        for i, p in enumerate(prompts):
            key = json.dumps(p, sort_keys=True, ensure_ascii=False)
            if key in seen:
                report.drop("duplicate_prompt", i, detail="a prompt seen earlier (index = row read)")
                continue
            seen.add(key)
            unique.append(p)
        prompts = unique
    if ps.max_prompts is not None:
        prompts = prompts[: ps.max_prompts]
    report.step("prompts", n_read, len(prompts), detail=f"from {origin}")
    if not prompts:
        raise PrefoptError(
            f"{origin} gave no prompts" + (f" ({n_read} read, all repeats)" if n_read else "") + ".",
            where="prompts",
            fix="give a file with at least one non-empty prompt, or a source with rows.",
        )
    return prompts


# ------------------------------------------------------------------------------------------ the run
def _is_run_dir(name: str) -> bool:
    p = Path(name).expanduser()
    return p.is_dir() and ((p / "model").is_dir() or (p / "adapter_config.json").exists())


def _model_section(cfg: GenerateConfig) -> ModelSection:
    name = cfg.model.name
    if name.startswith(("builtin:", "world:")):
        return cfg.model
    local = Path(name).expanduser()
    if not local.is_absolute() and (cfg._base / local).exists():
        return cfg.model.model_copy(update={"name": str(cfg._base / local)})
    return cfg.model


def load_policy(cfg: GenerateConfig):
    """``(model, tokenizer)`` of the config's policy: a run directory or adapter folder as
    ``prefopt train`` saved it, else a recipe ``model:`` block (builtin:, world:, a local path, a hub id)."""
    model_cfg = _model_section(cfg)
    if _is_run_dir(model_cfg.name):
        model, tok = load_trained(model_cfg.name)
    else:
        model, tok = load_model(model_cfg, seed=cfg.seed, for_training=False)
    return model.eval(), tok


def run_generate(cfg: GenerateConfig, where: str) -> tuple[GenerationResult, dict[str, Any]]:
    """Check the judges and the policy's source, read the prompts, load the judge and the policy,
    generate, judge and pair.
    Returns the result and the report written beside the output."""
    base = str(cfg._base)
    preflight(cfg, where)
    report = DropReport(where=f"prompts ({where})")
    with in_file(where):
        prompts = read_prompts(cfg, report)
    with in_file(where):
        judge = build_judge(cfg._judge_cfg, where="judge", base_dir=base)
        checks = [
            build_judge(c, where=f"check_judges[{i}]", base_dir=base) for i, c in enumerate(cfg._check_cfgs)
        ]
        model, tok = load_policy(cfg)
        gen = cfg.generation
        engine = build_engine(gen.engine, model=model, tokenizer=tok, **gen.engine_options())
        result = generate_preferences(
            prompts,
            engine,
            judge,
            k=gen.k,
            temperature=gen.temperature,
            max_new_tokens=gen.max_new_tokens,
            seed=cfg.seed,
            pairing=cfg.pairing,
            margin=cfg.margin,
            threshold=cfg.threshold,
            state=cfg.state,
            chunk_size=gen.chunk_size,
            source=f"generated:{judge.name}",
        )
        figures = judge_figures(result, judge, checks, seed=cfg.seed)
    out = {
        "config": where,
        "output": cfg.output,
        "state": cfg.state,
        "kind": result.kind,
        "stats": result.stats,
        "judge": judge.describe(),
        "engine": engine.describe(),
        "figures": figures,
        "prompts_report": report.as_dict(),
        "drops": result.report.as_dict(),
    }
    return result, out


def judge_figures(result: GenerationResult, judge, checks: list, *, seed: int = 0) -> dict[str, Any]:
    """The figures generate's report prints about the data's judge: how often the longer reply was
    chosen, a pairwise judge's consistency over its comparisons, and — with ``check_judges`` — the
    agreement table of every judge on the made pairs (the data's judge says the chosen side)."""
    out: dict[str, Any] = {}
    comps = result.stats.get("comparisons")
    if comps:
        decided = sum(comps.get(k, 0) for k in ("a", "b", "tie"))
        incons = comps.get("inconsistent", 0)
        out["pairwise_consistency"] = decided / (decided + incons) if decided + incons else float("nan")
        out["comparisons"] = comps
    if result.kind != "paired" or not result.rows:
        return out
    prompts = [r["prompt"] for r in result.rows]
    chosen = [r["chosen"] for r in result.rows]
    rejected = [r["rejected"] for r in result.rows]
    out["agreement"] = agreement_report(
        {c.name: c for c in checks}, prompts, chosen, rejected, labels_judge=judge.name, seed=seed
    )
    return out
