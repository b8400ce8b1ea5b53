#!/usr/bin/env bash
# On a lent GPU machine: one segment of the time-to-accuracy runs (scripts/time_to_accuracy.py),
# S5-PTD and S4D on generated Pathfinder-32 (hard). A lease gives 30 device minutes a session and
# reaching 80% takes longer, so each model's run directory lives in .tta/<model> and continues
# wherever the last segment stopped: carry .tta (and .whl) in the call, then unpack what comes back
#   cat /work/.device/N/tta-runs.tar.part-* | tar xf -     # in the repository root: the new .tta
# Run from the repository root:
#   bash scripts/device_tta.sh MINUTES_PER_MODEL MODELS [NUM_IMAGES] [EVAL_EVERY] [overrides...]
# The data is generated again in each segment: same seed, so the same images (about 100 s for
# 100,000 with 16 workers), and the same 80/10/10 split.
set -uo pipefail
minutes=${1:-8}; models=${2:-s5_ptd,s4d}; num=${3:-100000}; every=${4:-625}; shift 4 2>/dev/null || shift $#
source scripts/device_env.sh
out=${OUT:-results/tta}
mkdir -p "$out" .tta
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
python3 scripts/time_to_accuracy.py --models "$models" --data /tmp/pf32 --generate "$num" --workers "$(nproc)" \
  --target 0.8 --max-minutes "$minutes" --eval-every "$every" --resume-dir .tta --out "$out/tta" \
  trainer.log_every=50 "$@"
# What comes back from a lease is at most 16 MiB a file: pack the run directories in 15 MiB parts,
# without the best checkpoints (a resume needs only latest; carrying both would pass the 64 MiB
# that travels to the device).
if [ -n "${OUT:-}" ]; then tar cf - --exclude='*/checkpoints/best' .tta | split -b 15M - "$OUT/tta-runs.tar.part-"; fi
