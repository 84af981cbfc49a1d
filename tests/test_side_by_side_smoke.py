"""benchmarks/side_by_side.py end to end: one run of one epoch of every tool whose library is importable
(missing ones are skipped), each row in the table, accuracies above chance, one parameter count per task."""

import importlib.util
import pathlib
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "side_by_side.py"
NEEDS = {
    "nnjax_mlp": ("jax", "optax"),
    "sklearn_mlp": ("sklearn",),
    "keras_mlp": ("keras", "jax"),
    "nnjax_cnn": ("jax", "optax"),
    "torch_cnn": ("torch",),
}
# tool | accuracy | setup + train cold | warm | train call cold | warm | first epoch cold | warm | params | ...
ROW = re.compile(
    r"^\| .*\(`(?P<tool>\w+)`\) \| (?P<accuracy>[^|]+) \| (?P<total>[^|]+) \|[^|]*\| (?P<train>[^|]+) \|"
    r"(?:[^|]*\|){3} (?P<params>[\d,]+) \|"
)


def test_every_importable_tool_trains_above_chance(tmp_path):
    tools = [name for name, modules in NEEDS.items() if all(importlib.util.find_spec(m) for m in modules)]
    out = tmp_path / "side_by_side.md"
    flags = ["--runs", "1", "--epochs", "1", "--jobs", "2", "--threads", "1", "--tools", ",".join(tools)]
    command = [sys.executable, str(SCRIPT), *flags, "--out", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert text in proc.stdout

    rows = {m["tool"]: m for m in map(ROW.match, text.splitlines()) if m}
    assert sorted(rows) == sorted(tools), text
    for tool, row in rows.items():
        accuracy = float(row["accuracy"].split()[0])  # a number, not "not installed" or "failed: ..."
        assert accuracy > 0.3, (tool, text)
        total, train = float(row["total"].split()[0]), float(row["train"].split()[0])
        assert total >= train > 0, (tool, text)  # setup + train holds the training call
    others = [tool for tool in tools if not tool.startswith("nnjax")]
    ratios = re.findall(r"^- nnjax / .+, medians: setup \+ train cold \d+\.\d\dx, setup \+ train warm", text, re.M)
    assert len(ratios) == len(others), text  # nnjax's medians over each other tool's, a line each
    for task in ("mlp", "cnn"):  # the same model in every tool: the same number of trainable parameters
        counts = {row["params"] for tool, row in rows.items() if tool.endswith(task)}
        assert len(counts) <= 1, (task, counts, text)


def test_a_missing_library_is_reported_not_run(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("nnjax_side_by_side_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    missing = module.Tool("nope_mlp", "mlp", "Nope", ("no_such_module_for_nnjax_tests",), run=None)
    monkeypatch.setattr(module, "TOOLS", {"nope_mlp": missing})
    text = module.main(["--runs", "1", "--epochs", "1", "--out", str(tmp_path / "out.md")])
    assert "| Nope (`nope_mlp`) | not installed (no_such_module_for_nnjax_tests) |" in text
