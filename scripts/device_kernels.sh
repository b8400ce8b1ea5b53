#!/usr/bin/env bash
# On a lent GPU machine: the measurements that decide two defaults (results/bench/NOTES.md,
# levers 8 and 9), in one call of under 10 minutes:
#   1. the fused Mamba scan compiles and agrees with the XLA route (scripts/check_fused_scan.py);
#   2. single levers, forward + backward: bench_levers.py s4-kernel and mamba-scan;
#   3. full training steps: s4 with model.mixer.kernel_method=powers, mamba with
#      model.mixer.scan=fused (skipped if step 1 failed).
# Results land in $OUT if set, else results/bench (levers under levers/). Run from the repository
# root, carrying .whl:  SSM_LRA_GIT_COMMIT=<hash> bash scripts/device_kernels.sh
set -uo pipefail
out=${OUT:-results/bench}
mkdir -p "$out/levers"
source scripts/device_env.sh
python3 scripts/check_fused_scan.py --shape 4,2048,224,16 2>&1 | tee "$out/check-fused-scan.txt"
fused_ok=${PIPESTATUS[0]}
timeout 200 python3 scripts/bench_levers.py s4-kernel --out "$out/levers"
[ "$fused_ok" = 0 ] && timeout 200 python3 scripts/bench_levers.py mamba-scan --out "$out/levers"
python3 -m ssm_lra.bench --experiments s4/pathfinder,s4/pathx --steps 20 --warmup 2 --timeout 120 \
  --max-minutes 2.5 --out "$out" --name s4-powers model.mixer.kernel_method=powers
[ "$fused_ok" = 0 ] && python3 -m ssm_lra.bench --experiments mamba/pathfinder,mamba/pathx --steps 20 --warmup 2 \
  --timeout 120 --max-minutes 2.5 --out "$out" --name mamba-fused model.mixer.scan=fused
exit 0
