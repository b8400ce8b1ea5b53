"""The benchmark tooling: roofline arithmetic on known numbers, experiment selection, how rows
of failed workers read, the time-to-accuracy bookkeeping, and one end-to-end CPU run of
`python -m ssm_lra.bench` at smoke size."""

import gzip
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ssm_lra.bench import cli, hlo, report
from ssm_lra.bench import roofline as rl

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_tta():
    return load_script("time_to_accuracy")


# ----------------------------------------------------------------------------------------------
# Roofline arithmetic.


def test_roofline_compute_bound():
    # 2 TFLOP at 1 TFLOP/s = 2 s; 1 GB at 1 GB/s = 1 s: compute-bound, 2 s, 2000 FLOP/byte.
    r = rl.roofline(2e12, 1e9, 1e12, 1e9)
    assert r["compute_s"] == pytest.approx(2.0)
    assert r["memory_s"] == pytest.approx(1.0)
    assert r["time_s"] == pytest.approx(2.0)
    assert r["bound"] == "compute"
    assert r["intensity_flops_per_byte"] == pytest.approx(2000.0)


def test_roofline_memory_bound_and_fraction():
    # An H200-like device: 4.3e12 B/s, 50e12 FLOP/s; 8.6 GB and 1 GFLOP: 2 ms of memory traffic.
    r = rl.roofline(1e9, 8.6e9, 50e12, 4.3e12)
    assert r["bound"] == "memory"
    assert r["time_s"] == pytest.approx(2e-3)
    assert rl.achieved_fraction(r["time_s"], 8e-3) == pytest.approx(0.25)


def test_roofline_rejects_bad_rates():
    with pytest.raises(ValueError):
        rl.roofline(1.0, 1.0, 0.0, 1.0)
    with pytest.raises(ValueError):
        rl.achieved_fraction(1.0, 0.0)


def test_compulsory_layer_bytes():
    # B=2, L=3, H=4: four (B, L, H) float32 tensors = 4 * 24 * 4 B, mask 6 * 4 B, params 10 read + written.
    assert rl.compulsory_layer_bytes(2, 3, 4, 10) == 4 * 96 + 24 + 80


def test_summarize_times_known_numbers():
    s = rl.summarize_times([float(i) for i in range(1, 12)])  # 1 .. 11
    assert s["median"] == 6.0 and s["p10"] == pytest.approx(2.0) and s["p90"] == pytest.approx(10.0)
    assert s["min"] == 1.0 and s["max"] == 11.0 and s["n"] == 11 and s["mean"] == 6.0


def test_read_cost_analysis_dict_list_and_missing():
    assert rl.read_cost_analysis({"flops": 10.0, "bytes accessed": 5.0})["flops"] == 10.0
    summed = rl.read_cost_analysis([{"flops": 1.0, "bytes accessed": 2.0}, {"flops": 3.0}])
    assert summed == {"flops": 4.0, "bytes_accessed": 2.0, "transcendentals": None}
    assert rl.read_cost_analysis(None) == {"flops": None, "bytes_accessed": None, "transcendentals": None}


def test_hlo_kernels_names_the_pallas_calls():
    call = '%c{i} = f32[2] custom-call(%a), custom_call_target="__gpu$xla.gpu.triton", metadata={{op_name="jit(f)/x"}}'
    text = "\n".join([
        call.format(i=1) + ', backend_config={name = "selective_scan_forward", num_warps = 4}',
        call.format(i=2),
        '%f = f32[2] fusion(%a), kind=kLoop, metadata={op_name="triton_like_name"}',
    ])
    assert hlo.kernels(text) == ["selective_scan_forward", "?"]
    assert hlo.kernels("%f = f32[2] fusion(%a), kind=kLoop") == []


