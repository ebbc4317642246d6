"""Layer 6: evaluation metrics of a trained policy against its starting model, and the run report."""
