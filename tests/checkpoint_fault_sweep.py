"""A sweep of checkpoint faults on a real small disk, printing a tally (not collected by pytest).

    sudo python tests/checkpoint_fault_sweep.py     # root: it mounts a 1 MiB tmpfs under a temporary directory

For each free-space level from 0 to 160 KiB in 2 KiB steps it fills the disk, saves step 2 over a saved
step 1, frees the space, and checks: the save either succeeded or raised ``CheckpointDiskFullError``
naming the directory and the step; no temporary files are left; the newest intact checkpoint restores
bit for bit. Then it flips every byte of the newest JSON record in turn and checks that
``restore_checkpoint`` never returns the damaged record.
"""

import collections
import os
import subprocess
import sys
import tempfile
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nnjax

MODEL = nnjax.serial(nnjax.Dense(16), nnjax.Relu(), nnjax.Dense(3))
OPT = optax.adam(1e-3)
LIKE = nnjax.abstract_train_state(MODEL, OPT, (5,))


def state(step):
    ts = nnjax.init_train_state(MODEL, OPT, jax.random.key(step), (5,))
    return ts.replace(step=jnp.asarray(step, jnp.int32))


def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True))


def sweep(disk):
    tally = collections.Counter()
    for free in range(0, 160 * 1024, 2048):
        directory = os.path.join(disk, f"run{free}")
        nnjax.save_checkpoint(directory, state(1))
        stats = os.statvfs(disk)
        filler = os.path.join(disk, "filler")
        with open(filler, "wb") as f:
            try:
                f.write(b"\0" * max(stats.f_bavail * stats.f_frsize - free, 0))
            except OSError:
                pass
        try:
            nnjax.save_checkpoint(directory, state(2))
            outcome = "saved"
        except nnjax.CheckpointDiskFullError as error:
            assert f"cannot save step 2 to {directory}: disk full" in str(error), error
            outcome = "CheckpointDiskFullError"
        except Exception as error:  # noqa: BLE001 - counted: anything else is what the issue was about
            outcome = f"other: {type(error).__name__}: {str(error)[:120]}"
        os.remove(filler)
        leftovers = [name for name in os.listdir(directory) if "tmp" in name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            restored, info = nnjax.restore_checkpoint(directory, LIKE)
        intact = same(restored, state(info["step"])) and info["step"] == (2 if outcome == "saved" else 1)
        tally[outcome] += 1
        tally["temporary files left"] += bool(leftovers)
        tally["restored the right step intact"] += intact
        subprocess.run(["rm", "-rf", directory], check=True)
    return tally


def flips(directory):
    nnjax.save_checkpoint(directory, state(1), metrics={"loss": 1.845})
    nnjax.save_checkpoint(directory, state(2), metrics={"loss": 1.845})
    record = os.path.join(directory, "2", "nnjax", "metadata")
    original = open(record, "rb").read()
    tally = collections.Counter()
    for i in range(len(original)):
        damaged = bytearray(original)
        damaged[i] ^= 0x01
        open(record, "wb").write(bytes(damaged))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                _, info = nnjax.restore_checkpoint(directory, LIKE)
                fell_back = info["step"] == 1 and caught
                tally["fell back to step 1 with a warning" if fell_back else f"restored step {info['step']}"] += 1
            except Exception as error:  # noqa: BLE001
                tally[f"raised {type(error).__name__}"] += 1
    open(record, "wb").write(original)
    return tally


def main():
    with tempfile.TemporaryDirectory() as root:
        disk = os.path.join(root, "disk")
        os.mkdir(disk)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", disk], check=True)
        try:
            print("full disk during a save:", dict(sweep(disk)))
        finally:
            subprocess.run(["umount", "-l", disk], check=True)
        print("one flipped bit in the newest JSON record:", dict(flips(os.path.join(root, "flips"))))


if __name__ == "__main__":
    sys.exit(main())