def test_hlo_kernel_io_bytes_counts_each_pallas_call_in_and_out():
    """Operands read once and results written once, for Triton calls only, with operand types taken
    from their definitions (tuples, get-tuple-element, scalars, complex and bfloat16 included)."""
    text = "\n".join([
        "%p.1 = f32[4,8]{1,0} parameter(0)",
        "%t = (bf16[2]{0}, c64[3]{0}) tuple(%x, %y)",
        "%gte.2 = c64[3]{0} get-tuple-element(%t), index=1",
        "%s = f32[] constant(1)",
        '  %custom-call.3 = (f32[4,8]{1,0}, pred[5]{0}) custom-call(%p.1, %gte.2, %s), '
        'custom_call_target="__gpu$xla.gpu.triton", metadata={op_name="jit(f)/pallas_call"}',
        '  ROOT %cc = f32[4,8]{1,0} custom-call(%p.1), custom_call_target="__cublas$lt$matmul"',
    ])
    assert hlo.type_bytes("(bf16[2]{0}, c64[3]{0})") == 2 * 2 + 3 * 8
    assert hlo.kernel_io_bytes(text) == (4 * 8 * 4 + 5) + (4 * 8 * 4 + 3 * 8 + 4)
    assert hlo.kernel_io_bytes(text.replace("xla.gpu.triton", "other")) == 0


def test_layer_cells_add_the_kernels_io_to_xlas_bytes():
    from ssm_lra.bench.report import layer_cells

    times = {"median": 1e-3, "p10": 1e-3, "p90": 1e-3}
    xla = {"flops": 2e9, "bytes_accessed": 3e6, "kernels": ["scan"], "kernel_io_bytes": 1e6}
    cells = layer_cells({"experiment": "e", "layer": {"measured_s": times, "xla": xla}})
    assert cells[1] == "2.000 (kernels' FLOPs not counted)" and cells[2] == "4.0 (kernels' I/O 1.0)"
    plain = layer_cells({"experiment": "e", "layer": {"measured_s": times, "xla": {**xla, "kernels": []}}})
    assert plain[1] == "2.000" and plain[2] == "3.0"


def test_layer_roofline_counts_the_kernels_bytes():
    """A memory-bound layer: its roofline time is (XLA's bytes + the kernels' I/O) / bandwidth, and
    the achieved fraction that roofline over the measured time."""
    from ssm_lra.bench.measure import layer_rooflines

    ceilings = {"bandwidth": {"bytes_per_s": 1e12}, "matmul_f32_default": {"flops_per_s": 1e15}}
    layer = {
        "measured_s": {"median": 8e-6},
        "xla": {"flops": 1e6, "bytes_accessed": 3e6, "kernel_io_bytes": 1e6},
        "compulsory_bytes": 2e6,
    }
    out = layer_rooflines(layer, ceilings, {})
    assert out["roofline"]["time_s"] == pytest.approx(4e-6) and out["roofline"]["bound"] == "memory"
    assert out["roofline"]["achieved_fraction"] == pytest.approx(0.5)
    assert out["floor"]["time_s"] == pytest.approx(2e-6)
    no_kernels = layer_rooflines({**layer, "xla": {**layer["xla"], "kernel_io_bytes": None}}, ceilings, {})
    assert no_kernels["roofline"]["time_s"] == pytest.approx(3e-6)


def test_small_ceilings_on_a_gpu_are_flagged():
    from ssm_lra.bench.report import ceilings_lines

    rate = lambda n: {"flops_per_s": 1e12, "n": n}  # noqa: E731
    ceilings = {
        "bandwidth": {"bytes_per_s": 1e11, "array_bytes": 16 << 20},
        "matmul_f32_default": rate(256), "matmul_f32_highest": rate(256), "matmul_bf16": rate(256),
    }
    flagged = lambda env: any("--ceiling-size small" in line for line in ceilings_lines(env))  # noqa: E731
    assert flagged({"ceilings": ceilings, "ceiling_size": "small", "platform": "gpu"})
    assert not flagged({"ceilings": ceilings, "ceiling_size": "small", "platform": "cpu"})
    assert not flagged({"ceilings": ceilings, "ceiling_size": "full", "platform": "gpu"})


