"""Subcommand modules of the ``rtseg`` CLI (see rtseg.cli)."""
