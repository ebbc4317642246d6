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
    p.add_argument("--json", action="store_true", help="print the whole eval.json instead of the summary")
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser("report", help="write RUN_DIR/report.md with PNG plots of a run")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.set_defaults(func=cmd_report)


def cmd_eval(args: argparse.Namespace) -> int:
    from prefopt.evaluate.metrics import evaluate_run, format_summary

    result = evaluate_run(args.run, data=args.data)
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
