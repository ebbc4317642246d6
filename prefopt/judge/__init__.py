"""Layer 6: judges — functions that score a (prompt, completion): a Python callable named by its dotted
path, or a reward model trained by the RLHF baseline."""
