"""Worker for tests/test_sharding.py; run as a subprocess so XLA flags and jax.distributed start fresh.

    python tests/sharding_worker.py devices OUT.npz            # (XLA_FLAGS sets 8 host devices)
    python tests/sharding_worker.py process PID NPROC PORT OUT.npz

Both train the same small MLP for a few steps on the same global batches (``problem``) and save the
final parameters; the test compares them with a single-device run.
"""

from __future__ import annotations

import sys

import numpy as np

STEPS, BATCH = 5, 32


def problem():
    """The model, loss, optimizer and global batches every run uses (same seed everywhere)."""
    import optax

    import nnjax

    rs = np.random.RandomState(0)
    xs = rs.randn(STEPS, BATCH, 16).astype(np.float32)
    ys = rs.randint(0, 4, size=(STEPS, BATCH)).astype(np.int32)
    model = nnjax.serial(nnjax.Dense(24), nnjax.Relu(), nnjax.Dense(8), nnjax.Relu(), nnjax.Dense(4))
    return model, nnjax.losses.softmax_cross_entropy, optax.adam(1e-2), xs, ys


def flat_params(train_state) -> dict[str, np.ndarray]:
    import jax

    leaves = jax.tree_util.tree_leaves_with_path(train_state.params)
    return {
        jax.tree_util.keystr(path): np.asarray(leaf.addressable_data(0) if leaf.is_fully_replicated else leaf)
        for path, leaf in leaves
    }


def reference() -> dict[str, np.ndarray]:
    """One device, no sharding."""
    import jax

    import nnjax

    model, loss, opt, xs, ys = problem()
    ts = nnjax.init_train_state(model, opt, jax.random.key(0), (16,))
    step = nnjax.make_train_step(model, loss, opt)
    losses = []
    for x, y in zip(xs, ys):
        ts, metrics = step(ts, (x, y))
        losses.append(float(metrics["loss"]))
    return {**flat_params(ts), "losses": np.array(losses)}


def run_devices(out: str) -> None:
    import jax

    import nnjax
    from nnjax._src import sharding

    assert jax.device_count() == 8, jax.devices()
    model, loss, opt, xs, ys = problem()
    results = {f"ref/{k}": v for k, v in reference().items() if k != "losses"}
    mesh = sharding.make_mesh()
    for mode in ("dp", "fsdp"):
        ts = nnjax.init_train_state(model, opt, jax.random.key(0), (16,))
        ts = sharding.data_parallel(ts, mesh, fsdp=mode == "fsdp")
        if mode == "dp":
            step = nnjax.make_train_step(model, loss, opt)  # the unchanged jitted step
        else:
            step = sharding.jit_sharded(nnjax.make_train_step(model, loss, opt, jit=False), ts, mesh)
        w = ts.params["dense_0"]["w"]
        results[f"{mode}_param_shards"] = np.array(len({str(s.index) for s in w.addressable_shards}))
        for x, y in zip(xs, ys):
            batch = sharding.shard_batch((x, y), mesh)
            results[f"{mode}_batch_shard_rows"] = np.array(batch[0].addressable_shards[0].data.shape[0])
            ts, metrics = step(ts, batch)
        w = ts.params["dense_0"]["w"]
        results[f"{mode}_param_shards_after"] = np.array(len({str(s.index) for s in w.addressable_shards}))
        results.update({f"{mode}/{k}": v for k, v in flat_params_gathered(ts).items()})
    # global_batch_from_process_data in one process equals shard_batch
    g = sharding.global_batch_from_process_data((xs[0], ys[0]), mesh)
    results["global_batch_equal"] = np.array(bool(np.array_equal(np.asarray(g[0]), xs[0])))
    results["global_batch_shards"] = np.array(len(g[0].addressable_shards))
    try:
        sharding.shard_batch((xs[0][:30], ys[0][:30]), mesh)  # 30 rows over 8 devices
        results["indivisible_error"] = np.array("")
    except ValueError as error:
        results["indivisible_error"] = np.array(str(error))
    np.savez(out, **results)


def flat_params_gathered(train_state) -> dict[str, np.ndarray]:
    import jax

    return {
        jax.tree_util.keystr(p): np.asarray(jax.device_get(leaf))
        for p, leaf in jax.tree_util.tree_leaves_with_path(train_state.params)
    }


def run_process(pid: int, nproc: int, port: int, out: str) -> None:
    from nnjax._src import sharding

    sharding.initialize_distributed(f"127.0.0.1:{port}", num_processes=nproc, process_id=pid, initialization_timeout=60)
    import jax

    import nnjax

    assert jax.process_count() == nproc and jax.device_count() == nproc, (jax.process_count(), jax.devices())
    model, loss, opt, xs, ys = problem()
    mesh = sharding.make_mesh()
    ts = sharding.data_parallel(nnjax.init_train_state(model, opt, jax.random.key(0), (16,)), mesh)
    step = nnjax.make_train_step(model, loss, opt)
    rows = BATCH // nproc
    losses = []
    for x, y in zip(xs, ys):
        local = (x[pid * rows : (pid + 1) * rows], y[pid * rows : (pid + 1) * rows])
        ts, metrics = step(ts, sharding.global_batch_from_process_data(local, mesh))
        losses.append(float(np.asarray(metrics["loss"].addressable_data(0))))
    results = flat_params(ts)
    results["losses"] = np.array(losses)
    np.savez(out, **results)
    jax.distributed.shutdown()


if __name__ == "__main__":
    if sys.argv[1] == "devices":
        run_devices(sys.argv[2])
    elif sys.argv[1] == "process":
        run_process(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    elif sys.argv[1] == "reference":
        np.savez(sys.argv[2], **reference())
    else:
        raise SystemExit(f"unknown mode {sys.argv[1]!r}")
