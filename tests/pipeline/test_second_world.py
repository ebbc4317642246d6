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

import pytest

pytestmark = pytest.mark.slow

ALGORITHMS = ["dpo", "ipo", "kto", "orpo", "simpo"]
SEED = 42
# The measured noise, per algorithm: the larger of the two seed spreads (max − min of the sampled true
# reward over seeds 42/43/44, prefopt's cell and plain TRL's) in the 3-seed table of docs/world.md
# ("A second world prefopt did not shape"). The seed changes only the batch order here, and given the
# same batches prefopt's DPO, IPO and SimPO reproduce TRL's runs exactly (same section), so this is the
# batch-order noise of one run against another.
NOISE = {"dpo": 0.079, "ipo": 0.123, "kto": 0.141, "orpo": 0.011, "simpo": 0.047}
# Gaps measured beyond that noise, with their causes (docs/world.md). Strict: the test fails once a
# gap closes, so that its marker goes too.
KNOWN_GAPS = {
    "kto": "plain TRL's KTOConfig samples sequentially and TRL's unpair_preference_dataset lays out blocks of "
    "1,000 desirable then 1,000 undesirable rows, so every TRL batch holds one label; prefopt shuffles, so "
    "its batches mix labels, and at lr 1e-4 mixed batches end lower (0.405 vs 0.654 over 3 seeds; TRL on "
    "shuffled rows: 0.502). Balance is not the cause: both train on 4,000 : 4,000 rows.",
    "simpo": "plain TRL's CPOTrainer(loss_type='simpo') keeps cpo_alpha=1.0, an NLL term on the chosen reply "
    "(CPO-SimPO); prefopt runs the paper's SimPO (cpo_alpha=0), which TRL with cpo_alpha=0 reproduces "
    "exactly (0.682 over 3 seeds, against 0.817 with the NLL term).",
}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from second_world import build, study

    world = build.world()
    results = study.run(
        world, tmp_path_factory.mktemp("second_world"), seeds=(SEED,), jobs=2, trl_in_one_process=True
    )
    return world, {(r["kind"], r["algorithm"]): r for r in results}


def test_reference_is_in_the_regime_where_preferences_help(study):
    """The SFT model knows the answer (greedy) but samples it only about half the time."""
    world, _ = study
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
    _, results = study
    pf, trl = results[("prefopt", algorithm)], results[("trl", algorithm)]
    assert pf["reward_sampled"] >= trl["reward_sampled"] - NOISE[algorithm], (pf, trl)
