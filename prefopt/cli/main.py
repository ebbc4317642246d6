"""``prefopt`` command line: argument parsing only; the work lives in the modules it calls.

Errors caused by input (bad recipe, missing file, malformed data) print one paragraph and exit 2;
``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from prefopt.core.errors import NonFiniteError, PrefoptError, TrainingInterrupted

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "quickstart" / "dpo.yaml"
"""The demo's recipe, shipped in the package (a byte-identical copy of configs/recipes/quickstart/dpo.yaml,
kept so by tests/cli/test_usability.py): a wheel install has no configs/ folder."""
DEMO_QUICK_EVAL = ("evaluation.world_prompts=32", "evaluation.max_prompts=16")


def _setup_env() -> None:
    # No hub access by default: cached models and datasets load, anything else fails with a clear
    # message (set HF_HUB_OFFLINE=0 to allow downloads).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", os.environ["HF_HUB_OFFLINE"])
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    # ORPO and CPO/SimPO live in trl.experimental in TRL 1.x; prefopt pins TRL and tests that API, so
    # TRL's "experimental API" warning on every ORPO/SimPO run is not for the user (docs/losses.md)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("prefopt").setLevel(logging.INFO)


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="recipe YAML")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a recipe value (typed)",
    )
    p.add_argument("--output-dir", help="run directory (overrides output.dir)")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in the output dir")
    p.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
    p.add_argument(
        "--dry-run", action="store_true", help="print the resolved TRL configuration; load no model"
    )
    p.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="with --dry-run: plan the batch for N processes (default: this launch's world size)",
    )
    p.add_argument("--smoke", action="store_true", help="builtin model + small local sample, a few steps")


def _in_recipe(path: str):
    """Prefix errors raised after the recipe was read (data, batch, model) with the recipe file."""
    import contextlib

    @contextlib.contextmanager
    def ctx():
        try:
            yield
        except PrefoptError as err:
            if str(path) in str(err):
                raise
            raise PrefoptError(str(err), where=str(path)) from None

    return ctx()


def cmd_train(args) -> int:
    with _in_recipe(args.config):
        return _train(args)


def _train(args) -> int:
    from prefopt.config.recipe import load_recipe

    # --smoke drops fp16/bf16 (it runs anywhere), so the device check is for real runs only
    recipe = load_recipe(args.config, args.set, check_device=not getattr(args, "smoke", False))
    if getattr(args, "smoke", False):
        from prefopt.config.smoke import smoke_recipe

        recipe = smoke_recipe(recipe)
    processes = args.processes
    if processes is not None and (not args.dry_run or processes < 1):
        raise PrefoptError(
            f"--processes {processes}: it plans a dry run's batch for that many processes, so it needs "
            "--dry-run and a value of 1 or more. Fix: add --dry-run, or launch with accelerate to train "
            "on several processes.",
            where="command line",
        )
    if args.dry_run:
        from prefopt.pipeline.run import check_judges
        from prefopt.training.plan import dry_run

        check_judges(recipe)  # a judge that cannot work: exit 2 here too, still without a model
        print(json.dumps(dry_run(recipe, processes), indent=2))
        return 0
    from prefopt.pipeline.run import train

    summary = train(recipe, output_dir=args.output_dir, overwrite=args.overwrite, resume=args.resume)
    _print_summary(summary)
    return 0


def _print_summary(summary: dict) -> None:
    from prefopt.core.runtime import is_main_process

    if not is_main_process():
        return
    print(f"\nrun dir: {summary['run_dir']}")
    print(
        f"algorithm: {summary['algorithm']}  steps: {summary['global_step']}  train loss: {summary['train_loss']:.4f}  "
        f"time: {summary['train_runtime_s']:.1f}s"
    )
    world = (summary.get("eval") or {}).get("world")
    if world:
        pol, ref = world["policy"], world["reference"]
        print(
            f"true reward (sampled, T=1): reference {ref['reward_sampled']:.3f} → trained {pol['reward_sampled']:.3f} "
            f"({world['lift_sampled']:+.3f})"
        )
        print(
            f"true reward (greedy):       reference {ref['reward_greedy']:.3f} → trained {pol['reward_greedy']:.3f} "
            f"({world['lift_greedy']:+.3f})"
        )
    _print_kl(summary.get("eval") or {})


def _print_kl(evaluation: dict) -> None:
    from prefopt.evaluate.metrics import kl_figures

    for i, fig in enumerate(kl_figures(evaluation)):
        head = "KL(policy ‖ reference), nats:" if i == 0 else ""
        print(f"{head:<30}{fig['value']:.3f} on {fig['samples']}")


def cmd_demo(args) -> int:
    from prefopt.config.recipe import load_recipe
    from prefopt.core.runtime import torch_threads
    from prefopt.pipeline.run import train

    print("prefopt demo: ground-truth world (arith) — SFT warm start (cached after the first run), then DPO")
    overrides = list(args.set)
    if args.max_steps is not None:  # a check that the install works: a few steps, a small evaluation
        if args.max_steps < 1:
            raise PrefoptError(f"--max-steps {args.max_steps} must be 1 or more.", where="command line")
        overrides = [f"training.max_steps={args.max_steps}", *DEMO_QUICK_EVAL, *overrides]
    recipe = load_recipe(DEMO_RECIPE, overrides)
    with torch_threads(args.threads):  # the world's model is tiny: one thread is fastest
        summary = train(recipe, output_dir=args.output_dir, overwrite=True)
    _print_summary(summary)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prefopt", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train from a recipe")
    add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="the offline demo: ground-truth world, warm start + DPO")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--output-dir", default="runs/demo")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: fastest here)")
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        metavar="N",
        help="stop after N optimizer steps and evaluate on fewer prompts (a quick check that an install works)",
    )
    p.set_defaults(func=cmd_demo)

    from prefopt.cli.compare import add_compare_commands
    from prefopt.cli.data import add_data_commands
    from prefopt.cli.evaluate import add_eval_commands

    add_data_commands(sub)
    add_eval_commands(sub)
    add_compare_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # bitsandbytes only for recipes that quantize (loading one reopens the gate): PEFT imports it
    # eagerly, which on some CPUs prints a kernel warning in every run (prefopt/config/integrations.py).
    # Reopened on return, so that a caller's later imports in the same process are unaffected.
    from prefopt.config.integrations import allow_bitsandbytes, defer_bitsandbytes

    deferred = defer_bitsandbytes()
    try:
        return _main(argv)
    finally:
        if deferred:
            allow_bitsandbytes()


def _main(argv: list[str] | None) -> int:
    _setup_env()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    _logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except PrefoptError as err:
        if args.debug:
            raise
        print(f"prefopt: error: {err}", file=sys.stderr)
        return err.exit_code
    except TrainingInterrupted as err:
        print(f"prefopt: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:  # Ctrl-C outside a training run (loading, evaluating): no traceback
        if args.debug:
            raise
        print("prefopt: interrupted.", file=sys.stderr)
        return 130
    except NonFiniteError as err:
        if args.debug:
            raise
        print(f"prefopt: error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