@pytest.mark.parametrize("platform, caption", [("gpu", True), ("cpu", False)])
def test_console_roofline_table_says_when_its_ceilings_are_small(platform, caption, capsys):
    from ssm_lra.bench.report import print_tables

    print_tables({"environment": {"ceiling_size": "small", "platform": platform}, "rows": []})
    out = " ".join(capsys.readouterr().out.split())
    assert "roofline" in out
    assert ("ceilings measured at small sizes" in out) is caption


def test_hlo_has_loops():
    assert hlo.has_loops("%while.3 = (s32[], f32[4]) while(%tuple.1), condition=%c, body=%b")
    assert not hlo.has_loops("%fusion = f32[4] fusion(%p), kind=kLoop, calls=%while_like_name")


# ----------------------------------------------------------------------------------------------
# Experiment selection and rows.

AVAILABLE = ["mamba/listops", "s4d/listops", "s4d/pathx", "s5/listops", "s5/pathfinder"]


def test_select_explicit_and_unknown():
    assert cli.select_experiments(AVAILABLE, ["s5/listops", "s4d/pathx"], [], []) == (["s5/listops", "s4d/pathx"], [])
    with pytest.raises(cli.BenchError, match="s4d/text"):
        cli.select_experiments(AVAILABLE, ["s4d/text"], [], [])
    with pytest.raises(cli.BenchError):
        cli.select_experiments(AVAILABLE, ["s5/listops"], ["s5"], [])


def test_select_cross_product_keeps_what_exists():
    selected, missing = cli.select_experiments(AVAILABLE, [], ["s5", "mamba"], ["listops", "pathx"])
    assert selected == ["s5/listops", "mamba/listops"]
    assert missing == ["s5/pathx", "mamba/pathx"]
    with pytest.raises(cli.BenchError, match="nosuchmodel"):
        cli.select_experiments(AVAILABLE, [], ["nosuchmodel"], [])


def test_select_defaults_cheap_tasks_first():
    selected, missing = cli.select_experiments(AVAILABLE, [], [], [])
    assert selected == ["mamba/listops", "s4d/listops", "s5/listops", "s5/pathfinder", "s4d/pathx"]
    assert missing == []


def test_experiment_overrides_order():
    out = cli.experiment_overrides(True, 7, ["model.d_model=32"])
    assert out[: len(cli.SMOKE_OVERRIDES)] == list(cli.SMOKE_OVERRIDES)
    assert out[-2:] == ["trainer.batch_size=7", "model.d_model=32"]  # the user's come last and win


def test_finish_row_of_failed_workers():
    # Nothing written: the worker died before composing the config.
    row = cli.finish_row("s5/listops", None, "Traceback ...", "worker exited with code 1")
    assert row["status"] == "crashed" and "Traceback" in row["error"]
    # Killed during the step.
    row = cli.finish_row("s5/pathx", {"experiment": "s5/pathx", "status": "running"}, "", "timeout after 150 s")
    assert row["status"] == "timeout"
    # The step finished, the layer did not.
    done = {"experiment": "s5/pathx", "status": "ok", "step": {"params": 1}}
    row = cli.finish_row("s5/pathx", done, "", "killed by signal 9 (host out of memory?)")
    assert row["status"] == "ok" and row["layer_status"] == "crashed"
    # A worker that recorded an OOM itself and ended normally is left as it said.
    oom = {"experiment": "mamba/pathx", "status": "OOM", "error": "RESOURCE_EXHAUSTED", "layer_status": "ok"}
    assert cli.finish_row("mamba/pathx", dict(oom), "", None) == oom


