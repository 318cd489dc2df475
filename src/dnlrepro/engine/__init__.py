"""Training, evaluation, prediction, benchmarking and MLflow tracking.

Read in this order:

* :mod:`~dnlrepro.engine.train` -- ``dnlrepro train``: the training loop on one page, and its CLI;
* :mod:`~dnlrepro.engine.step` -- one training step (loss sum, NaN check, backward, SGD step);
* :mod:`~dnlrepro.engine.train_setup` -- what a run sets up: process, model, optimizer, resume
  state, data loader;
* :mod:`~dnlrepro.engine.train_summary` -- what a finished run leaves: summary JSON, MLflow;
* :mod:`~dnlrepro.engine.machine` -- the machine fingerprint results record (smoke verdicts);
* :mod:`~dnlrepro.engine.schedule` / :mod:`~dnlrepro.engine.sampler` -- poly lr and SGD; the
  resumable distributed sampler;
* :mod:`~dnlrepro.engine.resume` -- ``iter_N.pth`` / ``latest.pth`` / ``final.pth``, digest check;
* :mod:`~dnlrepro.engine.distributed` -- torchrun process group and the few collectives used;
* :mod:`~dnlrepro.engine.inference` -- load a checkpoint; softmax of one image (single scale,
  ms+flip);
* :mod:`~dnlrepro.engine.evaluate` -- the evaluation dataset loop (``dnlrepro evaluate`` is
  :mod:`~dnlrepro.tools.evaluate`, which also fetches a URL checkpoint);
* :mod:`~dnlrepro.engine.metrics` -- mIoU / mAcc / aAcc from class histograms;
* :mod:`~dnlrepro.engine.eval_artifacts` -- protocol block, per-class tables, chart, MLflow run;
* :mod:`~dnlrepro.tools.predict` -- ``dnlrepro predict``: label maps and overlays;
* :mod:`~dnlrepro.tools.predict_outputs` -- where predict writes and what it may overwrite;
* :mod:`~dnlrepro.bench.benchmark` -- ``dnlrepro benchmark``: fps and Mem (GB);
* :mod:`~dnlrepro.track.tracking` -- the MLflow adapter (never fails a run).

Submodules are imported on demand (``from dnlrepro.engine import train``); nothing heavy is
imported here so ``dnlrepro --help`` and the tests that only need metrics stay fast.
"""
