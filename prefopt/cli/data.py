"""``prefopt data convert | inspect | sources | generate | agree``.

``convert`` runs exactly what a recipe's ``data:`` block runs (same source, same checks, same
transforms) and writes canonical JSONL; ``inspect`` summarises a file; ``sources`` lists the
readers and their options; ``generate`` makes preference data with a policy and a judge
(:mod:`prefopt.judge.generate_config`); ``agree`` checks judges against each other and against labels
(:mod:`prefopt.judge.agree`). Handlers return an exit code; user errors are raised as
:class:`~prefopt.core.errors.PrefoptError` for the top-level CLI to print (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from prefopt.core.errors import PrefoptError

DEFAULT_TOKENIZER = "builtin:tiny-arith"


def add_data_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``data convert``, ``data inspect`` and ``data sources`` to an argparse subparsers object."""
    data = subparsers.add_parser("data", help="convert, inspect and list preference datasets")
    sub = data.add_subparsers(dest="data_command", required=True)

    p = sub.add_parser(
        "convert",
        help="read a dataset with a source and write canonical JSONL",
        description="Read --input with --source, check every row (drops are counted in the report), convert to "
        "--to paired|unpaired and write JSONL (or .parquet).",
    )
    p.add_argument(
        "--source",
        default=None,
        help="source name (see `prefopt data sources`); default: recognised from the first rows",
    )
    p.add_argument("--input", required=True, help="local file/directory or hub dataset id")
    p.add_argument("--split", default=None, help="split (hub datasets and dataset directories)")
    p.add_argument("--to", required=True, choices=("paired", "unpaired"), help="kind of rows to write")
    p.add_argument("--output", required=True, help="output .jsonl (or .parquet)")
    p.add_argument("--report", default=None, help="write the drop report (JSON) here")
    p.add_argument("--strict", action="store_true", help="exit with an error if any row was dropped")
    p.add_argument(
        "--option",
        "-o",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a source option (YAML value), e.g. -o binarize=best_vs_worst -o 'columns={prompt: q}'",
    )
    p.add_argument("--max-rows", type=int, default=None, help="read at most this many rows")
    p.add_argument("--seed", type=int, default=42, help="seed for random draws (pairing, binarisation)")
    p.add_argument(
        "--pair-mode",
        choices=("one_to_one", "all"),
        default="one_to_one",
        help="with --to paired on unpaired data: one pair per desirable row, or every D×U pair",
    )
    p.add_argument("--dedupe", action="store_true", help="drop exact duplicate rows")
    p.add_argument(
        "--min-score-margin", type=float, default=None, help="drop pairs with a smaller score margin"
    )
    p.add_argument(
        "--format",
        choices=("canonical", "trl", "text"),
        default="canonical",
        help="canonical: all columns; trl: only TRL's explicit columns; text: chat template applied "
        "with --tokenizer",
    )
    p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help="tokenizer for --format text")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser(
        "inspect", help="counts, label balance, token lengths, duplicates and ties of a dataset"
    )
    p.add_argument(
        "path", help="file/directory/hub id (canonical output of convert, or any source with --source)"
    )
    p.add_argument(
        "--source",
        default=None,
        help="read with this source (default: recognised from the columns and content of the first rows)",
    )
    p.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE", help="a source option")
    p.add_argument("--split", default=None)
    p.add_argument("--max-rows", type=int, default=None)
    p.add_argument(
        "--tokenizer",
        default=DEFAULT_TOKENIZER,
        help=f"tokenizer for length percentiles (default {DEFAULT_TOKENIZER}; 'none' to skip)",
    )
    p.add_argument(
        "--max-length", type=int, default=None, help="also count rows longer than this many tokens"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("sources", help="list the data sources and their options")
    p.add_argument("name", nargs="?", default=None, help="show one source in full")
    p.set_defaults(func=cmd_sources)

    p = sub.add_parser(
        "generate",
        help="sample replies from a policy, judge them, write preference pairs (or unpaired rows)",
        description="Prompts (a data source or a prompts file) → k replies per prompt from the config's policy → "
        "the judge → pairs (best_vs_worst, best_vs_random, all_above_margin) or unpaired rows, written as "
        "canonical JSONL with provenance; the report (drops, judge figures) and the resumable state file go "
        "beside the output. See docs/judges.md.",
    )
    p.add_argument("--config", required=True, help="the generation config (YAML; see configs/generate/)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value (typed)"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="check the config and read the prompts; load no model"
    )
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "agree",
        help="judge labelled pairs with several judges: agreement, Cohen's kappa, accuracy, length/position bias",
        description="Each pair is shown with its chosen reply in position a or b (a seeded coin). Reports each "
        "judge's counts, accuracy against the pairs' labels (--human: people's labels), how often the longer "
        "reply wins, an LLM judge's position bias, and agreement + Cohen's kappa for every two judges.",
    )
    p.add_argument(
        "--pairs", default=None, help="JSONL/JSON of {prompt, chosen, rejected} rows (or pairs: in --config)"
    )
    p.add_argument(
        "--config", default=None, help="YAML with judges: [judge blocks] (and optionally pairs, human)"
    )
    p.add_argument(
        "--judge",
        action="append",
        default=[],
        metavar="BLOCK",
        help="a judge block as YAML ('{type: callable, function: \"m:f\"}') or a YAML file; repeatable",
    )
    p.add_argument("--human", action="store_true", default=None, help="the chosen side is a human label")
    p.add_argument("--max-pairs", type=int, default=None, help="judge only the first N pairs")
    p.add_argument("--seed", type=int, default=None, help="seed of the position coin (default 0)")
    p.add_argument("--output", default=None, help="write the table as JSON here")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_agree)
    return data


