"""benchmarks/anchors.py runs: the tiny workloads, nnjax and raw JAX only, one short repeat each."""

import importlib.util
import pathlib
import statistics
import sys

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "anchors.py"


def load():
    spec = importlib.util.spec_from_file_location("nnjax_anchors_benchmark", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


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
