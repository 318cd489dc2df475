"""``dnlrepro rehearse``: the paper/published pipeline end to end, in miniature, on one machine.

Read in this order: :mod:`~dnlrepro.rehearse.run` (the command: scratch copy, mirror, two
``dvc repro`` runs, checks, receipt), :mod:`~dnlrepro.rehearse.shrink` (the documented sizes),
:mod:`~dnlrepro.rehearse.mirror` (miniatures and the HTTP mirror with the Cityscapes login),
:mod:`~dnlrepro.rehearse.stages` (running DVC, the planned kill), :mod:`~dnlrepro.rehearse.checks`,
:mod:`~dnlrepro.rehearse.report` and :mod:`~dnlrepro.rehearse.cost` (the real run's cost).
"""
