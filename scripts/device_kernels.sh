#!/usr/bin/env bash
# On a lent GPU machine: the measurements that decide four defaults (results/bench/NOTES.md,
# levers 8-11), in two calls of under 10 minutes each:
#   part 1: the fused scan kernels compile and agree with the XLA routes (check_fused_scan.py),
#           then single levers, forward + backward: bench_levers.py s4-kernel, mamba-scan, s4d-conv;
#   part 2: full training steps with each new route: s4 model.mixer.kernel_method=powers,
#           mamba and s5_ptd model.mixer.scan=fused (a kernel that fails shows as a crashed row),
#           s4d model.mixer.conv=chunked;
#   part 3: S4D's convolution as a recurrence kernel (conv=scan, ssm/diagonal_scan.py, lever 18):
#           checked against the FFT route, then its single-lever table (s4d-conv), per shape;
#   part 4: full training steps of the S4D presets with conv=scan, and of S4 and S4D at the
#           issue's ListOps reference configuration (6 x 256, N 4, batch 32), FFT and scan;
#   part 5: at that configuration: the recurrence kernel's tiles at N 4, profiles (and one of
#           S4D Pathfinder), S4D one way, and S4 and S4D with bfloat16 dense layers.
#   part 6: where the convolution by chunks stops beating the FFT as the states grow (lever 19:
#           +21% at N 4, -25% at N 64): S4D at the reference configuration with N 8, 16 and 32,
#           each by FFT and by chunks of 64 with TF32 products.
#   part 7: conv=auto at the reference configuration, and the dense layers without Triton GEMMs.
#   parts 8 and 9: the S5 family with and without Triton GEMMs (lever 20), then a profile of S4D
#           Pathfinder with cuBLAS products.
#   part 12: --xla_gpu_triton_gemm_any=false (cuBLAS for plain dots only) on S4D's two routes, and
#           the GLU's dense layer as two products (lever 14) again, now with cuBLAS products;
#   part 13: model.glu_products auto (two on the chunked routes) against one;
#   part 14: two products on the FFT routes where it is still open (S4 Path-X, S4D bfloat16).
#   part 16: A/B of code versions in one lease: AB_DIRS (copies of the repository, e.g. from
#           `git archive <commit>`, "." for the working tree) x AB_EXPERIMENTS, AB_ROUNDS rounds,
#           with AB_OVERRIDES for every run (AB_TAG names them); or AB_PATCHES="ab_main= ab_x=P1,P2"
#           with AB_PATCH_DIR: copies of the tree with those patches, built on the machine
#           (scripts/ab_copies.sh), AB_DIRS defaulting to their names (ab_*/ is git-ignored:
#           copies made here travel only when `carry` names them);
#   part 17: the chunked route's profiles with the optimized HLO: S4D at the ListOps reference
#           configuration (5.5% short of its target) and S4D Path-X;
#   part 18: the Path-X layers on fused kernels with their kernels' I/O counted (the issue's
#           "within 3x of the roofline"), full ceilings;
#   part 15: S4D Pathfinder's profile with every op listed and the optimized HLO, to read what
#           each fusion of its 10.6 ms step holds.
# (The few-states layout's check and full step live on branch merge-scan, which has that layout:
# results/bench/scan-modes-2026-12-03.)
# Results land in results/bench (levers under levers/), or, on a lent machine ($OUT set), packed
# as $OUT/results.tgz: a call brings back at most 8 files. Run from the repository root, carrying
# .whl:  SSM_LRA_GIT_COMMIT=<hash> bash scripts/device_kernels.sh 1   (then 2)
set -uo pipefail
part=${1:-1}
if [ -n "${OUT:-}" ]; then out=/tmp/device-kernels; else out=results/bench; fi
mkdir -p "$out/levers"
pack() { if [ -n "${OUT:-}" ]; then tar czf "$OUT/results.tgz" -C "$out" .; fi; }
trap pack EXIT
source scripts/device_env.sh
# The S4 / S4D ListOps reference configuration (the S4 repository's s4-listops.yaml).
shape="model.n_layers=6 model.d_model=256 trainer.batch_size=32"
ref="$shape model.mixer.d_state=4"  # parts 4 and 5 predate conv=auto, which runs S4D's chunks here
bench() {  # name, experiments, overrides...
  python3 -m ssm_lra.bench --experiments "$2" --steps 20 --warmup 2 --timeout "${BENCH_TIMEOUT:-120}" --max-minutes "${BENCH_MINUTES:-2.1}" \
    --ceiling-size small --out "$out" --name "$1" "${@:3}"
}
if [ "$part" = 1 ]; then
  python3 scripts/check_fused_scan.py 2>&1 | tee "$out/check-fused-scan.txt"
  timeout 150 python3 scripts/bench_levers.py s4-kernel --out "$out/levers"
  timeout 150 python3 scripts/bench_levers.py mamba-scan --out "$out/levers"
  timeout 150 python3 scripts/bench_levers.py s4d-conv --out "$out/levers"
