"""Generation: completions per second of prefopt's transformers engine (batched, left-padded,
length-grouped) against a plain per-prompt ``model.generate`` loop on the same prompts.

In one process, on the builtin small-25m weights (fp32, one intra-op thread), ``--prompts`` prompts
(default 64) whose lengths follow UltraFeedback's spread scaled by ``--scale`` (``common.text_pairs``:
about 5-75 tokens with the byte-level tokenizer), ``k`` samples each at temperature 1, up to
``--max-new-tokens`` new tokens (the random-init model almost never samples EOS, so every arm
generates nearly the same number of tokens; the counts are printed):

* **engine** — ``TransformersEngine(batch_size=--batch)`` as shipped: length-grouped batches, one
  seeded stream per sample (``rng: per_sample``);
* **engine, ungrouped** — the same without length grouping (what grouping buys);
* **engine, batch rng** — length-grouped, one stream per batch (what the per-sample streams cost);
* **plain loop** — for each prompt ``model.generate(ids, do_sample=True, num_return_sequences=k)``:
  what a script without an engine does.

Each round runs every arm once, in a rotating order; after one warm-up round, ``--rounds`` rounds
(default 5). The ratio is the median over rounds of (engine completions per CPU second) / (plain loop
completions per CPU second). Target ≥ 2: on this CPU a forward of the 25M-parameter model is compute-bound
(a batch of 64 costs about 8× a batch of 4), so batching removes the per-call and per-step overhead of
``generate`` and the repeated prefill rather than multiplying throughput; on a GPU the gap is far wider.

    python benchmarks/generation.py [--rounds 5] [--prompts 64] [--k 4] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

TARGET = 2.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--k", type=int, default=4, help="samples per prompt")
    ap.add_argument("--batch", type=int, default=64, help="engine: sequences per forward")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--scale", type=float, default=0.05, help="UltraFeedback prompt lengths × this")
    ap.add_argument("--quick", action="store_true", help="2 rounds, 32 prompts")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.prompts = min(args.rounds, 2), min(args.prompts, 32)
    common.pin_threads(1)
    import torch

    from prefopt.data.tokenization import encode_prompt
    from prefopt.model.engines.hf import TransformersEngine
    from prefopt.model.loading import build_builtin, load_tokenizer

    tok = load_tokenizer(f"builtin:{common.MODEL}")
    model = build_builtin(common.MODEL, common.SEED).eval()
    prompts = [r["prompt"] for r in common.text_pairs(args.prompts, seed=3, scale=args.scale)]
    lengths = [len(encode_prompt(tok, p)) for p in prompts]
    n_out = args.prompts * args.k
    kw = dict(k=args.k, temperature=1.0, max_new_tokens=args.max_new_tokens)

    def engine_arm(**opts):
        engine = TransformersEngine(model, tok, batch_size=args.batch, progress=False, **opts)

        def run(seed):
            out = engine.generate(prompts, seed=seed, **kw)
            return sum(c.length for row in out for c in row)

        return run

    def plain_loop(seed):
        torch.manual_seed(seed)
        new = 0
        with torch.no_grad():
            for p in prompts:
                ids = torch.tensor([encode_prompt(tok, p)])
                out = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=True,
                    temperature=1.0,
                    top_k=0,
                    top_p=1.0,
                    num_return_sequences=args.k,
                    max_new_tokens=args.max_new_tokens,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.eos_token_id,
                )
                for row in out[:, ids.size(1) :].tolist():
                    new += row.index(tok.eos_token_id) if tok.eos_token_id in row else len(row)
        return new

    arms = {
        "engine": engine_arm(),
        "engine-ungrouped": engine_arm(length_grouped=False),
        "engine-batch-rng": engine_arm(rng="batch"),
        "plain-loop": plain_loop,
    }
    order = list(arms)
    print(
        f"generation: {args.prompts} prompts ({min(lengths)}-{max(lengths)} tokens) × k={args.k}, "
        f"≤ {args.max_new_tokens} new tokens, builtin:{common.MODEL}, engine batch {args.batch}, "
        f"{args.rounds} rounds; machine {common.machine()}",
        flush=True,
    )
    results: dict[str, list[dict]] = {name: [] for name in order}
    for r in range(args.rounds + 1):
        rot = order[r % len(order) :] + order[: r % len(order)]
        got = {}
        for name in rot:
            t0, c0 = time.perf_counter(), common.cpu_seconds()
            tokens = arms[name](seed=r)
            got[name] = {"wall": time.perf_counter() - t0, "cpu": common.cpu_seconds() - c0, "tokens": tokens}
        if r == 0:
            print("  warm-up round: " + "  ".join(f"{n} {got[n]['cpu']:.1f}s" for n in order), flush=True)
            continue
        for name in order:
            results[name].append(got[name])
        print(
            f"  round {r}/{args.rounds}: "
            + "  ".join(f"{n} {got[n]['cpu']:.1f}s ({got[n]['tokens']} tok)" for n in order),
            flush=True,
        )

    def per_s(name, field):
        return [n_out / x[field] for x in results[name]]

    def ratio(a, b, field):
        return common.median([x / y for x, y in zip(per_s(a, field), per_s(b, field))])

    for name in order:
        print(
            f"{name:18s} {common.median(per_s(name, 'cpu')):8.1f} completions per CPU s "
            f"{common.median(per_s(name, 'wall')):8.1f} per wall s, "
            f"{common.median([x['tokens'] for x in results[name]]):.0f} new tokens"
        )
    print(
        f"engine / plain loop: {ratio('engine', 'plain-loop', 'cpu'):.2f}× (cpu), "
        f"{ratio('engine', 'plain-loop', 'wall'):.2f}× (wall); grouped / ungrouped "
        f"{ratio('engine', 'engine-ungrouped', 'cpu'):.2f}×; per-sample / batch rng "
        f"{ratio('engine', 'engine-batch-rng', 'cpu'):.2f}×"
    )
    common.report(
        "generation",
        ratio("engine", "plain-loop", "cpu"),
        TARGET,
        {
            "measure": "completions per CPU second, engine (length-grouped, batched) / per-prompt generate loop",
            "wall": round(ratio("engine", "plain-loop", "wall"), 4),
            "grouped_over_ungrouped_cpu": round(ratio("engine", "engine-ungrouped", "cpu"), 4),
            "per_sample_over_batch_rng_cpu": round(ratio("engine", "engine-batch-rng", "cpu"), 4),
            "engine_completions_per_cpu_s": round(common.median(per_s("engine", "cpu")), 2),
            "plain_completions_per_cpu_s": round(common.median(per_s("plain-loop", "cpu")), 2),
            "prompts": args.prompts,
            "k": args.k,
            "max_new_tokens": args.max_new_tokens,
            "rounds": args.rounds,
        },
        lower_is_better=False,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
