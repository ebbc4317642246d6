"""The module paths before the layered layout keep working for one release (thin re-export shims)."""

from __future__ import annotations

import importlib

import pytest

OLD = {
    "prefopt.errors": ["PrefoptError", "NonFiniteError", "TrainingInterrupted", "did_you_mean"],
    "prefopt.recipe": ["Recipe", "load_recipe", "parse_override", "SourceSection", "LOSS_CLASSES", "DPOLoss"],
    "prefopt.fidelity": ["RULES", "check_recipe", "check_kto_weights", "loss_key_hint", "rules_markdown"],
    "prefopt.smoke": ["smoke_recipe", "FIXTURES", "FIXTURES_DIR"],
    "prefopt.tokenization": ["encode_prompt", "encode_completion", "tokenize_dataset"],
    "prefopt.models": ["load_model", "load_tokenizer", "build_builtin", "load_trained", "BUILTIN_DIR"],
    "prefopt.algorithms": ["get_adapter", "algorithm_names", "Adapter", "register"],
    "prefopt.trainers": ["PrefoptDPOTrainer", "PrefoptKTOTrainer", "add_kl_completions", "model_logps"],
    "prefopt.losses": ["dpo_loss", "ipo_loss", "kto_loss", "orpo_loss", "simpo_loss", "LOSS_FUNCTIONS"],
    "prefopt.batching": ["LengthGroupingMixin", "install_split_forward", "PreferenceLengthGroupedSampler"],
    "prefopt.refcache": ["ReferenceCache", "ReferenceCacheMixin", "trainer_kwargs", "default_cache_dir"],
    "prefopt.callbacks": ["MetricsJsonlCallback"],
    "prefopt.resilience": ["NonFiniteGuard", "NonFiniteError", "last_complete_checkpoint", "MARKER"],
    "prefopt.health": ["HealthCallback", "probe_prompts_for", "WARNINGS", "ADVICE"],
    "prefopt.evaluation": ["evaluate_models", "evaluate_run", "generate_completions", "completion_logps"],
    "prefopt.report": ["write_report"],
    "prefopt.manifest": ["write_json", "versions", "prepare_run_dir"],
    "prefopt.train": [
        "train",
        "build_trainer",
        "resolve_batch",
        "dry_run",
        "prepare_data",
        "world_size",
        "is_main_process",
        "save_model",
        "reference_for",
        "run_evaluation",
        "world_task_of",
    ],
    "prefopt.compare": [
        "load_sweep",
        "run_sweep",
        "plan_sweep",
        "WorldEvaluator",
        "Measure",
        "TokenizedCache",
    ],
    "prefopt.iterative": ["IterativeDPOSection", "run_iterative_dpo", "world_reward", "load_callable"],
    "prefopt.rlhf": ["RLHFSection", "run_rlhf", "RewardModelScorer", "load_reward_model", "TrueReward"],
    "prefopt.commands_compare": ["add_compare_commands"],
    "prefopt.commands_eval": ["add_eval_commands"],
    "prefopt.world": ["torch_threads", "sample", "generate", "sequence_logps", "reference_checkpoint"],
    "prefopt.cli": ["main"],
    "prefopt.prefix_sharing": ["pack_pairs", "install_prefix_sharing", "resolve_setting"],
    "prefopt.rundir": ["run_dir_for", "session", "prepare", "recipe_identity"],
    "prefopt.resume": ["choose_checkpoint", "run_training", "LossLedger", "check_saved_model"],
    "prefopt.distinfo": ["check_launch", "describe"],
    "prefopt.integrations": ["on_recipe_loaded", "check_report_to"],
}


@pytest.mark.parametrize("module", sorted(OLD))
def test_old_module_path_still_exports_its_names(module):
    mod = importlib.import_module(module)
    missing = [n for n in OLD[module] if not hasattr(mod, n)]
    assert not missing, f"{module} lost {missing}"


def test_the_old_default_scorer_path_still_loads():
    from prefopt.judge.scorers import load_callable
    from prefopt.world import world_reward

    assert load_callable("prefopt.iterative:world_reward") is world_reward
