"""SimPO's NLL term as a recipe key: ``loss.sft_weight`` (the SimPO reference code's name; TRL's
``cpo_alpha``). The default 0 is the paper's SimPO; ``sft_weight: 1.0`` is TRL's default CPO-SimPO.

The value reaches ``CPOConfig.cpo_alpha``, the manifest's overrides line names the loss (SimPO or
CPO-SimPO), and the loss the trainer optimises on a batch equals SimPO's loss plus ``sft_weight`` times
the chosen replies' token-mean NLL, computed independently (the harness of tests/test_parity.py: plain
forwards of each sequence on its own, prompt/completion split from prefopt's tokenisation).
"""

from __future__ import annotations

import pytest
import torch
from test_parity import EXAMPLES, _grads, _sft, _side, _trainer

from prefopt import losses
from prefopt.config.recipe import load_recipe
from prefopt.core.errors import PrefoptError
from prefopt.model.loading import load_tokenizer
from prefopt.training.algorithms import get_adapter

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _recipe(**loss):
    return load_recipe(
        data={
            "algorithm": "simpo",
            "seed": 0,
            "model": {"name": "builtin:tiny-arith"},
            "data": {"train": [{"source": "world", "task": "arith", "size": 8}]},
            "loss": {"beta": 2.0, "gamma_beta_ratio": 0.25, **loss},
        }
    )


def test_default_is_the_papers_simpo(tmp_path):
    recipe = _recipe()
    assert recipe.loss_params.sft_weight == 0.0
    adapter = get_adapter("simpo")
    config = adapter.trl_config(recipe, output_dir=str(tmp_path))
    assert config.cpo_alpha == 0.0 and config.loss_type == "simpo"
    line = [o for o in adapter.overrides(recipe) if "cpo_alpha" in o]
    assert len(line) == 1 and "the paper's SimPO" in line[0] and "TRL's default 1.0" in line[0]


@pytest.mark.parametrize("weight", [1.0, 0.3])
def test_sft_weight_reaches_cpo_config_and_the_overrides_say_cpo_simpo(weight, tmp_path):
    recipe = _recipe(sft_weight=weight)
    adapter = get_adapter("simpo")
    assert adapter.trl_config(recipe, output_dir=str(tmp_path)).cpo_alpha == weight
    assert adapter.describe(recipe)["loss"]["cpo_alpha"] == weight
    [line] = [o for o in adapter.overrides(recipe) if "sft_weight" in o]
    assert line.startswith("loss: CPO-SimPO, not the paper's SimPO")
    assert f"cpo_alpha = {weight:g}" in line
    assert ("TRL's default" in line) is (weight == 1.0)


def test_negative_sft_weight_is_refused_naming_the_key():
    with pytest.raises(PrefoptError) as e:
        _recipe(sft_weight=-1.0)
    assert "sft_weight" in str(e.value)


def test_training_cpo_alpha_points_to_the_loss_key():
    with pytest.raises(PrefoptError) as e:
        load_recipe(
            data={
                "algorithm": "simpo",
                "model": {"name": "builtin:tiny-arith"},
                "data": {"train": [{"source": "world"}]},
                "training": {"cpo_alpha": 1.0},
            }
        )
    assert "loss.sft_weight" in str(e.value) and "CPO-SimPO" in str(e.value)


@pytest.mark.parametrize("weight", [0.0, 1.0, 0.4])
def test_trainer_loss_is_simpo_plus_sft_weight_times_chosen_nll(weight, tmp_path):
    """On one batch holding the whole data set: TRL's CPOTrainer loss (as prefopt builds it) equals
    mean(simpo_loss) + sft_weight · NLL, NLL = −Σ chosen completion log-probs / Σ chosen completion tokens
    (EOS included, prompts excluded), in value and gradient."""
    tok = load_tokenizer("builtin:tiny-arith")
    loss = {"beta": 2.0, "gamma_beta_ratio": 0.5, "sft_weight": weight}
    trainer, lp = _trainer("simpo", loss, tok, str(tmp_path))
    assert trainer.cpo_alpha == weight
    policy = trainer.model
    _sft(policy, tok, [(e["prompt"], e["chosen"]) for e in EXAMPLES], steps=2, lr=1e-3)
    policy.train()
    batch = next(iter(trainer.get_train_dataloader()))
    trainer_loss = trainer.compute_loss(policy, batch)
    trainer_loss.backward()
    trainer_grads = _grads(policy)

    _, pc, lc = _side(policy, tok, EXAMPLES, "chosen", grad=True)
    _, pr, lr = _side(policy, tok, EXAMPLES, "rejected", grad=True)
    simpo = losses.simpo_loss(pc, pr, lc, lr, beta=lp.beta, gamma_beta_ratio=lp.gamma_beta_ratio).mean()
    nll = -(pc.sum() / lc.sum())
    ours = simpo + weight * nll
    ours.backward()
    our_grads = _grads(policy)

    assert nll.item() > 0.05  # the NLL term is not negligible: the test tells 0 from 1
    assert abs(trainer_loss.item() - ours.item()) <= 1e-5, (trainer_loss.item(), ours.item())
    scale = max(g.abs().max().item() for g in our_grads.values())
    d_grad = max((trainer_grads[n] - our_grads[n]).abs().max().item() for n in our_grads)
    assert d_grad <= 1e-5 * scale
    if weight:
        m = trainer._stored_metrics["train"]
        assert abs(m["nll_loss"][-1] - nll.item()) <= 1e-5
    # and it is not the other weight's loss
    other = simpo + (1.0 - weight if weight in (0.0, 1.0) else 0.0) * nll
    assert abs(trainer_loss.item() - other.item()) > 1e-3
    assert torch.isfinite(trainer_loss)
