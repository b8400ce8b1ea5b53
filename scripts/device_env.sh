# Sourced by the scripts/device_*.sh, from the repository root: the Python environment of a lent
# GPU machine. The image has jax, flax, optax and orbax; the rest travels as wheels in .whl
# (scripts/device_wheels.sh), installed into /tmp/site where the imports are missing.
if ! python3 -c "import hydra, omegaconf, flax, optax, rich" 2>/dev/null && compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 SSM_LRA_CACHE=${SSM_LRA_CACHE:-/tmp/ssm_cache}
