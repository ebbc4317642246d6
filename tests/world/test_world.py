"""The ground-truth world itself: tasks and rewards, the held-out split, the reference policy's quality,
and the preference data drawn from it."""

from __future__ import annotations

import random

import pytest

from prefopt import world

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("name", ["arith", "count"])
def test_held_out_split_is_fixed_disjoint_and_about_15_percent(name):
    task = world.get_task(name)
    train, test = task.split("train"), task.split("test")
    assert not set(train) & set(test)
    assert sorted(train + test) == sorted(task.all_prompts())
    assert 0.08 <= len(test) / len(task.all_prompts()) <= 0.22
    assert task.split("test") == test  # by hash: the same on every machine and every run


def test_rewards_and_near_misses():
    arith, count = world.get_task("arith"), world.get_task("count")
    assert arith.reward("37+48=", "85") == 1.0
    assert arith.reward("37+48=", " 85 ") == 1.0
    assert arith.reward("37+48=", "86") == 0.0
    assert arith.reward("37+48=", "850") == 0.0
    assert count.reward("count a 3:", "aaa") == 1.0
    assert count.reward("count a 3:", "aaaa") == 0.0
    rng = random.Random(0)
    for prompt in arith.all_prompts()[::97] + count.all_prompts()[::7]:
        task = arith if "+" in prompt else count
        miss = task.near_miss(prompt, rng)
        assert task.reward(prompt, miss) == 0.0, (prompt, miss)
    for prompt in arith.all_prompts()[::97]:
        assert abs(int(arith.near_miss(prompt, rng)) - int(arith.answer(prompt))) in (1, 2, 10)


def test_reference_policy_is_imperfect_but_competent():
    """The warm start is trained to convergence on noisy demonstrations (half of them near-misses), so the
    reference samples the right answer about half the time but knows it (greedy ~0.96). Measured on two
    warm-start seeds: 0.530 / 0.970 and 0.522 / 0.957. An under-trained reference is what this guards
    against: world v1 (1200 steps) landed anywhere from 0.22 to 0.56 depending on the machine and seed."""
    from prefopt.model.loading import load_trained

    model, tok = load_trained(world.reference_checkpoint("arith"))
    result = world.evaluate_policy(model, tok, "arith", reference=model)
    assert 0.40 <= result["reward_sampled"] <= 0.65, result
    assert result["reward_greedy"] >= 0.90, result
    assert result["kl_to_reference"] == pytest.approx(0.0, abs=1e-6)
    assert 1.8 <= result["mean_length"] <= 2.2, result  # two-digit answers, mostly


def test_paired_rows_are_right_against_wrong_on_training_prompts():
    arith = world.get_task("arith")
    train = set(arith.split("train"))
    rows = world.preference_rows("arith", 120, seed=5, pairs_per_prompt=2)
    assert rows == world.preference_rows("arith", 120, seed=5, pairs_per_prompt=2)  # cached, same rows
    assert len({r["prompt"] for r in rows}) <= 120 <= len(rows) <= 240
    for r in rows:
        assert r["prompt"] in train
        assert arith.reward(r["prompt"], r["chosen"]) == 1.0, r
        assert arith.reward(r["prompt"], r["rejected"]) == 0.0, r
        assert (r["score_chosen"], r["score_rejected"]) == (1.0, 0.0)
        assert r["source"] == "world:arith" and r["prompt_id"]
    # rejected answers come from the reference's own samples: mostly near-misses of the right answer
    close = sum(
        abs(int(r["rejected"]) - int(r["chosen"])) in (1, 2, 10) for r in rows if r["rejected"].isdigit()
    )
    assert close / len(rows) >= 0.6


def test_label_noise_flips_about_that_fraction_and_hides_the_scores():
    arith = world.get_task("arith")
    rows = world.preference_rows("arith", 400, seed=6, noise=0.25)
    flipped = sum(arith.reward(r["prompt"], r["chosen"]) == 0.0 for r in rows) / len(rows)
    assert 0.17 <= flipped <= 0.33
    assert all(r["score_chosen"] is None and r["score_rejected"] is None for r in rows)


def test_unpaired_rows_are_labelled_by_true_reward_and_balanced():
    arith = world.get_task("arith")
    rows = world.preference_rows("arith", 150, seed=7, kind="unpaired")
    assert all(r["label"] == (arith.reward(r["prompt"], r["completion"]) == 1.0) for r in rows)
    assert sum(r["label"] for r in rows) * 2 == len(rows)


def test_torch_threads_sets_and_restores():
    import torch

    from prefopt.core.runtime import torch_threads

    torch.set_num_threads(2)  # the module's fixture pinned 1 and restores the default afterwards
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with torch_threads(None):  # None leaves them alone
        assert torch.get_num_threads() == 2
