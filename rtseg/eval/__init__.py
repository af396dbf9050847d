"""Measuring models: segmentation metrics, the one evaluation loop, efficiency profiling and visualisation."""
