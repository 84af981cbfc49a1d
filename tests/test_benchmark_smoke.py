"""The benchmark scripts run: anchors.py's tiny workloads (nnjax and raw JAX, one short repeat), lm_throughput.py,
cpu_bounds.py, and (slow) kernels.py's CNN rows and gpu_run.sh end to end on CPU."""

import importlib.util
import os
import pathlib
import statistics
import subprocess
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "anchors.py"


def load():
    spec = importlib.util.spec_from_file_location("nnjax_anchors_benchmark", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # benchmark smoke runs: CI's slow pass
def test_tiny_workloads_for_nnjax_and_raw_jax(tmp_path):
    anchors = load()
    impls = "jax,nnjax,nnjax_loop,nnjax_scan,nnjax_fit_all"
    args = anchors.parse_args(
        [
            "--quick",
            "--only",
            "tiny,tiny_fused",
            "--impls",
            impls,
            "--repeats",
            "1",
            "--target-s",
            "0.02",
            "--out",
            str(tmp_path / "results.md"),
        ]
    )
    results, text = anchors.run_benchmark(args)

    keys = {wl: [im.key for im in w.impls] for wl, w in results.items()}
    assert keys == {"tiny": ["jax", "nnjax"], "tiny_fused": ["jax_loop", "nnjax_loop", "nnjax_scan", "nnjax_fit_all"]}
    for w in results.values():
        for im in w.impls:
            assert im.err is None, (im.key, im.err)
            assert len(im.samples) == 1 and im.samples[0] > 0, im.key
    # a fused step is faster than a dispatched one (by far; the target is 10x, assert only 2x here)
    fused = results["tiny_fused"]
    assert fused.median("nnjax_scan") * 2 < fused.median("nnjax_loop")

    assert "## tiny\n" in text and "## tiny_fused\n" in text
    assert "| `jax` raw JAX + optax (jit, donate) |" in text
    assert "| `nnjax` nnjax: make_train_step" in text
    assert "| `nnjax_fit_all` nnjax: fit(fused='all')" in text
    assert "| tiny MLP step: `nnjax` / `jax` |" in text
    assert "machine:" in text and "jax 0." in text
    ratio_row = next(line for line in text.splitlines() if line.startswith("| `nnjax` "))
    assert float(ratio_row.split("|")[4].strip().rstrip("x")) > 0
    assert statistics.median(results["tiny"].impls[0].samples) > 0
    assert not (tmp_path / "results.md").exists()  # run_benchmark only reports; main() writes


def test_parse_args_quick_defaults_and_unknown_workload():
    anchors = load()
    args = anchors.parse_args(["--quick", "--only", "tiny"])
    assert args.workloads == ["tiny"] and args.repeats == 2 and args.target_s == 0.05
    assert anchors.parse_args([]).workloads == anchors.WORKLOADS
    try:
        anchors.parse_args(["--only", "nope"])
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("unknown workload accepted")


def _load_lm():
    path = BENCH.parent / "lm_throughput.py"
    spec = importlib.util.spec_from_file_location("nnjax_lm_throughput", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lm_throughput_flop_count_by_hand():
    lm = _load_lm()
    # one layer, d 2, MLP 3, T 5, V 7: 8*4 + 4*2*3 + 4*5*2 = 96 per layer, + 2*2*7 = 28; x3 for training
    assert lm.model_flops_per_token(vocab=7, seq=5, d_model=2, layers=1, mlp=3) == 3 * (96 + 28)


@pytest.mark.slow  # benchmark smoke runs: CI's slow pass
def test_lm_throughput_tiny_run_reports_consistent_figures(tmp_path):
    lm = _load_lm()
    result = lm.main(
        ["--size", "tiny", "--steps", "2", "--repeats", "1", "--peak-n", "256", "--out", str(tmp_path / "lm.md")]
    )
    config = lm.SIZES["tiny"]
    tokens = config["batch"] * config["seq"]
    assert result["tokens_per_s"] > 0 and 0 < result["mfu"] < 1
    assert abs(result["tokens_per_s"] * result["step_ms"] / 1e3 - tokens) < 1e-6 * tokens
    assert abs(result["model_tflops_per_step"] - lm.model_flops_per_token(**config) * tokens / 1e12) < 1e-12
    # XLA counts every matmul of the step and the elementwise work too: at least the model's matmul FLOPs
    assert result["xla_tflops_per_step"] >= 0.95 * result["model_tflops_per_step"]
    assert 5.0 < result["loss"] < 8.0  # about log(512) = 6.24 for an untrained model
    assert "| step ms | tokens/s |" in (tmp_path / "lm.md").read_text()


def load_script(name):
    path = BENCH.parent / name
    spec = importlib.util.spec_from_file_location(f"nnjax_bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # benchmark smoke runs: CI's slow pass
def test_cpu_bounds_flops_and_rows():
    bounds = load_script("cpu_bounds.py")
    # 784-512-512-10 at batch 128: forward and weight gradient of each layer, input gradient of the last two
    forward = 2 * 128 * (784 * 512 + 512 * 512 + 512 * 10)
    assert bounds.mlp_dot_flops() == 2 * forward + 2 * 128 * (512 * 512 + 512 * 10)
    assert bounds.mlp_dot_flops((4, 8, 1), 2) == 2 * (2 * 2 * (4 * 8 + 8 * 1)) + 2 * 2 * 8 * 1

    text = bounds.main(["--quick"])
    rows = {
        line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ") and "---" not in line
    }
    for name in ["peak", "mlp_dots", "mlp_adam", "lstm_h@W", "lstm_dz@W^T", "lstm_W^T@h^T", "lstm_W@dz^T"]:
        assert float(rows[name].split("|")[2]) > 0, name
    assert "669,706 parameters" in rows["mlp_adam"]
    assert bounds.mlp_parameters() == 784 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10 == 669_706
    for name in ["lstm_h@W", "lstm_W@dz^T"]:  # per-matmul figures agree with the row's time: 64 matmuls per scan
        _, _, ms, note, _ = rows[name].split("|")
        per_matmul_us, gflops = float(note.split()[0]), float(note.split(",")[1].split()[0])
        assert abs(per_matmul_us * 64 / 1e3 - float(ms)) <= 0.5 * 64 / 1e3 + 1e-3, rows[name]
        assert abs(gflops - 2 * 32 * 256 * 1024 / per_matmul_us / 1e3) <= 0.02 * gflops + 1, rows[name]


@pytest.mark.slow
def test_gpu_run_script_runs_end_to_end_on_cpu(tmp_path):
    """benchmarks/gpu_run.sh as a GPU machine runs it, here with the tiny LM and one test file."""
    root = BENCH.parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}  # the inner pytest starts clean
    env.update(LM_SIZE="tiny", DEEP_SIZE="tiny", PYTHON=sys.executable, GPU_RUN_TESTS="tests/test_precision.py")
    run = subprocess.run(
        ["bash", "benchmarks/gpu_run.sh", str(tmp_path)], cwd=root, env=env, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stderr
    for part in ("lm_throughput", "deep_models", "anchors", "tests"):
        assert f"{part}: exit 0" in run.stdout, run.stdout
    assert "tokens/s" in (tmp_path / "results-gpu-lm.md").read_text()
    assert "| remat policy |" in (tmp_path / "results-gpu-deep-models.md").read_text()
    assert "## targets" in (tmp_path / "results-gpu-anchors.md").read_text()
    assert " passed" in (tmp_path / "tests.log").read_text()
    assert "jax " in (tmp_path / "env.txt").read_text()


@pytest.mark.slow  # about 30 s: five CNN steps compiled
def test_kernels_benchmark_runs_every_row_of_a_workload():
    spec = importlib.util.spec_from_file_location("nnjax_kernels_benchmark", BENCH.parent / "kernels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--repeats", "1", "--steps", "1", "--scan-steps", "0", "--only", "cnn"])
    assert list(results) == ["cnn step"]
    assert set(results["cnn step"]) == {"cpu", "generic", "cpu - conv", "cpu - max_pool", "cpu - compiler_options"}
    assert all(ms > 0 for ms in results["cnn step"].values())


@pytest.mark.slow  # benchmark smoke runs: CI's slow pass
def test_finetune_benchmark_rows():
    spec = importlib.util.spec_from_file_location("nnjax_finetune_benchmark", BENCH.parent / "finetune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    times = module.main(["--repeats", "1", "--target-s", "0.01"])
    assert list(times) == list(module.ROWS) and all(len(t) == 1 and t[0] > 0 for t in times.values())


def _deep_result(scale=1.0):
    """Figures shaped as ``deep_models.run`` returns them (made up: the table's arithmetic is what is checked)."""
    compile_rows = [
        {"depth": d, "scan_layers": sl, "lower_s": 0.1 * d, "compile_s": (1.0 if sl else d) * scale,
         "text_chars": 1000 * (1 if sl else d), "temp_bytes": 2**20}
        for d in (2, 24) for sl in (True, False)
    ]  # fmt: skip
    memory = [{"policy": p, "lower_s": 0.1, "compile_s": 1.0, "temp_bytes": b}
              for p, b in ((None, 100 * 2**20), ("nothing_saveable", 25 * 2**20))]  # fmt: skip
    config = {"vocab": 8, "seq": 4, "batch": 2, "hidden": 8, "heads": 2, "mlp": 16, "depths": (2, 24)}
    return {"size": "cpu", "config": config, "backend": "cpu", "device": "cpu", "memory_depth": 12,
            "compile": compile_rows, "memory": memory, "unrolled_temp_bytes": 2**21,
            "step_s": {True: 0.002, False: 0.001}}  # fmt: skip


def test_deep_models_table_reports_the_ratios():
    deep = load_script("deep_models.py")
    text = deep.markdown(_deep_result())
    assert "| 24 | 2.40 | 1.00 | 1,000 | 2.40 | 24.00 | 24,000 | 24.0x |" in text
    assert "- stacked: depth 24 / depth 2: compile 1.00x" in text and "(target: compile at most 1.5x)" in text
    assert "- unrolled: depth 24 / depth 2: compile 12.00x" in text
    assert "| `nothing_saveable` | 25.00 | 25% | 1.00 |" in text and "| none (no remat) | 100.00 | 100% |" in text
    assert "stacked / unrolled 2.00x" in text


@pytest.mark.slow  # about 20 compiles of a tiny GPT step
def test_deep_models_tiny_run(tmp_path):
    deep = load_script("deep_models.py")
    result = deep.main(
        [
            "--size",
            "tiny",
            "--steps",
            "1",
            "--repeats",
            "1",
            "--compile-repeats",
            "1",
            "--out",
            str(tmp_path / "deep.md"),
        ]
    )
    assert {(r["depth"], r["scan_layers"]) for r in result["compile"]} == {
        (d, s) for d in (1, 2) for s in (True, False)
    }
    assert all(r["compile_s"] > 0 and r["text_chars"] > 0 for r in result["compile"])
    by_policy = {r["policy"]: r["temp_bytes"] for r in result["memory"]}
    assert by_policy["nothing_saveable"] < by_policy[None]  # remat keeps less for the backward pass
    assert "| remat policy |" in (tmp_path / "deep.md").read_text()


@pytest.mark.slow  # fourteen fresh processes: CI's slow pass
def test_startup_benchmark_runs_and_reports_every_row(tmp_path):
    out = tmp_path / "startup.md"
    script = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "startup.py"
    subprocess.run([sys.executable, str(script), "--runs", "1", "--out", str(out)], check=True, capture_output=True)
    text = out.read_text()
    for row in ("import nnjax | once", "init_train_state, README MLP | warm", "second fit in a process | no cache"):
        assert row in text
    assert "| model.init, README tour | cold |" in text and text.count("| 1 |") >= 4  # one program each
