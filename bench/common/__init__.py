"""Helpers every benchmark shares: machine facts (machine.py), plots (plots.py), model paths (model_paths.py)."""
