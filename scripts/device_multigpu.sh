#!/usr/bin/env bash
# On a lent machine of several GPUs (repository root, .whl carried: scripts/device_wheels.sh):
# data-parallel scaling of published settings at their published global batch, on generated data.
# Each experiment runs 200 steps on 1 GPU and on all N GPUs (CUDA_VISIBLE_DEVICES), logging every
# 5 steps; scripts/multigpu_report.py compares them (rates, scaling efficiency, peak memory per GPU,
# loss trajectories). NCCL runs with the machine's settings as they are: NVLink multicast stays
# off (NCCL_NVLS_ENABLE=0 is kept, never overridden).
#   SSM_LRA_GIT_COMMIT=<hash from your checkout> bash scripts/device_multigpu.sh [EXPERIMENTS] [STEPS]
set -uo pipefail
experiments=${1:-s5_ptd/pathfinder,s4d/pathfinder,s5_ptd/pathx}; steps=${2:-200}
source scripts/device_env.sh
export SSM_LRA_GIT_COMMIT=${SSM_LRA_GIT_COMMIT:-unknown}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; RES=/tmp/multigpu; mkdir -p $RES
n=$(nvidia-smi -L | wc -l)
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
nvidia-smi topo -m 2>/dev/null | head -12
echo "NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-unset} (must stay 0 where NCCL runs: several GPUs)"
[ "$n" = 1 ] || [ "${NCCL_NVLS_ENABLE:-}" = 0 ] || { echo "NVLink multicast is not off: stopping"; exit 1; }
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"

cores=$(nproc)
python3 -m ssm_lra.data generate --task pathfinder32 --out /tmp/lra/pathfinder32 --num 20000 --seed 0 --workers "$cores" --no-progress || exit 1
if [[ $experiments == *pathx* ]]; then
  python3 -m ssm_lra.data generate --task pathx --out /tmp/lra/pathfinder128 --num 8000 --seed 0 --workers "$cores" --no-progress || exit 1
fi
all=$(seq -s, 0 $((n - 1)))
# On a machine of one GPU only the 1-GPU leg runs: a check of this script, with no scaling to report.
legs=$([ "$n" -gt 1 ] && echo "1 $n" || echo 1)
for exp in ${experiments//,/ }; do
  name=${exp//\//-}
  for gpus in $legs; do
    visible=$([ "$gpus" = 1 ] && echo 0 || echo "$all")
    # Evaluation only at the end, on a few batches: the steps are what is timed.
    CUDA_VISIBLE_DEVICES=$visible python3 -m ssm_lra.train experiment="$exp" data.root=/tmp/lra logger=none \
      trainer.max_steps="$steps" trainer.log_every=5 trainer.eval_every_steps=null trainer.limit_eval_batches=4 \
      trainer.checkpoint_every_minutes=null hydra.run.dir=$RES/$name-$gpus > $RES/$name-$gpus.log 2>&1
    echo "$exp on $gpus GPU(s): exit $?"; grep -h "devices:\|^error\|Done" $RES/$name-$gpus.log | cut -c1-220
  done
done
if [ "$n" -gt 1 ]; then
  python3 scripts/multigpu_report.py $RES "$n" "$experiments" "$OUT" "bash scripts/device_multigpu.sh $experiments $steps"
else
  echo "one GPU: nothing to compare; the runs are in runs.tgz"
fi
# Logs, metrics and summaries only: the checkpoints are too large to bring back.
tar czf "$OUT/runs.tgz" --exclude=checkpoints -C /tmp multigpu