elif [ "$part" = 3 ]; then
  python3 scripts/check_fused_scan.py --mamba 2,64,32,16 --s5 2,64,32 2>&1 | tee "$out/check-fused-scan.txt"
  # bench_levers writes its table at the end: one call per group of shapes, so that a timeout
  # loses one group only.
  timeout 170 python3 scripts/bench_levers.py s4d-conv --shapes listops-reference,pathfinder --out "$out/levers"
  timeout 170 python3 scripts/bench_levers.py s4d-conv --shapes listops --out "$out/levers"
  timeout 170 python3 scripts/bench_levers.py s4d-conv --shapes pathx --out "$out/levers"
elif [ "$part" = 4 ]; then
  bench s4d-scan s4d/listops,s4d/pathfinder,s4d/pathx model.mixer.conv=scan
  bench listops-reference s4/listops,s4d/listops $ref
  bench s4d-scan-listops-reference s4d/listops $ref model.mixer.conv=scan
elif [ "$part" = 5 ]; then
  # The ListOps reference configuration (N 4): the recurrence kernel's tiles, where the step's
  # time goes, and the rates one direction and with bfloat16 dense layers.
  timeout 170 python3 scripts/bench_levers.py s4d-conv --shapes listops-reference --variants scan --out "$out/levers"
  bench listops-reference-one-way s4d/listops $ref model.mixer.bidirectional=false
  bench listops-reference-bf16 s4/listops,s4d/listops $ref trainer.precision=bfloat16
  bench listops-reference-one-way-bf16 s4d/listops $ref model.mixer.bidirectional=false trainer.precision=bfloat16
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer="  # see device_profile.sh
  timeout 100 python3 scripts/profile_step.py --experiment s4d/listops --out "$out/profile-listops-reference" $ref
  timeout 100 python3 scripts/profile_step.py --experiment s4d/pathfinder --out "$out/profile-pathfinder"
elif [ "$part" = 6 ]; then
  # What the chunked step's 9.2 ms at N 4 are made of, then the crossover.
  chunks="model.mixer.conv=chunked model.mixer.chunk_precision=default model.mixer.chunk_size=64"
  XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=" timeout 110 python3 scripts/profile_step.py \
    --experiment s4d/listops --out "$out/profile-listops-reference-chunked" $ref $chunks
  for n in 8 16 32; do
    bench "reference-n$n-fft" s4d/listops $shape model.mixer.d_state=$n model.mixer.conv=fft
    bench "reference-n$n-chunk64" s4d/listops $shape model.mixer.d_state=$n $chunks
  done
elif [ "$part" = 7 ]; then
  # conv=auto (chunks at N <= 32 on a GPU) against the FFT at the reference configuration; every
  # product through cuBLAS instead of XLA's Triton GEMM fusions (trainer.triton_gemm, lever 20: the
  # forward dense layer ran as a Triton fusion at twice the time of the same-size cuBLAS products of
  # the backward pass); S4D one way.
  bench reference-auto s4d/listops $ref
  bench reference-fft s4d/listops $ref model.mixer.conv=fft
  bench pathfinder s4d/pathfinder trainer.triton_gemm=true
  bench reference-auto-cublas s4d/listops $ref trainer.triton_gemm=false
  bench pathfinder-cublas s4d/pathfinder trainer.triton_gemm=false
  bench reference-auto-one-way-bf16 s4d/listops $ref model.mixer.bidirectional=false trainer.precision=bfloat16
elif [ "$part" = 8 ]; then
  # Lever 20 for the S5 family (s5_ptd/pathfinder gained 8% without Triton GEMMs): the other
  # presets, each with XLA's Triton GEMMs and with cuBLAS products, pairs back to back.
  for e in s5/listops s5_ptd/listops s5/pathfinder; do
    bench "${e/\//-}-triton" "$e" trainer.triton_gemm=true
    bench "${e/\//-}-cublas" "$e" trainer.triton_gemm=false
  done
elif [ "$part" = 9 ]; then
  export BENCH_TIMEOUT=170 BENCH_MINUTES=3  # Path-X compiles and steps take longer
  for e in s5/pathx s5_ptd/pathx; do
    bench "${e/\//-}-triton" "$e" trainer.triton_gemm=true
    bench "${e/\//-}-cublas" "$e" trainer.triton_gemm=false
  done
  # What S4D Pathfinder's step (11% short of its target) is made of with cuBLAS products.
  XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=" timeout 100 python3 scripts/profile_step.py \
    --experiment s4d/pathfinder --out "$out/profile-pathfinder-cublas"
