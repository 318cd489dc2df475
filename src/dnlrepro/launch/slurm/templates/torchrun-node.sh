#!/bin/bash
# Started by srun once per node of a training job (DNLREPRO_TORCHRUN_WRAPPER): runs the torchrun
# command given as arguments. Slurm forwards the job script's USR1 (time limit near) here;
# torchrun's agent would die of it, so it is ignored there and passed on as TERM, on which the
# agent stops its workers and they write their checkpoint (src/dnlrepro/engine/preempt.py).
set -u
( trap '' USR1; exec "$@" ) &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null' USR1
wait "$pid"; rc=$?
while kill -0 "$pid" 2>/dev/null; do wait "$pid"; rc=$?; done
exit "$rc"
