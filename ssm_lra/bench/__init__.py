"""Benchmarks: `python -m ssm_lra.bench` times the training step of experiment presets and the
roofline of one residual block (cli.py: the command; worker.py: one experiment in its own process;
measure.py: what a worker measures; roofline.py: the arithmetic and the device's ceilings;
report.py: the tables). Method: results/bench/NOTES.md."""
