"""The project's measurements: one script per benchmark over ``experiments.common``.

Run every script from the repository root as ``python -m experiments.<name>``; what
each measures, its command and its results are in ``experiments/README.md``.
"""
