"""Layer 8: studies built from runs — the algorithm comparison, the RLHF baseline, iterative DPO."""
