#!/usr/bin/env bash
# Copies of this working tree with patches applied, side by side, for A/B timing in one lease
# (`bash scripts/device_kernels.sh 16` with AB_DIRS naming them). Run from the repository root,
# here or on the lent machine (it needs no git):
#   bash scripts/ab_copies.sh PATCH_DIR ab_main= ab_skip=skip-in-kernel ab_all=skip-in-kernel,toeplitz-without-scatter
# Each NAME=P1,P2 becomes ./NAME: the tree without results/ and without other ab_* copies, then
# PATCH_DIR/P1.patch, PATCH_DIR/P2.patch applied in that order. An existing copy is replaced; a
# patch that does not apply exactly (no fuzz) stops the script with its name.
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,8p' "$0"; exit 2; }
patch_dir=$1; shift
command -v patch > /dev/null || { echo "ab_copies: no 'patch' program on this machine: build the copies where there is one and carry them (run's carry: [\".whl\", \"ab_main\", ...]), then name them in AB_DIRS" >&2; exit 1; }
for spec in "$@"; do
  name=${spec%%=*}; patches=${spec#*=}
  case $name in ab_*) ;; *) echo "ab_copies: copy names start with ab_ (got '$name')" >&2; exit 2 ;; esac
  rm -rf "$name"; mkdir "$name"
  tar --exclude=./results --exclude='./ab_*' --exclude=./.git --exclude=./.venv --exclude=./.whl -cf - . | tar -xf - -C "$name"
  for p in ${patches//,/ }; do
    if ! patch -d "$name" -p1 -s --fuzz=0 --no-backup-if-mismatch < "$patch_dir/$p.patch"; then
      echo "ab_copies: $p.patch does not apply to $name" >&2; exit 1
    fi
  done
  echo "$name: ${patches:-no patch}"
done
