"""Tests on a real one-node SLURM cluster (a package, so its conftest does not shadow tests/conftest.py)."""
