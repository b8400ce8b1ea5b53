"""Device-only experiment (lever 14): rewrite the block's GLU as two (H, H) products in place.

device_kernels.sh copies ssm_lra/model.py aside first and restores it on exit; this never runs
on a checkout that is committed from.
"""
from pathlib import Path

MODEL = Path("ssm_lra/model.py")
ONE = "return drop(nn.glu(nn.Dense(2 * self.d_model, dtype=self.dtype)(act), axis=-1))"
TWO = ("return drop(nn.Dense(self.d_model, dtype=self.dtype)(act)"
       " * jax.nn.sigmoid(nn.Dense(self.d_model, dtype=self.dtype)(act)))")

source = MODEL.read_text()
if ONE not in source:
    raise SystemExit(f"{MODEL}: the single-product GLU line is not there; nothing patched")
MODEL.write_text(source.replace(ONE, TWO))
print(f"{MODEL}: GLU patched to two products")
