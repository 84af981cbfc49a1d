"""examples/port_from_torch.py runs end to end with tiny settings (skipped without torch)."""

import importlib.util
import pathlib

import pytest

pytest.importorskip("torch")

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "port_from_torch.py"


@pytest.mark.slow  # in CI's slow pass, which installs torch
def test_port_from_torch_example_predicts_the_same_both_ways():
    spec = importlib.util.spec_from_file_location("port_from_torch", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--torch-epochs", "2", "--nnjax-epochs", "1", "--train-limit", "512", "--quiet"])
    assert result["import_max_abs_diff"] < 1e-4  # torch's logits, imported
    assert result["export_max_abs_diff"] < 1e-4  # nnjax's logits, exported back to torch
    assert result["torch_accuracy"] > 0.5 and result["nnjax_accuracy"] > 0.5
