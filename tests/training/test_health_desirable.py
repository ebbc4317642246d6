"""``desirable_falling`` (KTO): the desirable replies' log-ratio against the reference, per token and
averaged over the last 10 logs, below ``health.desirable_falling_per_token`` (default −0.1).

Provoked by the trajectory of a real run: prefopt's KTO on the second world (docs/world.md, seed 42, lr
1e-4, β 0.1), whose sampled true reward fell from 0.502 to 0.396 while ``logp_collapse`` stayed silent
(the undesirable side fell −1.3 nats/token, the desirable one "only" −0.18). Silent on the trajectory
of the shipped KTO quickstart (its desirable log-ratio rises throughout), on a short dip, and for DPO.
The real runs are checked too: tests/pipeline/test_second_world.py (the warning fires on prefopt's KTO run) and
tests/test_end_to_end.py (no health record on any quickstart).
"""

from __future__ import annotations

import pytest
from test_health import Feeder

from prefopt.config.recipe import load_recipe
from prefopt.training.health import ADVICE

# Mean log-ratio per sequence (nats) of the desirable / undesirable rows over each tenth of the run,
# from metrics.jsonl (rewards/chosen / β): prefopt KTO, second world, seed 42, 250 logs.
SECOND_WORLD_DESIRABLE = [0.12, 0.28, 0.05, -0.10, -0.47, -1.04, -0.99, -0.93, -1.11, -0.80]
SECOND_WORLD_UNDESIRABLE = [-0.22, -0.86, -1.74, -2.65, -3.81, -5.42, -6.19, -6.80, -7.47, -7.71]
SECOND_WORLD_LENGTHS = (5.81, 5.81)  # mean reply tokens (EOS included) of good / bad in pairs.jsonl
# The KTO quickstart (β 3, 3 epochs), seed 42, 70 logs: the desirable log-ratio per sequence.
QUICKSTART_DESIRABLE = [0.11, 0.32, 0.42, 0.45, 0.48, 0.50, 0.52, 0.52, 0.53, 0.53]


def _replay(feeder: Feeder, desirable, undesirable, beta: float, logs_per_tenth: int) -> Feeder:
    for d, u in zip(desirable, undesirable):
        for _ in range(logs_per_tenth):
            feeder.log(loss=0.45, kl=0.0, **{"rewards/chosen": beta * d, "rewards/rejected": beta * u})
    return feeder


def test_fires_on_the_second_world_kto_run_and_logp_collapse_does_not():
    f = Feeder("kto", beta=0.1, completion_lengths=SECOND_WORLD_LENGTHS)
    _replay(f, SECOND_WORLD_DESIRABLE, SECOND_WORLD_UNDESIRABLE, 0.1, 25)
    assert not f.warnings("logp_collapse")  # the desirable side is far above −0.5 nats/token
    [rec] = f.warnings("desirable_falling")  # one episode
    assert rec["threshold_per_token"] == -0.1 and rec["window_logs"] == 10
    assert rec["shift_desirable_per_token"] < -0.1
    assert rec["shift_undesirable_per_token"] < rec["shift_desirable_per_token"]
    assert 100 < rec["step"] < 150  # within the fifth tenth (logs 101-125) the 10-log mean passes −0.58/seq
    assert "desirable_weight" in rec["advice"] and "learning rate" in rec["advice"]
    assert rec["advice"] == ADVICE["desirable_falling"]


def test_silent_on_the_kto_quickstart_a_short_dip_and_dpo():
    q = Feeder("kto", beta=3.0, completion_lengths=(3.0, 3.0))
    _replay(q, QUICKSTART_DESIRABLE, [-0.5] * 10, 3.0, 7)
    assert not q.warnings()
    dip = Feeder("kto", beta=0.1, completion_lengths=(5.0, 5.0))
    # 2 logs at −0.4 nats/token among +0.02: every 10-log mean stays above −0.1 (the lowest is −0.064)
    _replay(dip, [0.1, -2.0, 0.1, 0.1, 0.1, 0.1], [-1.0] * 6, 0.1, 2)
    assert not dip.warnings("desirable_falling")
    dpo = Feeder("dpo", beta=0.1, completion_lengths=SECOND_WORLD_LENGTHS)
    _replay(dpo, SECOND_WORLD_DESIRABLE, SECOND_WORLD_UNDESIRABLE, 0.1, 25)
    assert not dpo.warnings("desirable_falling")  # DPO constrains the margin only (docs/health.md)


def test_rearms_after_recovery_and_can_be_turned_off():
    f = Feeder("kto", beta=0.1, completion_lengths=(5.0, 5.0))
    _replay(f, [-1.0, 0.5, -1.0], [-3.0] * 3, 0.1, 20)
    assert len(f.warnings("desirable_falling")) == 2
    off = Feeder("kto", beta=0.1, completion_lengths=(5.0, 5.0), desirable_falling_per_token=None)
    _replay(off, [-1.0], [-3.0], 0.1, 20)
    assert not off.warnings()
    # no reply lengths (no per-token figure): silent rather than guessing
    nolen = Feeder("kto", beta=0.1)
    _replay(nolen, [-5.0], [-9.0], 0.1, 20)
    assert not nolen.warnings("desirable_falling")


def test_a_mean_hovering_at_the_threshold_is_one_episode():
    """A 10-log mean that crosses −0.1 back and forth (−0.09 / −0.11 nats/token) is one episode: it re-arms
    only once back above half the threshold (−0.05). Without that, a second-world run fired 7 times."""
    f = Feeder("kto", beta=0.1, completion_lengths=(5.0, 5.0))
    _replay(f, [-0.45, -0.55] * 10, [-3.0] * 20, 0.1, 10)  # per token −0.09 / −0.11, 10 logs each
    assert len(f.warnings("desirable_falling")) == 1
    _replay(f, [-0.2, -0.55], [-3.0] * 2, 0.1, 10)  # back to −0.04 per token (re-armed), then down again
    assert len(f.warnings("desirable_falling")) == 2


def test_recipe_key_and_stop_on():
    data = {
        "algorithm": "kto",
        "model": {"name": "builtin:tiny-arith"},
        "data": {"train": [{"source": "world", "task": "arith", "size": 8}]},
        "health": {"desirable_falling_per_token": -0.3, "stop_on": ["desirable_falling"]},
    }
    r = load_recipe(data=data)
    assert r.health.desirable_falling_per_token == -0.3 and r.health.stop_on == ["desirable_falling"]
    f = Feeder("kto", beta=0.1, completion_lengths=(5.0, 5.0), **{"stop_on": ["desirable_falling"]})
    _replay(f, [-1.0], [-3.0], 0.1, 10)
    assert f.control.should_training_stop and f.warnings("desirable_falling")[0]["stopped_training"]


@pytest.mark.parametrize("value", [-0.1, None])
def test_health_section_default_and_null(value):
    data = {
        "algorithm": "kto",
        "model": {"name": "builtin:tiny-arith"},
        "data": {"train": [{"source": "world", "task": "arith", "size": 8}]},
    }
    if value is None:
        data["health"] = {"desirable_falling_per_token": None}
    assert load_recipe(data=data).health.desirable_falling_per_token == value
