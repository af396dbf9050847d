"""Utilities every layer may use: atomic file writes, progress bars, machine facts and the timing loop.

This is the bottom layer: it imports nothing from rtseg but :mod:`rtseg.errors` (docs/architecture.md).
"""
