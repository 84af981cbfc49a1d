"""A training run for the crash tests: killed at random moments, restarted, it must end bit-identical.

    python tests/crash_worker.py CHECKPOINT_DIR OUT.npz [EPOCHS]

Trains a small MLP with dropout on the embedded digits with ``fit(..., checkpoint_dir, resume=True)``,
a checkpoint every epoch. Prints ``resume <step|none>`` before training, ``epoch_end <epoch> <step>``
after each epoch (just before its checkpoint is written), and ``done`` after writing every leaf of the
final train state to OUT.npz.
"""

import sys
import warnings

import jax
import numpy as np
import optax

import nnjax
from nnjax._src.checkpoint import latest_step
from nnjax._src.errors import leaf_path

EPOCHS = 5


def main(directory: str, out: str, epochs: int = EPOCHS) -> None:
    warnings.simplefilter("always")
    images, labels = nnjax.data.load_digits()
    x = images.reshape(-1, 64).astype(np.float32) / 16.0
    model = nnjax.serial(nnjax.Dense(32), nnjax.Relu(), nnjax.Dropout(0.1), nnjax.Dense(10))
    start = latest_step(directory)
    print(f"resume {'none' if start is None else start}", flush=True)

    def announce(epoch, train_state, logs):
        print(f"epoch_end {epoch} {int(train_state.step)}", flush=True)

    result = nnjax.fit(
        model,
        nnjax.losses.softmax_cross_entropy,
        optax.adam(3e-3),
        x,
        labels,
        epochs=epochs,
        batch_size=32,
        seed=7,
        progress=False,
        checkpoint_dir=directory,
        resume=True,
        keep=2,
        callbacks=[announce],
    )
    state = result.train_state.replace(key=jax.random.key_data(result.train_state.key))
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    np.savez(out, **{leaf_path(path): np.asarray(leaf) for path, leaf in leaves})
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:4]))
