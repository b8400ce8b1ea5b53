#!/usr/bin/env bash
# On a lent GPU machine: time the training step and one layer's roofline of every model family
# on the ListOps, Pathfinder and Path-X presets that exist (python -m ssm_lra.bench), inside a
# fixed wall-clock budget. Results land in $OUT if set, else results/bench.
# Run from the repository root; python deps on PYTHONPATH, or carried as .whl (scripts/device_wheels.sh).
#   bash scripts/device_bench.sh [MAX_MINUTES] [TASKS] [MODELS] [extra bench args / hydra overrides ...]
#   bash scripts/device_bench.sh                   # 7.5 min: listops, pathfinder, pathx x s4 s4d s5 s5_ptd mamba
#   bash scripts/device_bench.sh 8 pathx           # a second call for one task
#   EXPERIMENTS=s5/pathx,mamba/pathx bash scripts/device_bench.sh 8   # what a first call skipped (it prints the list)
# Experiments run cheapest task first; any that would start after the budget are recorded as
# "skipped (time budget)" rows, and each experiment is stopped after 150 s (a "timeout" row).
# Pass SSM_LRA_GIT_COMMIT=$(git rev-parse HEAD) in the command to record the commit (no .git there).
set -uo pipefail
minutes=${1:-7.5}; tasks=${2:-listops,pathfinder,pathx}; models=${3:-s4,s4d,s5,s5_ptd,mamba}
shift 3 2>/dev/null || shift $#
out=${OUT:-results/bench}
mkdir -p "$out"
# Wheels (.whl, from scripts/device_wheels.sh) are installed only where the deps are missing.
source scripts/device_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv,noheader 2>/dev/null || true
# Models and tasks that have no preset at all are dropped here, so that the bench never stops on
# a name; model x task pairs without a preset are listed by the bench as "no preset".
have=$(python3 -m ssm_lra.bench --list) || exit 1
models=$(for m in ${models//,/ }; do grep -q "^$m/" <<< "$have" && echo -n "$m,"; done); models=${models%,}
tasks=$(for t in ${tasks//,/ }; do grep -q "/$t$" <<< "$have" && echo -n "$t,"; done); tasks=${tasks%,}
if [ -n "${EXPERIMENTS:-}" ]; then
  select=(--experiments "$EXPERIMENTS")
elif [ -n "$models" ] && [ -n "$tasks" ]; then
  select=(--models "$models" --tasks "$tasks")
else
  echo "no presets for these models/tasks"; exit 1
fi
python3 -m ssm_lra.bench "${select[@]}" --steps 20 --warmup 2 --timeout 150 --max-minutes "$minutes" \
  --out "$out" "$@" 2>&1 | tee "$out/bench-log.txt"
