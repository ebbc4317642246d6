"""Layer 5: algorithm adapters, TRL trainer subclasses, losses, batching, reference cache, callbacks and one fit()."""
