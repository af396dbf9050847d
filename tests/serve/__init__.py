"""rtseg serve tests (a package: its conftest must not shadow tests/conftest.py, which others import)."""
