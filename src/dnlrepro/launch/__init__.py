"""Launchers: local GPU queue and Slurm, around `dvc repro` of the stages."""
