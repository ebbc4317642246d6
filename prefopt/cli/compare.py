"""``prefopt compare``: argument parsing only (the work is in :mod:`prefopt.studies.compare`). Wired into
:mod:`prefopt.cli` with ``add_compare_commands(sub)``."""

from __future__ import annotations

import argparse
import json


def add_compare_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "compare",
        help="run a sweep (algorithms × loss parameters × seeds, + RLHF, + iterative DPO) and compare them",
        description=(
            "Runs every point of a sweep file on the ground-truth world and writes compare.json, compare.md "
            "(true reward, KL to the reference, held-out preference accuracy, wall time, peak memory) and "
            "frontier.png (true reward vs KL). Points already finished in the output dir are reused."
        ),
    )
    p.add_argument("--config", required=True, metavar="SWEEP.yaml", help="sweep file (see configs/sweeps/)")
    p.add_argument("--output-dir", help="output directory (overrides the sweep's `output`)")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="run only these: a grid algorithm, rlhf or iterative_dpo (repeatable)",
    )
    p.add_argument("--rerun", action="store_true", help="run points again even if finished in the output dir")
    p.add_argument(
        "--dry-run", action="store_true", help="list the points (validated recipes); train nothing"
    )
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from prefopt.studies.compare import format_markdown, load_sweep, plan_sweep, run_sweep

    sweep = load_sweep(args.config)
    if args.dry_run:
        plan = plan_sweep(sweep, args.only or None)
        listing = [
            {
                "name": p.name,
                "algorithm": p.algorithm,
                "params": p.params,
                "seed": p.seed,
                "base": str(p.recipe.source_path),
            }
            for p in plan.points
        ]
        sides = [(kind, section, base) for kind, section, base in plan.rlhf_variants]
        if plan.iterative_dpo is not None:
            sides.append(("iterative_dpo", plan.iterative_dpo, plan.side_bases["iterative_dpo"]))
        for name, section, base in sides:
            listing.append(
                {
                    "name": name,
                    "seeds": sweep.seeds,
                    "base": str(base.source_path),
                    "config": section.model_dump(mode="json"),
                }
            )
        print(json.dumps(listing, indent=2, default=str))
        return 0
    summary = run_sweep(sweep, output_dir=args.output_dir, rerun=args.rerun, only=args.only or None)
    print(format_markdown(summary))
    print(f"\nwrote {summary['output_dir']}/compare.json, compare.md, frontier.png")
    failed = [p for p in summary["points"] if p.get("status") != "finished"]
    if failed:
        print(f"failed points: {', '.join(p['name'] for p in failed)}")
        # a non-finite loss is the training lifecycle's failure (exit 3, as prefopt train); others exit 1
        return 3 if any(p.get("nonfinite") for p in failed) else 1
    return 0
