"""Training, evaluation, prediction, benchmarking and MLflow tracking.

Submodules are imported on demand (``from dnlrepro.engine import train``); nothing heavy is
imported here so ``dnlrepro --help`` and the tests that only need metrics stay fast.
"""
