"""The fine-tuning guide's code blocks run, in order, as one script (docs/guides/finetuning.md)."""

import pathlib
import re

import pytest

GUIDE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "guides" / "finetuning.md"
BLOCKS = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)


@pytest.mark.slow  # five short fits, a LoRA run and a differentiated run: about 8 s warm, 45 s cold
def test_the_guide_runs_and_states_what_it_shows():
    namespace: dict = {}
    for block in BLOCKS:
        exec(compile(block, str(GUIDE), "exec"), namespace)  # noqa: S102 - the guide's own code
    ns = namespace
    assert list(ns["pretrained"].train_state.params) == ["backbone", "head"]
    assert ns["tuned"].history["loss"][-1] < ns["tuned"].history["loss"][0]
    assert ns["frozen_run"].history["loss"][-1] < ns["frozen_run"].history["loss"][0]
    assert ns["lora_run"].history["loss"][-1] < ns["lora_run"].history["loss"][0]
    assert list(ns["torch_weights"]) == [
        f"{part}.{kind}" for part in ("backbone.0", "backbone.2", "head") for kind in ("weight", "bias")
    ]
    assert float(ns["hypergradient"]["learning_rate"]) < 0
    leaves = ns["jax"].tree.leaves(ns["meta_gradient"])
    assert len(leaves) == 4 and all(bool(abs(g).max() > 0) for g in leaves)
    assert "Trainable params: 650  Frozen params: 8,320" in ns["nnjax"].summary(
        ns["model"], (64,), frozen=ns["head_only"], show=False, flops=False
    )
