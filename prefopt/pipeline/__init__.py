"""Layer 7: a run — run directory and manifest, data → train → evaluate."""
