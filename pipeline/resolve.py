"""DVC stage ``resolve@<run>``: the run's resolved configuration and plan (cheap: no torch).

Reads ``params.yaml`` (the profile), ``params/profiles.yaml``, ``params/<config>.yaml``, the
registry and ``params/runs.yaml`` (checked against the profile), and writes
``results/<run>/config.yaml`` + ``results/<run>/run.yaml`` (:mod:`dnlrepro.core.resolve`).
``train@<run>`` and ``evaluate@<run>`` depend on those files only, so an edit that changes
nothing the run computes re-runs this stage and stops here; the log says which values of the
configuration file the profile overrides (an edit there changes nothing).
"""

from __future__ import annotations

from common import logger, run_stage, setup_with_profile, stage_arg
from dnlrepro.core import resolve, runs


def main() -> int:
    key = stage_arg()
    ws, profile = setup_with_profile()
    run = runs.resolve(ws, profile, key)
    for note in resolve.write(ws, profile, run):
        logger.info("%s", note)
    logger.info("resolve@%s: profile %s, seed %d -> results/%s/", key, profile.name, run.seed, key)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
