"""Training: typed config, losses and the training loop (``rtseg.train``), split into named phases."""
