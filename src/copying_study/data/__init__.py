"""Data: the embedded study generator, readers for real sources, caption regimes and perturbations."""
