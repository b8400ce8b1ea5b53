#!/usr/bin/env bash
# On a lent GPU machine (repository root, .whl carried: scripts/device_wheels.sh), two engine checks:
#  1. S5-PTD at its published Path-X size (6 x 128, P 256, J 16, batch 32, length 16384) on generated
#     Path-X: one run is stopped by SIGTERM mid-epoch and resumed, another runs uninterrupted beside it.
#  2. Mixed precision: S4D on generated ListOps at the published size, float32 and bfloat16.
# Results (metrics, summaries, a comparison) land in $OUT.
set -uo pipefail
source scripts/device_env.sh
export SSM_LRA_GIT_COMMIT=${SSM_LRA_GIT_COMMIT:-unknown}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; RES=/tmp/res; mkdir -p $RES
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"

start=$(date +%s)
python3 -m ssm_lra.data generate --task pathx --out /tmp/lra/pathfinder128 --num 3200 --seed 0 --workers 16 --no-progress || exit 1
python3 -m ssm_lra.data generate --task listops --out /tmp/lra/listops-1000 --num 24000 --seed 0 --workers 16 --no-progress || exit 1
echo "generated in $(( $(date +%s) - start )) s"

pathx=(model=s5_ptd task=pathx data.root=/tmp/lra logger=none
  model.d_model=128 model.n_layers=6 model.norm=batch model.prenorm=true model.activation=half_glu1
  model.mixer.d_state=256 model.mixer.blocks=16 model.mixer.dt_min=0.0001
  optimizer.lr=0.0018 optimizer.ssm_lr=0.0006 optimizer.weight_decay=0.06
  trainer.batch_size=32 trainer.max_steps=240 trainer.eval_every_steps=100 trainer.limit_eval_batches=10
  trainer.log_every=10)
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.45  # two runs share the GPU
python3 -m ssm_lra.train "${pathx[@]}" hydra.run.dir=/tmp/runs/whole > /tmp/whole.log 2>&1 &
whole=$!
python3 -m ssm_lra.train "${pathx[@]}" hydra.run.dir=/tmp/runs/cut > /tmp/cut.log 2>&1 &
cut=$!
# Stop the second run once it is past step 120 (epoch 2 of 80-step epochs): mid-epoch.
while kill -0 $cut 2>/dev/null; do
  if [ -f /tmp/runs/cut/metrics.jsonl ] && python3 - <<'PY'
import json, sys
steps = [json.loads(l)["step"] for l in open("/tmp/runs/cut/metrics.jsonl") if '"train"' in l]
sys.exit(0 if steps and max(steps) >= 120 else 1)
PY
  then kill -TERM $cut; break; fi
  sleep 1
done
wait $cut; echo "interrupted run exit code: $?"
tail -3 /tmp/cut.log
python3 -m ssm_lra.train "${pathx[@]}" hydra.run.dir=/tmp/runs/cut > /tmp/resumed.log 2>&1
echo "resumed run exit code: $?"; grep -h "Resuming\|Done" /tmp/resumed.log
wait $whole; echo "uninterrupted run exit code: $?"; tail -2 /tmp/whole.log
for r in whole cut; do
  cp /tmp/runs/$r/metrics.jsonl "$RES/pathx-$r-metrics.jsonl"; cp /tmp/runs/$r/summary.json "$RES/pathx-$r-summary.json"
done
cat /tmp/cut.log /tmp/resumed.log > "$RES/pathx-cut.log"

unset XLA_PYTHON_CLIENT_MEM_FRACTION
if [ "${PRECISION:-1}" = 1 ]; then  # PRECISION=0 skips part 2
listops=(experiment=s4d/listops task=listops data.root=/tmp/lra/listops-1000 logger=none
  trainer.max_steps=1200 trainer.eval_every_steps=400 trainer.log_every=100)
for p in float32 bfloat16; do
  python3 -m ssm_lra.train "${listops[@]}" trainer.precision=$p hydra.run.dir=/tmp/runs/listops-$p > /tmp/listops-$p.log 2>&1
  echo "listops $p exit code: $?"; tail -1 /tmp/listops-$p.log
  cp /tmp/runs/listops-$p/summary.json "$RES/listops-$p-summary.json"
  cp /tmp/runs/listops-$p/metrics.jsonl "$RES/listops-$p-metrics.jsonl"
done
fi
tar czf "$OUT/engine.tgz" -C /tmp res && ls -la "$OUT"
