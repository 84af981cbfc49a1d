"""`import nnjax` stays quick: what is not needed to build and train a model is imported on first use."""

import subprocess
import sys

HEAVY = ("orbax", "flax", "matplotlib", "tqdm", "safetensors", "torch", "tensorboardX")


def test_import_nnjax_imports_no_heavy_module_and_the_features_still_load_them():
    code = (
        "import sys, nnjax\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
        "import jax, optax, numpy as np, tempfile\n"
        "ts = nnjax.init_train_state(nnjax.Dense(2), optax.sgd(0.1), jax.random.key(0), (3,))\n"
        "nnjax.save_checkpoint(tempfile.mkdtemp(), ts)\n"
        "nnjax.precision.dynamic_loss_scale(optax.sgd(0.1)).init(ts.params)\n"
        "print(sorted(m for m in ('orbax', 'flax') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]", f"import nnjax imported {out[0]}"
    assert out[1] == "['flax', 'orbax']"  # checkpoints and loss scaling import them when used
