"""Training: typed config, losses and the training loop (``rtseg.engine.trainer``), split into named phases."""
