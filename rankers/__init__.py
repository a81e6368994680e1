"""PyTorch ranking models (LASER and its baselines) that take plain arrays."""
