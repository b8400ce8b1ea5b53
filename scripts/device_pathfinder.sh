#!/usr/bin/env bash
# On a lent GPU machine: generate Pathfinder-32 (hard) with all cores, then train each experiment on
# it for a fixed wall-clock budget (SIGTERM ends it cleanly after a checkpoint), evaluating every N
# steps. Run from the repository root with .whl carried (scripts/device_wheels.sh); results land in
# $OUT: <model>-metrics.jsonl, <model>-config.yaml, <model>-summary.json per experiment.
#   bash scripts/device_pathfinder.sh EXPERIMENTS SECONDS NUM_IMAGES EVAL_EVERY [extra overrides...]
# EXPERIMENTS is one preset or several, comma-separated (s5_ptd/pathfinder,s5/pathfinder).
set -uo pipefail
experiments=${1:-s4d/pathfinder}; seconds=${2:-300}; num=${3:-60000}; every=${4:-250}; shift 4 || true
source scripts/device_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
start=$(date +%s)
python3 -m ssm_lra.data generate --task pathfinder32 --out /tmp/pf32 --num "$num" --seed 0 --workers "$(nproc)" --no-progress || exit 1
echo "generated in $(( $(date +%s) - start )) s"
for experiment in ${experiments//,/ }; do
  model=${experiment%%/*}
  run=/tmp/runs/$model
  echo "== $experiment"
  timeout --signal=TERM "$seconds" python3 -m ssm_lra.train experiment="$experiment" data.root=/tmp/pf32 logger=none \
    trainer.eval_every_steps="$every" trainer.log_every=50 hydra.run.dir="$run" "$@" 2>&1 | grep -v "^\s*$" | tail -6
  cp "$run/metrics.jsonl" "$OUT/$model-metrics.jsonl"; cp "$run/.hydra/config.yaml" "$OUT/$model-config.yaml"
  [ -f "$run/summary.json" ] && cp "$run/summary.json" "$OUT/$model-summary.json"
  python3 - "$run/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for r in rows:
    if r["split"] != "train":
        print(f"{r['split']:>10} step {r['step']:>6} loss {r['loss']:.4f} acc {r['accuracy']:.4f}")
train = [r for r in rows if r["split"] == "train"]
print("train seq/s (last window):", train[-1].get("seq_per_s"), " steps:", train[-1]["step"])
PY
done