# ------------------------------------------------------------------------------------------- helpers
def parse_options(items: list[str]) -> dict[str, Any]:
    """``["k=v", ...]`` → dict, each value parsed as YAML (``true``, ``3``, ``[a, b]``, ``{a: b}``)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise PrefoptError(
                f'--option "{item}" is not KEY=VALUE.', fix="write e.g. --option keep_ties=true"
            )
        key, _, raw = item.partition("=")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise PrefoptError(f"--option {key}: cannot parse {raw!r} as a YAML value ({e}).") from None
    return out


def _section(source: str, path: str, split: str | None, max_rows: int | None, options: dict[str, Any]):
    from prefopt.config.recipe import SourceSection

    fields = {"source": source, "path": path, "split": split, "max_rows": max_rows, **options}
    try:
        return SourceSection(**{k: v for k, v in fields.items() if v is not None or k in options})
    except Exception as e:  # pydantic validation of max_rows etc.
        raise PrefoptError(f"invalid source arguments: {e}") from None


def resolve_source(
    source: str | None,
    path: str,
    split: str | None,
    options: dict[str, Any],
    command: Any,
    where: str,
) -> tuple[str, dict[str, Any], str | None]:
    """``(source, options, why)``: the named source, or the one recognised from the data's first rows
    (``why`` says from what; the options it needs are merged under the user's ``-o`` options).
    Not sure → :class:`PrefoptError` with the candidate command lines (``command(detection)``)."""
    if source:
        return source, options, None
    from prefopt.data.registry import choose_source, read_sample

    found = choose_source(
        read_sample(path, base_dir=Path.cwd(), split=split, where=where), where=where, command=command
    )
    return found.source, {**found.options, **options}, found.reason


def write_rows(ds: Any, path: Path, fmt: str = "canonical") -> int:
    """Write ``ds`` as JSONL (or parquet by suffix). ``fmt="trl"`` keeps only TRL's columns."""
    from prefopt.data.schema import data_kind

    if fmt == "trl":
        keep = (
            ["prompt", "chosen", "rejected"]
            if data_kind(ds) == "paired"
            else ["prompt", "completion", "label"]
        )
        ds = ds.select_columns(keep)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".parquet":
        ds.to_parquet(str(path))
        return len(ds)
    enc = json.JSONEncoder(ensure_ascii=False)
    with open(path, "w", encoding="utf-8") as fh:
        for batch in ds.iter(batch_size=1000):
            cols = list(batch)
            for values in zip(*(batch[c] for c in cols)):
                fh.write(enc.encode(dict(zip(cols, values))) + "\n")
    return len(ds)


# ------------------------------------------------------------------------------------------- commands
def convert(args: argparse.Namespace) -> tuple[Any, Any]:
    """The dataset and drop report ``convert`` would write (used by the handler and tests)."""
    from prefopt.config.recipe import DataSection
    from prefopt.data.registry import format_options
    from prefopt.data.transforms import prepare

    def command(d: Any) -> str:
        return (
            f"prefopt data convert --source {d.source} --input {args.input} --to {args.to} "
            f"--output {args.output}{format_options(d.options)}"
        )

    name, options, why = resolve_source(
        args.source, args.input, args.split, parse_options(args.option), command, "prefopt data convert"
    )
    args.detected = (name, why, options) if why else None
    src = _section(name, args.input, args.split, args.max_rows, options)
    data = DataSection(
        train=[src],
        transform="unpair" if args.to == "unpaired" else "pair",
        pair_mode=args.pair_mode,
        dedupe=args.dedupe,
        min_score_margin=args.min_score_margin,
        strict=False,
        shuffle=False,
    )
    ds, _, report = prepare(data.train, None, data, args.to, Path.cwd(), args.seed)
    if args.format == "text":
        from prefopt.data.transforms import render_chat_template
        from prefopt.model.loading import load_tokenizer

        ds = render_chat_template(ds, load_tokenizer(args.tokenizer), report)
    return ds, report


def check_output_path(path: Path, flag: str) -> None:
    """Refuse an output path that cannot become a file, before any data is read."""
    if path.is_dir():
        raise PrefoptError(
            f"{flag} {path} is a directory; it must name the file to write.",
            fix=f"give a file name, e.g. {flag} {path / 'converted.jsonl'}.",
        )
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise PrefoptError(
                    f"{flag} {path} lies under {parent}, which is a regular file, not a folder.",
                    fix=f"choose a path in a folder (or move {parent} away).",
                )
            break


def _detected_line(detected: tuple[str, str, dict[str, Any]] | None) -> str | None:
    if detected is None:
        return None
    from prefopt.data.registry import format_options

    name, why, options = detected
    return f"source: {name} (recognised: {why}; same as --source {name}{format_options(options)})"


def cmd_convert(args: argparse.Namespace) -> int:
    check_output_path(Path(args.output), "--output")
    if args.report:
        check_output_path(Path(args.report), "--report")
    ds, report = convert(args)
    line = _detected_line(getattr(args, "detected", None))
    if line:
        print(line, file=sys.stderr)
    if args.report:
        report.save(args.report)
    print(report.summary(), file=sys.stderr)
    if args.strict:
        report.check_strict(where=f"prefopt data convert --strict ({args.input})")
    try:
        n = write_rows(ds, Path(args.output), "trl" if args.format == "trl" else "canonical")
    except OSError as e:
        raise PrefoptError(
            f"cannot write --output {args.output}: {e.strerror or e}.",
            fix="check that its folder is writable and the disk has room.",
        ) from None
    print(f"wrote {n:,} {args.to} rows to {args.output}", file=sys.stderr)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from prefopt.data.inspect import format_inspection, inspect_dataset
    from prefopt.data.registry import format_options, source_info
    from prefopt.data.report import DropReport
    from prefopt.data.transforms import load_source

    def command(d: Any) -> str:
        return f"prefopt data inspect {args.path} --source {d.source}{format_options(d.options)}"

    name, options, why = resolve_source(
        args.source, args.path, args.split, parse_options(args.option), command, "prefopt data inspect"
    )
    detected = (name, why, dict(options)) if why else None
    info = source_info(name)
    if info.options and "keep_ties" in info.options:
        options.setdefault("keep_ties", True)  # count ties here rather than dropping them
    report = DropReport(f"read {args.path}")
    src = _section(name, args.path, args.split, args.max_rows, options)
    ds = load_source(src, where=f"prefopt data inspect ({name})", base_dir=Path.cwd(), seed=0, report=report)
    tokenizer = None
    if args.tokenizer and args.tokenizer.lower() != "none":
        from prefopt.model.loading import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
    summary = inspect_dataset(ds, tokenizer, max_length=args.max_length)
    summary["read_report"] = report.as_dict()
    summary["source"] = {"name": name, "options": options, "recognised_from": why}
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        line = _detected_line(detected)
        if line:
            print(line)
        print(format_inspection(summary, title=f"{args.path} (source {name})"))
        print(report.summary())
    return 0


def cmd_sources(args: argparse.Namespace) -> int:
    from prefopt.data.registry import STANDARD_KEYS, source_info, source_names

    names = [args.name] if args.name else source_names()
    for name in names:
        info = source_info(name)
        kinds = f" [{', '.join(info.kinds)}]" if info.kinds else ""
        print(f"{name}{kinds}: {info.description}")
        if args.name and info.read.__module__ and sys.modules.get(info.read.__module__) is not None:
            doc = (sys.modules[info.read.__module__].__doc__ or "").strip()
            if doc:
                print("\n" + doc + "\n")
        if info.options:
            print(f"    {', '.join(STANDARD_KEYS)}: path (file, directory or hub id), split, max_rows")
            for key, opt in info.options.items():
                default = "" if opt.default is None else f" (default {opt.default!r})"
                print(f"    {key}: {opt.help}{default}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from prefopt.data.report import DropReport
    from prefopt.judge.agree import format_agreement
    from prefopt.judge.generate_config import (
        in_file,
        load_generate_config,
        preflight,
        read_prompts,
        run_generate,
    )

    where = args.config
    with in_file(where):
        cfg = load_generate_config(args.config, args.set)
        check_output_path(Path(cfg.output), "output")
    if args.dry_run:
        preflight(cfg, where)
        with in_file(where):
            prompts = read_prompts(cfg, DropReport(where=f"prompts ({where})"))
        print(f"{where}: config is valid; {len(prompts):,} prompts; would write {cfg.output}")
        return 0
    result, report = run_generate(cfg, where)
    n = write_rows_list(result.rows, Path(cfg.output))
    Path(cfg.report).write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n")
    read = next((st for st in report["prompts_report"]["steps"] if st["step"] == "prompts"), None)
    if read and read["rows_in"] != read["rows_out"]:
        print(
            f"prompts: {read['rows_in']:,} read, {read['rows_out']:,} used (repeats dropped)", file=sys.stderr
        )
    print(result.report.summary(), file=sys.stderr)
    stats = result.stats
    if stats.get("resumed_prompts"):
        print(f"resumed: {stats['resumed_prompts']:,} prompts were finished in {cfg.state}", file=sys.stderr)
    table = (report.get("figures") or {}).get("agreement")
    if table:
        print(format_agreement(table), file=sys.stderr)
    cons = (report.get("figures") or {}).get("pairwise_consistency")
    if cons is not None:
        text = f"{cons:.3f}" if cons == cons else "n/a (no comparison was parsed in both orders)"
        print(f"pairwise judge consistency (both orders agree): {text}", file=sys.stderr)
    print(f"wrote {n:,} {result.kind} rows to {cfg.output} (report: {cfg.report})", file=sys.stderr)
    return 0


def write_rows_list(rows: list[dict[str, Any]], path: Path) -> int:
    """Rows as JSONL (written to a temporary file, then moved into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        tmp.replace(path)
    except OSError as e:
        raise PrefoptError(
            f"cannot write output {path}: {e.strerror or e}.",
            fix="check that its folder is writable and the disk has room.",
        ) from None
    return len(rows)


def cmd_agree(args: argparse.Namespace) -> int:
    from prefopt.judge.agree import (
        agreement_report,
        build_judges,
        check_blocks,
        format_agreement,
        judge_blocks,
        read_pairs,
    )

    blocks, rest = judge_blocks(args.config, args.judge)
    pairs_path = args.pairs or rest.get("pairs")
    if pairs_path is None:
        raise PrefoptError(
            "no pairs to judge.", where="prefopt data agree", fix="give --pairs FILE (or pairs: in --config)."
        )
    if args.pairs is None and args.config:
        base = Path(args.config).resolve().parent
        pairs_path = str(pairs_path if Path(pairs_path).is_absolute() else base / pairs_path)
    human = bool(args.human if args.human is not None else rest.get("human", False))
    seed = int(args.seed if args.seed is not None else rest.get("seed", 0))
    max_pairs = args.max_pairs or rest.get("max_pairs")
    if args.output:
        check_output_path(Path(args.output), "--output")
    cfgs = check_blocks(blocks, need=1 if human else 2)
    prompts, chosen, rejected = read_pairs(pairs_path, max_pairs=max_pairs)
    judges = build_judges(blocks, cfgs)
    try:
        table = agreement_report(judges, prompts, chosen, rejected, human=human, seed=seed)
    except PrefoptError as err:
        raise PrefoptError(str(err), where=f"prefopt data agree ({pairs_path})") from None
    table["pairs_file"] = str(pairs_path)
    if args.output:
        Path(args.output).write_text(json.dumps(table, indent=2, ensure_ascii=False, default=str) + "\n")
    if args.json:
        print(json.dumps(table, indent=2, ensure_ascii=False, default=str))
    else:
        print(format_agreement(table))
    return 0