elif [ "$part" = 12 ]; then
  # The defaults first (S4D's FFT route with cuBLAS products; also the single-GPU check after
  # sharding.batch_parallel became a shard_map), then --xla_gpu_triton_gemm_any=false (plain dots to
  # cuBLAS, Triton kept for dots fused with their neighbours) on both S4D routes, then the GLU as two
  # products (run at bf9a27e by patching the model; model.glu_products=two computes the same since).
  any="--xla_gpu_triton_gemm_any=false"
  bench pathfinder s4d/pathfinder
  XLA_FLAGS="${XLA_FLAGS:-} $any" bench pathfinder-triton-any-false s4d/pathfinder trainer.triton_gemm=true
  XLA_FLAGS="${XLA_FLAGS:-} $any" bench reference-auto-any-false s4d/listops $ref
  bench s4-pathfinder s4/pathfinder
  bench pathfinder-two-products s4d/pathfinder model.glu_products=two
  bench s4-pathfinder-two-products s4/pathfinder model.glu_products=two
  bench reference-auto-two-products s4d/listops $ref model.glu_products=two
elif [ "$part" = 13 ]; then
  # model.glu_products (lever 14 as a setting, the kernel's halves sliced from one parameter):
  # auto takes two products on the chunked routes; each against one product, back to back.
  bench reference-auto s4d/listops $ref
  bench reference-one-product s4d/listops $ref model.glu_products=one
  export BENCH_TIMEOUT=170 BENCH_MINUTES=3
  bench pathx-auto s4d/pathx
  bench pathx-one-product s4d/pathx model.glu_products=one
elif [ "$part" = 14 ]; then
  # Open questions of model.glu_products on the FFT routes (auto keeps one product there): S4
  # Path-X (2% short of its target; two products lost there with Triton GEMMs, untried with
  # cuBLAS) and S4D Pathfinder with bfloat16 dense layers; pairs back to back.
  bench pathfinder-bf16-one s4d/pathfinder trainer.precision=bfloat16
  bench pathfinder-bf16-two s4d/pathfinder trainer.precision=bfloat16 model.glu_products=two
  export BENCH_TIMEOUT=170 BENCH_MINUTES=3
  bench s4-pathx-one s4/pathx
  bench s4-pathx-two s4/pathx model.glu_products=two
elif [ "$part" = 15 ]; then
  XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=" timeout 100 python3 scripts/profile_step.py \
    --experiment s4d/pathfinder --top 600 --hlo --out "$out/profile-pathfinder-hlo"
elif [ "$part" = 17 ]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer="
  timeout 120 python3 scripts/profile_step.py --experiment s4d/listops --top 600 --hlo \
    --out "$out/profile-reference-hlo" $ref
  timeout 150 python3 scripts/profile_step.py --experiment s4d/pathx --top 600 --hlo --out "$out/profile-pathx-hlo"
elif [ "$part" = 18 ]; then
  python3 -m ssm_lra.bench --experiments mamba/pathx,s5/pathx,s5_ptd/pathx --steps 20 --warmup 2 \
    --timeout 170 --max-minutes 9 --out "$out" --name pathx-fused-kernel-io
elif [ "$part" = 16 ]; then
  if [ -n "${AB_PATCHES:-}" ]; then  # build the copies here: NAME=P1,P2 ... from AB_PATCH_DIR
    bash scripts/ab_copies.sh "$AB_PATCH_DIR" $AB_PATCHES || exit 1
    AB_DIRS=${AB_DIRS:-$(for spec in $AB_PATCHES; do printf '%s ' "${spec%%=*}"; done)}
  fi
  for round in $(seq "${AB_ROUNDS:-1}"); do
    for e in ${AB_EXPERIMENTS//,/ }; do
      for d in ${AB_DIRS:-.}; do
        label=$([ "$d" = . ] && echo work || basename "$d")
        name="ab-$label-${e/\//-}${AB_TAG:+-$AB_TAG}-r$round"
        (cd "$d" && PYTHONPATH="$PWD:${PYTHONPATH#*:}" bench "$name" "$e" ${AB_OVERRIDES:-})
      done
    done
  done
else
  bench s4-powers s4/pathfinder,s4/pathx model.mixer.kernel_method=powers
  bench mamba-fused mamba/pathfinder,mamba/pathx model.mixer.scan=fused
  bench s5_ptd-fused s5_ptd/pathfinder,s5_ptd/pathx model.mixer.scan=fused
  bench s4d-chunked s4d/listops,s4d/pathfinder,s4d/pathx model.mixer.conv=chunked
fi
exit 0
