"""``prefopt eval`` and ``prefopt report``: argument parsing only (the work is in
:mod:`prefopt.evaluate.metrics` and :mod:`prefopt.evaluate.report`). Wired into :mod:`prefopt.cli` with
``add_eval_commands(sub)``."""

from __future__ import annotations

import argparse
import json


def add_eval_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a finished run against its starting model (writes RUN_DIR/eval.json)",
        description=(
            "Held-out preference accuracy by implicit reward, reward margin, chosen/rejected log-prob shifts, "
            "KL(policy || reference) on sampled completions, completion length vs the reference, and the "
            "true reward when the data comes from the ground-truth world. Caps come from the run's "
            "`evaluation:` section."
        ),
    )
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="the directory `prefopt train` wrote")
    p.add_argument(
        "--data",
        metavar="PATH",
        help="held-out preference data: a JSONL/JSON/parquet file of {prompt, chosen, rejected} rows "
        "(text or messages; unpaired {prompt, completion, label} rows are paired by prompt). "
        "Default: the recipe's eval split.",
    )
    p.add_argument(
        "--judge",
        metavar="JUDGE",
        help="also judge the policy against its reference on held-out prompts: win rate, ties and the "
        "length-controlled win rate with 95%% intervals. A YAML file holding a judge block (or judge: block), "
        "or the block inline, e.g. '{type: callable, function: \"prefopt.world:TASKS.arith.reward\"}'",
    )
    p.add_argument(
        "--against",
        metavar="RUN_DIR",
        help="with --judge: judge against this run's model instead of the reference",
    )
    p.add_argument("--json", action="store_true", help="print the whole eval.json instead of the summary")
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser("report", help="write RUN_DIR/report.md with PNG plots of a run")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.set_defaults(func=cmd_report)


def cmd_eval(args: argparse.Namespace) -> int:
    from prefopt.core.errors import PrefoptError
    from prefopt.evaluate.metrics import evaluate_run, format_summary

    judge = None
    if args.against and not args.judge:
        raise PrefoptError(
            "--against names the model to judge the policy against, so it needs --judge.",
            where="command line",
            fix="add --judge JUDGE.yaml (e.g. the world's true reward: configs/generate/judge-true-reward.yaml).",
        )
    if args.judge:
        from prefopt.judge.agree import build_judges, check_blocks, judge_blocks

        blocks, _ = judge_blocks(None, [args.judge])
        judge = next(iter(build_judges(blocks, check_blocks(blocks)).values()))
    result = evaluate_run(args.run, data=args.data, judge=judge, against=args.against)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(format_summary(result))
        print(f"\nwrote {args.run}/eval.json")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from prefopt.evaluate.report import write_report

    path = write_report(args.run_dir)
    print(f"wrote {path}")
    return 0
