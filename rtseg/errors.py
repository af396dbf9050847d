"""Exceptions shared across rtseg (kept import-free so every module can use them)."""


class CheckpointError(ValueError):
    """A file is missing, unreadable, or not the kind of checkpoint expected."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss stayed non-finite for many consecutive steps)."""
