"""The Slurm backend of ``dnlrepro launch``: the twelve rows as sbatch jobs on a cluster.

``dnlrepro launch --backend slurm`` submits one job per DVC stage still to run (``dvc status``):
``prepare`` when a download/prepare stage of the launched datasets is stale, ``train@X`` per
configuration, ``evaluate@X`` after it (``afterok``) and ``reports`` (tables, diff, report) after
all of them. Every job runs the local
launcher's command, ``dvc --wait-for-lock repro -s STAGE``, in the shared workspace; training
goes through ``srun`` + torchrun over the job's nodes when the profile uses torchrun.

* :mod:`~dnlrepro.launch.slurm.plan`: which jobs, with which resources and dependencies, and
  their sbatch scripts, kept under ``work_dirs/slurm/<launch>/``;
* :mod:`~dnlrepro.launch.slurm.queue`: sbatch, squeue/sacct, the receipt;
* :mod:`~dnlrepro.launch.slurm.cli`: the options and ``--status`` / ``--wait``.

Tested against a real single-node Slurm (``.ci/slurm-local.sh``, ``tests/test_slurm.py``).
"""