def test_failure_status_recognizes_oom():
    from ssm_lra.bench.worker import failure_status
    from ssm_lra.errors import ConfigError

    assert failure_status(RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")) == "OOM"
    assert failure_status(ValueError("shapes do not match")) == "failed"
    assert failure_status(ConfigError("bad")) == "config error"


def test_device_slug():
    assert report.device_slug("NVIDIA H200") == "nvidia-h200"
    assert report.device_slug(None) == "unknown-device"


def test_cli_rejects_unknown_experiment():
    proc = subprocess.run(
        [sys.executable, "-m", "ssm_lra.bench", "--experiments", "nosuch/listops"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: no experiment preset nosuch/listops")


# ----------------------------------------------------------------------------------------------
# Time to accuracy.


def test_tta_split_lines_keeps_partial_record():
    tta = load_tta()
    lines, rest = tta.split_lines("", '{"a": 1}\n{"b"')
    assert lines == ['{"a": 1}'] and rest == '{"b"'
    lines, rest = tta.split_lines(rest, ': 2}\n')
    assert lines == ['{"b": 2}'] and rest == ""


def test_tta_summarize_run():
    tta = load_tta()
    seen = [
        ({"split": "train", "step": 50, "loss": 0.7}, 30.0),
        ({"split": "validation", "step": 500, "accuracy": 0.6}, 120.0),
        ({"split": "validation", "step": 1000, "accuracy": 0.81}, 240.0),
    ]
    row = tta.summarize_run(seen, 0.8, "target", None)
    assert row["status"] == "reached" and row["minutes_to_target"] == pytest.approx(4.0)
    assert row["minutes_to_target_from_process_start"] == pytest.approx(4.0)
    assert row["step_at_target"] == 1000 and row["first_train_record_seen_s"] == 30.0
    assert row["timing_source"].startswith("seen")
    # The engine's own time_s is the primary figure; when the record was seen is kept beside it.
    timed = [({"split": "validation", "step": 500, "accuracy": 0.9, "time_s": 60.0}, 90.0)]
    row = tta.summarize_run(timed, 0.8, "target", None)
    assert row["minutes_to_target"] == pytest.approx(1.0) and row["timing_source"].startswith("record time_s")
    assert row["minutes_to_target_from_process_start"] == pytest.approx(1.5)
    assert tta.summarize_run(seen[:2], 0.8, "time limit", None)["status"] == "not reached (time limit)"
    assert tta.summarize_run(seen[:2], 0.8, None, 0)["status"] == "not reached (training ended)"
    assert tta.summarize_run([], 0.8, None, 1)["status"] == "failed (exit code 1)"


# A stand-in for a training run: one train record, then, when stopped (SIGTERM), the evaluation it
# was in the middle of, written on its way out.
STOPPED_RUN = r"""
import json, signal, sys, time
path = sys.argv[1]
def finish(*_):
    with open(path, "a") as f:
        f.write(json.dumps({"split": "validation", "step": 2, "accuracy": 0.9, "time_s": 1.5}) + "\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, finish)
with open(path, "a") as f:
    f.write(json.dumps({"split": "train", "step": 1, "loss": 0.7, "time_s": 0.5}) + "\n")
while True:
    time.sleep(0.05)
"""


def test_tta_counts_records_a_run_writes_after_the_time_limit(tmp_path):
    tta = load_tta()
    metrics = tmp_path / "metrics.jsonl"
    cmd = [sys.executable, "-c", STOPPED_RUN, str(metrics)]
    row = tta.watch_run(cmd, tmp_path, tmp_path / "log.txt", target=0.8, max_s=2.0, poll_s=0.05)
    assert row["stopped_by"] == "time limit"
    assert row["status"] == "reached" and row["step_at_target"] == 2
    assert row["minutes_to_target"] == pytest.approx(1.5 / 60)
    assert [c["step"] for c in row["validation"]] == [2]


# ----------------------------------------------------------------------------------------------
# End to end on CPU.


def test_bench_smoke_end_to_end(tmp_path):
    cmd = [
        sys.executable, "-m", "ssm_lra.bench", "--smoke", "--experiments", "s4d/listops",
        "--steps", "3", "--warmup", "1", "--out", str(tmp_path), "--name", "smoke",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((tmp_path / "smoke.json").read_text())
    md = (tmp_path / "smoke.md").read_text()

    env = doc["environment"]
    assert env["platform"] == "cpu" and env["jax_version"] and env["flax_version"] and env["python_version"]
    assert env["ceilings"]["bandwidth"]["bytes_per_s"] > 0
    assert all(env["ceilings"][k]["flops_per_s"] > 0 for k in ("matmul_f32_default", "matmul_f32_highest", "matmul_bf16"))
    assert doc["command"].startswith("python -m ssm_lra.bench --smoke")
    assert [r["experiment"] for r in doc["rows"]] == ["s4d/listops"]
    for row in doc["rows"]:
        assert row["status"] == "ok" and row["layer_status"] == "ok", row
        assert (row["batch_size"], row["seq_len"], row["d_model"], row["n_layers"]) == (4, 64, 16, 1)
        assert "--xla_gpu_enable_triton_gemm=false" in row["xla_flags"]  # S4D's FFT route: trainer.triton_gemm=auto
        assert row["routes"] == {"conv": "fft", "glu_products": "one"}  # conv=auto off a GPU
        step = row["step"]
        assert step["params"] > 0 and step["compile_s"] > 0 and step["loss_finite"]
        times = step["step_s"]
        assert times["n"] == 3 and 0 < times["min"] <= times["p10"] <= times["median"] <= times["p90"] <= times["max"]
        assert step["seq_per_s"] == pytest.approx(4 / times["median"])
        assert step["tokens_per_s"] == pytest.approx(4 * 64 / times["median"])
        assert step["back_to_back_seq_per_s"] == pytest.approx(4 / step["back_to_back_step_s"])
        rounds = step["back_to_back_rounds_s"]
        assert len(rounds) == 3 and step["back_to_back_steps"] == 3
        assert step["back_to_back_step_s"] == pytest.approx(sorted(rounds)[1] / 3)
        # No bound against the waited steps: on a loaded CPU either can be the slower.
        assert 0 < step["back_to_back_step_s"] < float("inf")
        assert step["step_cost"]["flops"] > 0
        layer = row["layer"]
        assert layer["xla"]["flops"] > 0 and layer["xla"]["bytes_accessed"] > 0
        assert 0 < layer["params"] < step["params"]
        assert layer["roofline"]["time_s"] > 0 and layer["roofline"]["achieved_fraction"] > 0
        assert layer["roofline"]["achieved_fraction"] == pytest.approx(
            layer["roofline"]["time_s"] / layer["measured_s"]["median"]
        )
        assert row["experiment"] in md
    assert "Command:" in md and "Measured ceilings" in md and env["jax_version"] in md
    assert "- s4d/listops: `" in md and "--xla_gpu_enable_triton_gemm=false" in md
    assert "- s4d/listops: conv=fft, glu_products=one" in md


def test_time_back_to_back_runs_each_step_once_in_order():
    from ssm_lra.bench.measure import time_back_to_back

    def step(state, batch):
        return state * 2 + batch, {"loss": state}

    state, metrics, seconds = time_back_to_back(step, 1, 1, steps=3)
    assert (state, metrics["loss"]) == (15, 7) and seconds >= 0


def test_back_to_back_rounds_carry_the_state_and_the_cell_shows_median_and_range():
    from ssm_lra.bench.measure import time_back_to_back_rounds
    from ssm_lra.bench.report import back_to_back_cell

    def step(state, batch):
        return state + batch, {"loss": state}

    state, metrics, seconds = time_back_to_back_rounds(step, 0, 1, steps=4, rounds=3)
    assert (state, metrics["loss"]) == (12, 11) and len(seconds) == 3
    cell = back_to_back_cell(
        {"batch_size": 10, "back_to_back_steps": 5, "back_to_back_seq_per_s": 100.0, "back_to_back_rounds_s": [0.4, 0.5, 0.25]}
    )
    assert cell == "100 (100-200)"
    assert back_to_back_cell({"back_to_back_seq_per_s": 1234.0}) == "1,234"


# ----------------------------------------------------------------------------------------------
# Real data against random inputs.


def test_real_vs_random_windows_skip_evaluations_and_compare_medians():
    rvr = load_script("real_vs_random")
    records = [
        {"split": "train", "step": 50, "time_s": 20.0},  # compilation before it: no window ends here
        {"split": "train", "step": 100, "time_s": 21.0},  # 50 steps x 4 / 1 s = 200
        {"split": "train", "step": 150, "time_s": 23.0},  # 100
        {"split": "validation", "step": 150, "time_s": 30.0},
        {"split": "train", "step": 200, "time_s": 31.0},  # holds the evaluation: left out
        {"split": "train", "step": 250, "time_s": 32.0},  # 200
    ]
    assert rvr.training_windows(records, batch_size=4) == [200.0, 100.0, 200.0]
    assert rvr.training_windows(records, batch_size=4, from_step=150) == [200.0]
    assert rvr.bench_rate({"step": {"seq_per_s": 90.0, "back_to_back_seq_per_s": 110.0}}) == (110.0, "back to back")
    assert rvr.bench_rate({"step": {"seq_per_s": 90.0}}) == (90.0, "waited steps")
    result = rvr.compare([200.0, 100.0, 200.0], bench_rate=205.0)
    assert result["real_median"] == 200.0 and result["within_5_percent"]
    assert not rvr.compare([180.0], bench_rate=200.0)["within_5_percent"]
    with pytest.raises(ValueError):
        rvr.compare([], bench_rate=200.0)


# ----------------------------------------------------------------------------------------------
# Single-lever micro-benchmarks: every variant of a lever computes the same thing.


# Levers whose variants are code that lives only in the script or are still to be measured on a
# GPU (the others' results are in results/bench/levers).
@pytest.mark.parametrize(
    "lever, dims, rtol",
    [
        ("conv-layout", (2, 37, 3), 1e-5),  # the rfft and packed FFT forms exist only in the script
        ("conv-layout", (3, 20, 2), 1e-5),  # an odd batch: the default pairs it with a zero row
        ("glu", (2, 7, 4), 1e-5),
        # float32: the Cauchy route's gradient with respect to log_dt is itself about 1e-3 from
        # float64 (the powers route's 1e-5); tests/ssm/test_s4.py compares the two in float64.
        ("s4-kernel", (3, 8, 40), 1e-2),
        ("mamba-scan", (2, 20, 8, 4), 1e-4),  # the fused kernel interpreted, off a GPU
        ("s4d-conv", (2, 40, 3, 8), 1e-5),  # on CPU the "default" precision is float32 too
    ],
)
def test_bench_levers_variants_agree_at_small_shapes(lever, dims, rtol):
    levers = load_script("bench_levers")
    rows = levers.measure(levers.LEVERS[lever], "tiny", dims, steps=1)
    assert len(rows) >= 2 and all(r["median_ms"] > 0 for r in rows)
    assert max(r["max_rel_diff"] for r in rows) < rtol, rows


# ----------------------------------------------------------------------------------------------
# scripts/profile_step.py: the pure functions that turn a trace into per-op and per-part times.


def test_profile_busy_time_is_the_union_of_kernel_intervals():
    prof = load_script("profile_step")
    events = [{"ts": 0.0, "dur": 10.0}, {"ts": 5.0, "dur": 10.0}, {"ts": 30.0, "dur": 5.0}, {"ts": 31.0, "dur": 1.0}]
    assert prof.busy_time_us(events) == 20.0  # [0, 15] and [30, 35]


def test_profile_model_part_drops_layer_indices_and_marks_the_backward_pass():
    prof = load_script("profile_step")
    fwd = "jit(train_step)/jvp(SequenceClassifier)/block_3/S4D/within_chunks/dot_general"
    bwd = "jit(train_step)/transpose(jvp(SequenceClassifier))/block_0/S4D/jvp(scan_over_chunks)/add_any"
    assert prof.model_part(fwd) == "fwd block/S4D/within_chunks"
    assert prof.model_part(bwd) == "bwd block/S4D/scan_over_chunks"
    assert prof.model_part("jit(train_step)/reduce_and").endswith("(outside modules)")


def test_profile_summary_names_kernels_inside_command_buffers_by_their_fusion():
    prof = load_script("profile_step")
    hlo_text = "\n".join([
        '  %loop_add_fusion.5 = f32[4]{0} fusion(f32[4]{0} %p), kind=kLoop, calls=%c, '
        'metadata={op_name="jit(train_step)/jvp(SequenceClassifier)/block_1/OutputActivation/add"}',
        '  %cublas-lt-matmul.2 = (f32[4]{0}, s8[8]{0}) custom-call(f32[4]{0} %a), custom_call_target="__cublas$lt$matmul", '
        'metadata={op_name="jit(train_step)/transpose(jvp(SequenceClassifier))/block_0/OutputActivation/Dense/dot_general"}',
    ])
    ops = hlo.instructions(hlo_text)
    assert ops["loop_add_fusion.5"]["detail"] == "kLoop"
    assert ops["cublas-lt-matmul.2"]["detail"] == "__cublas$lt$matmul"
    events = [
        {"ts": 0.0, "dur": 2.0, "name": "loop_add_fusion_5", "args": {"hlo_op": "command_buffer_1"}},
        {"ts": 4.0, "dur": 6.0, "name": "sm90_xmma_gemm", "args": {"hlo_op": "cublas-lt-matmul.2"}},
        {"ts": 10.0, "dur": 2.0, "name": "loop_add_fusion_5", "args": {"hlo_op": "command_buffer_1"}},
    ]
    summary = prof.summarize(events, ops, steps=2)
    by_op = {r["op"]: r for r in summary["ops"]}
    assert by_op["loop_add_fusion_5"]["ms_per_step"] == pytest.approx(0.002)
    assert by_op["loop_add_fusion_5"]["part"] == "fwd block/OutputActivation"
    assert by_op["cublas-lt-matmul.2"]["part"] == "bwd block/OutputActivation/Dense"
    assert summary["busy_ms_per_step"] == pytest.approx(0.005)
    assert summary["ops"][0]["op"] == "cublas-lt-matmul.2"  # the largest first


# ----------------------------------------------------------------------------------------------
# scripts/hlo_traffic.py: a profile's times next to the bytes its HLO says each op moves.

TRAFFIC_HLO = """HloModule jit_train_step

%fused_add (param_0: f32[1000,250], param_1: f32[250]) -> f32[1000,250] {
  %param_0 = f32[1000,250]{1,0} parameter(0)
  %param_1 = f32[250]{0} parameter(1)
  %broadcast.1 = f32[1000,250]{1,0} broadcast(%param_1), dimensions={1}
  ROOT %add.1 = f32[1000,250]{1,0} add(%param_0, %broadcast.1), metadata={op_name="x"}
}

ENTRY %main (x: f32[1000,250], b: f32[250], t: s32[1000]) -> f32[1000,250] {
  %x = f32[1000,250]{1,0} parameter(0)
  %b = f32[250]{0} parameter(1)
  %t = s32[1000]{0} parameter(2)
  %loop_add_fusion = f32[1000,250]{1,0} fusion(%x, /*index=1*/%b), kind=kLoop, calls=%fused_add, metadata={op_name="jit(train_step)/jvp(SequenceClassifier)/block_1/add"}
  %custom-call.2 = (f32[1000,250]{1,0}, s8[4096]{0}) custom-call(%loop_add_fusion), custom_call_target="__cublas$lt$matmul", metadata={op_name="jit(train_step)/jvp(SequenceClassifier)/block_0/Dense/dot_general"}
  %gte = f32[1000,250]{1,0} get-tuple-element(%custom-call.2), index=0
  ROOT %scatter = f32[250]{0} scatter(%b, %t, %gte), metadata={op_name="jit(train_step)/transpose(jvp(SequenceClassifier))/block_1/take (x)"}
}
"""

TRAFFIC_MD = """## Top 3 operations

| op | kind | ms per step | launches | part | kernels |
|---|---|---|---|---|---|
| loop_add_fusion | fusion kLoop | 0.002 | 1 | `fwd block` | loop_add_fusion |
| custom-call.2 | custom-call __cublas$lt$matmul | 0.004 | 2 | `fwd block/Dense` | sm90_gemm |
| scatter | scatter | 0.010 | 1 | `bwd block` | scatter |
| not_in_hlo | fusion kLoop | 0.5 | 1 | `fwd block` | x |
"""


def test_hlo_instruction_io_reads_operands_once_and_skips_library_workspace():
    io = hlo.instruction_io(TRAFFIC_HLO)
    array, row = 1000 * 250 * 4, 250 * 4
    assert io["loop_add_fusion"] == (array + row, array)  # the /*index*/ comment is not an operand
    assert io["custom-call.2"] == (array, array)  # the s8 workspace is not a result
    assert io["scatter"] == (row + 1000 * 4 + array, row)  # metadata's parentheses end nothing
    assert io["broadcast.1"] == (row, array)  # fused computations' instructions too


def test_hlo_traffic_rows_order_and_fusion_body(tmp_path, capsys):
    traffic = load_script("hlo_traffic")
    rows = traffic.traffic_rows(traffic.profile_ops(TRAFFIC_MD), TRAFFIC_HLO)
    assert [r["op"] for r in rows] == ["loop_add_fusion", "custom-call.2", "scatter"]
    add = rows[0]
    assert add["mb_in"] == pytest.approx(1.001) and add["mb_out"] == pytest.approx(1.0)
    assert add["tb_s"] == pytest.approx(2.001e6 / 2e-6 / 1e12)
    assert hlo.entry_order(TRAFFIC_HLO, "block_1/") == ["loop_add_fusion", "scatter"]
    body = hlo.called_computation(TRAFFIC_HLO, "loop_add_fusion")
    assert body.startswith("%fused_add (") and "ROOT %add.1" in body and "metadata" not in body
    with pytest.raises(KeyError):
        hlo.called_computation(TRAFFIC_HLO, "nope")
    md = tmp_path / "profile-x.md"
    md.write_text(TRAFFIC_MD)
    assert traffic.main([str(md)]) == 2  # no HLO next to it: a clear error
    assert "not found" in capsys.readouterr().err
    (tmp_path / "profile-x.hlo.txt.gz").write_bytes(gzip.compress(TRAFFIC_HLO.encode()))
    assert traffic.main([str(md), "--below", "1.0"]) == 0
    out = capsys.readouterr().out
    assert "scatter" in out and "loop_add_fusion" not in out  # 0.1 TB/s kept, 1 TB/s dropped
    assert traffic.main([str(md), "--order", "block_1/"]) == 0
    out = capsys.readouterr().out
    assert out.index("loop_add_fusion") < out.index("scatter") and "custom-call.2" not in out


def test_ab_copies_builds_patched_copies_without_results(tmp_path):
    """scripts/ab_copies.sh: NAME=P1,P2 copies the tree (not results/, not other copies) and
    applies the patches in order; a patch that does not apply, or a name without ab_, stops it."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "ab_copies.sh"
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\ny = 2\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "big.json").write_text("{}")
    patches = tmp_path / "patches"
    patches.mkdir()
    (patches / "one.patch").write_text("--- a/pkg/a.py\n+++ b/pkg/a.py\n@@ -1,2 +1,2 @@\n-x = 1\n+x = 10\n y = 2\n")
    (patches / "two.patch").write_text("--- a/pkg/a.py\n+++ b/pkg/a.py\n@@ -1,2 +1,2 @@\n x = 10\n-y = 2\n+y = 20\n")
    run = lambda *args: subprocess.run(["bash", str(script), str(patches), *args], cwd=tmp_path, capture_output=True, text=True)
    done = run("ab_base=", "ab_both=one,two")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "ab_base" / "pkg" / "a.py").read_text() == "x = 1\ny = 2\n"
    assert (tmp_path / "ab_both" / "pkg" / "a.py").read_text() == "x = 10\ny = 20\n"
    assert not (tmp_path / "ab_both" / "results").exists() and not (tmp_path / "ab_both" / "ab_base").exists()
    bad = run("ab_bad=two")  # two.patch needs one.patch first
    assert bad.returncode == 1 and "two.patch does not apply to ab_bad" in bad.stderr
    assert run("base=").returncode == 2
