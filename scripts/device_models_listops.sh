#!/usr/bin/env bash
# On a lent GPU machine: train every model family at its published ListOps size for a few hundred
# steps on generated ListOps, and tabulate steps/s, sequences/s and peak memory.
# Run from the repository root with .whl carried (scripts/device_wheels.sh); results land in $OUT.
#   bash scripts/device_models_listops.sh [STEPS] [MODEL ...]
set -uo pipefail
steps=${1:-300}; shift || true
models=${*:-s4 s4d s4_ptd s5 s5_ptd mamba}
source scripts/device_env.sh
# The device copy has no .git: pass SSM_LRA_GIT_COMMIT=$(git rev-parse HEAD) in the command to record it.
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
python3 -m ssm_lra.data generate --task listops --out /tmp/listops --num 20000 --seed 0 --workers 16 --no-progress || exit 1
runs=()
for m in $models; do
  echo "=== $m"
  python3 -m ssm_lra.train experiment=$m/listops data.root=/tmp/listops logger=none \
    trainer.max_steps=$steps trainer.log_every=50 hydra.run.dir=/tmp/runs/$m 2>&1 | grep -v "^\s*$" | tail -4
  runs+=(/tmp/runs/$m)
  python3 scripts/run_table.py "${runs[@]}" --out "$OUT/models-listops" \
    --command "bash scripts/device_models_listops.sh $steps $models" > /dev/null
done
cat "$OUT/models-listops.md"
