"""A second world that prefopt did not shape: on a user's own model and data, each algorithm through
``prefopt train`` does at least as well as plain TRL at the same settings.

The world (tests/second_world/): a small Llama with a word-level tokenizer that adds BOS,
SFT-trained by plain TRL's ``SFTTrainer`` on letter sorting, saved to a local directory; the user's
pairs as JSONL with their own column names (``question``/``good``/``bad``). prefopt gets a recipe per
algorithm (model by path, ``columns:`` mapping, KTO with ``transform: unpair``, everything else
default) at the settings users copy from the papers and TRL's docs; plain TRL gets the same settings
and its own defaults otherwise. One independent evaluator (plain ``transformers`` sampling, T = 1,
fixed seed, held-out prompts) scores both. docs/world.md ("A second world prefopt did not shape")
has the 3-seed table this test is the one-seed guard of.

Every training run is a ``prefopt train`` / plain-TRL subprocess with one torch thread, two at a
time; the world is built once (about a minute) and cached under ``$PREFOPT_CACHE/second_world/``.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

ALGORITHMS = ["dpo", "ipo", "kto", "orpo", "simpo"]
SEED = 42
# The measured noise, per algorithm: the larger of the two seed spreads (max − min of the sampled true
# reward over seeds 42/43/44, prefopt's cell and plain TRL's) in the 3-seed table of docs/world.md
# ("A second world prefopt did not shape"). The seed changes only the batch order here, and given the
# same batches prefopt's DPO, IPO and SimPO reproduce TRL's runs exactly (same section), so this is the
# batch-order noise of one run against another.
# KTO is the exception: plain TRL's KTOConfig samples sequentially, so its seeds do not change its batches
# and its seed spread (0) measures nothing. Its order noise is measured by changing the order: plain TRL on
# shuffled rows, seeds 42/43/44, spread 0.171 (0.440 – 0.611) on one build of the world and 0.163 on
# another, where the very same sequential TRL run went from 0.654 to 0.311 (docs/world.md, "KTO and batch
# order"). The larger of those spreads is KTO's noise.
NOISE = {"dpo": 0.079, "ipo": 0.123, "kto": 0.171, "orpo": 0.011, "simpo": 0.047}
# "The same settings" means the same loss. Plain TRL's CPOTrainer(loss_type="simpo") keeps cpo_alpha=1.0,
# an NLL term on the chosen replies (CPO-SimPO); prefopt's default is the paper's SimPO (sft_weight 0).
# A user who wants TRL's loss writes loss.sft_weight: 1.0, and that recipe is the one compared with plain
# TRL (docs/world.md). prefopt's default SimPO against TRL's CPO-SimPO stays below as a known difference.
COMPARED_KIND = {"simpo": "prefopt-sft_weight1"}
# Gaps measured beyond that noise, with their causes (docs/world.md). Strict: the test fails once a
# gap closes, so that its marker goes too. None at present: KTO's (prefopt 0.405 against TRL's 0.654 on
# one build, with weights 1 : 1) closed with prefopt's default weights at the upper end of KTO's rule.
KNOWN_GAPS: dict[str, str] = {}
# KTO at TRL's default weights (1 : 1), the provoked failure the health monitor must catch
KTO_AT_TRL_WEIGHTS = "prefopt-kto_w1"
PAPER_SIMPO_GAP = (
    "a different loss, not a gap at the same settings: prefopt's default is the paper's SimPO (sft_weight 0), "
    "plain TRL's default CPO-SimPO (cpo_alpha=1.0); TRL with cpo_alpha=0 reproduces prefopt's runs exactly "
    "(0.682 over 3 seeds, against 0.817 with the NLL term), and prefopt with loss.sft_weight: 1.0 reproduces "
    "TRL's."
)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from second_world import build, study

    world = build.world()
    workdir = tmp_path_factory.mktemp("second_world")
    kinds = (*study.KINDS, *sorted(set(COMPARED_KIND.values())), KTO_AT_TRL_WEIGHTS)
    results = study.run(world, workdir, seeds=(SEED,), kinds=kinds, jobs=2, trl_in_one_process=True)
    return world, {(r["kind"], r["algorithm"]): r for r in results}, workdir


def test_reference_is_in_the_regime_where_preferences_help(study):
    """The SFT model knows the answer (greedy) but samples it only about half the time."""
    world, _, _ = study
    ref = world.info["reference"]
    assert 0.40 <= ref["reward_sampled"] <= 0.60, ref
    assert ref["reward_greedy"] >= 0.90, ref


@pytest.mark.parametrize(
    "algorithm",
    [
        pytest.param(a, marks=pytest.mark.xfail(strict=True, reason=KNOWN_GAPS[a])) if a in KNOWN_GAPS else a
        for a in ALGORITHMS
    ],
)
def test_prefopt_at_least_plain_trl(study, algorithm):
    _, results, _ = study
    pf = results[(COMPARED_KIND.get(algorithm, "prefopt"), algorithm)]
    trl = results[("trl", algorithm)]
    assert pf["reward_sampled"] >= trl["reward_sampled"] - NOISE[algorithm], (pf, trl)


@pytest.mark.xfail(strict=True, reason=PAPER_SIMPO_GAP)
def test_papers_simpo_at_least_trls_cpo_simpo(study):
    _, results, _ = study
    pf, trl = results[("prefopt", "simpo")], results[("trl", "simpo")]
    assert pf["reward_sampled"] >= trl["reward_sampled"] - NOISE["simpo"], (pf, trl)


def test_kto_without_weights_gets_the_rules_upper_end(study):
    """The recipe gives no KTO weights: on the 4,000 : 4,000 unpaired rows prefopt sets λ_D = 1.33
    (λ_D·n_D : λ_U·n_U = 1.33, the upper end of KTO's 1:1–4:3 rule) and records it in the manifest."""
    _, _, workdir = study
    settings = json.loads((workdir / f"prefopt-kto-{SEED}" / "manifest.json").read_text())["data_settings"]
    assert (settings["n_desirable"], settings["n_undesirable"]) == (4000, 4000)
    assert (settings["desirable_weight"], settings["undesirable_weight"]) == (1.33, 1.0)
    assert settings["source"].startswith("auto") and settings["warning"] is None


def test_health_warns_on_the_kto_run_that_got_worse(study):
    """KTO at TRL's default weights (1 : 1) lowers the true reward below the SFT model's on this world; its
    desirable replies fall against the reference, and the health monitor says so (desirable_falling,
    docs/health.md)."""
    world, results, workdir = study
    assert results[(KTO_AT_TRL_WEIGHTS, "kto")]["reward_sampled"] < world.info["reference"]["reward_sampled"]
    records = [
        json.loads(line) for line in (workdir / f"{KTO_AT_TRL_WEIGHTS}-kto-{SEED}" / "metrics.jsonl").open()
    ]
    fired = [r for r in records if r.get("event") == "health"]
    warnings = [r["warning"] for r in fired]
    # desirable_falling first, once (one episode); on build B both sides later pass logp_collapse as well
    assert warnings[:1] == ["desirable_falling"] and warnings.count("desirable_falling") == 1, fired
    assert set(warnings) <= {"desirable_falling", "logp_collapse"}, fired
    assert "desirable_weight" in fired[0]["advice"]


def test_kto_loss_on_a_fixed_batch_equals_plain_trls(tmp_path):
    """Nothing but the batches separates the two KTOs (docs/world.md): on one batch of 32 mixed-label rows
    of the user's file, with the SFT model as policy and reference, prefopt's KTO trainer and plain TRL's
    KTOTrainer (its own tokenisation) give the same loss and gradients."""
    import random

    from datasets import Dataset
    from second_world import build
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import KTOConfig, KTOTrainer

    from prefopt.config.recipe import load_recipe
    from prefopt.pipeline.run import build_trainer, prepare_data

    world = build.world()
    pairs = [json.loads(line) for line in world.pairs.open()]
    rng = random.Random(0)
    rows = []
    for p in rng.sample(pairs, 16):
        rows.append({"prompt": p["question"], "completion": p["good"], "label": True})
        rows.append({"prompt": p["question"], "completion": p["bad"], "label": False})
    rng.shuffle(rows)
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = AutoTokenizer.from_pretrained(str(world.model_dir))

    def loss_and_grads(trainer):
        model = trainer.model
        model.train()
        loss = trainer.compute_loss(model, next(iter(trainer.get_train_dataloader())))
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    with build.torch_threads(1):
        trl = KTOTrainer(
            model=AutoModelForCausalLM.from_pretrained(str(world.model_dir)),
            args=KTOConfig(
                output_dir=str(tmp_path / "trl"),
                beta=0.1,
                per_device_train_batch_size=32,
                bf16=False,
                report_to="none",
            ),
            train_dataset=Dataset.from_list(rows),
            processing_class=tok,
        )
        recipe = load_recipe(
            data={
                "algorithm": "kto",
                "seed": 42,
                "model": {"name": str(world.model_dir)},
                "data": {
                    "train": [{"source": "jsonl", "path": str(tmp_path / "rows.jsonl")}],
                    "shuffle": False,
                    "dedupe": False,
                },
                # TRL's default weights: the same loss at the same settings (prefopt's own default is 1.33 : 1)
                "loss": {"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0},
                "training": {"per_device_train_batch_size": 32},
            }
        )
        train_tok, eval_tok, *_ = prepare_data(recipe, tok)
        pf = build_trainer(
            recipe,
            AutoModelForCausalLM.from_pretrained(str(world.model_dir)),
            tok,
            train_tok,
            eval_tok,
            output_dir=str(tmp_path / "pf"),
        )
        (lt, gt), (lp, gp) = loss_and_grads(trl), loss_and_grads(pf)
    assert gt.keys() == gp.keys() and gt
    scale = max(g.abs().max().item() for g in gt.values())
    assert scale > 1e-4
    assert abs(lt - lp) <= 1e-6, (lt, lp)
    assert max((gt[n] - gp[n]).abs().max().item() for n in gt) <= 1e-6 * scale
