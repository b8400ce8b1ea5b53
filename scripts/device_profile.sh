#!/usr/bin/env bash
# On a lent GPU machine: where each preset's training step spends its device time
# (scripts/profile_step.py: per HLO operation and per model part, from a jax.profiler trace).
# Run from the repository root with .whl carried; the tables land in $OUT (else results/bench/profiles):
#   bash scripts/device_profile.sh s4d/pathfinder,s4/pathfinder [overrides...]
set -uo pipefail
experiments=${1:-s4d/pathfinder}; shift || true
source scripts/device_env.sh
out=${OUT:-results/bench/profiles}
# Without command buffers every kernel carries the HLO instruction it ran (inside one, cuFFT and
# cuBLAS kernels cannot be told apart); the step is then a few percent slower, not differently made.
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer="
for experiment in ${experiments//,/ }; do
  timeout 150 python3 scripts/profile_step.py --experiment "$experiment" --out "$out" "$@" || echo "$experiment: profile failed or timed out"
done
