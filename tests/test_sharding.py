"""Data-parallel, FSDP and multi-process training agree with one device (CPU, simulated devices)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnjax
from nnjax._src import sharding

WORKER = Path(__file__).with_name("sharding_worker.py")
sys.path.insert(0, str(WORKER.parent))
import sharding_worker  # noqa: E402

ATOL = 1e-5


def _env(*xla_flags: str) -> dict[str, str]:
    """The worker's environment: CPU, and the suite's XLA flags (conftest's optimization level 0: the worker
    compiles a few seconds faster) followed by ``xla_flags``, which win over any earlier setting."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join([os.environ.get("XLA_FLAGS", ""), *xla_flags]).strip())
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_params_close(got: dict, want: dict, what: str) -> None:
    assert set(got) == set(want), what
    for k in want:
        np.testing.assert_allclose(got[k], want[k], atol=ATOL, rtol=1e-5, err_msg=f"{what}: {k}")


def test_fsdp_spec_picks_largest_divisible_axis():
    assert sharding.fsdp_spec((784, 512), 8) == jax.sharding.PartitionSpec("data", None)
    assert sharding.fsdp_spec((100, 512), 8) == jax.sharding.PartitionSpec(None, "data")
    assert sharding.fsdp_spec((64, 10), 8) == jax.sharding.PartitionSpec("data", None)
    assert sharding.fsdp_spec((10,), 8) == jax.sharding.PartitionSpec()  # nothing divisible: replicated
    assert sharding.fsdp_spec((), 8) == jax.sharding.PartitionSpec()
    assert sharding.fsdp_spec((16, 16), 8) == jax.sharding.PartitionSpec("data", None)  # earliest among equals
    assert sharding.fsdp_spec((4, 6), 1) == jax.sharding.PartitionSpec()


def test_one_device_mesh_matches_unsharded_step():
    """In the test process (1 CPU device) the helpers are a no-op placement: same numbers as plain training."""
    model, loss, opt, xs, ys = sharding_worker.problem()
    mesh = sharding.make_mesh()
    ts = sharding.data_parallel(nnjax.init_train_state(model, opt, jax.random.key(0), (16,)), mesh, fsdp=True)
    step = sharding.jit_sharded(nnjax.make_train_step(model, loss, opt, jit=False), ts, mesh)
    for x, y in zip(xs, ys):
        ts, _ = step(ts, sharding.shard_batch((x, y), mesh))
    ref = sharding_worker.reference()
    ref.pop("losses")
    _assert_params_close(sharding_worker.flat_params(ts), ref, "1-device mesh")


def test_shard_batch_names_a_missing_mesh_axis():
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    with pytest.raises(ValueError, match="mesh axis `model` not found"):
        sharding.shard_batch((np.zeros((4, 2)),), mesh, axis="model")


def test_eight_simulated_devices_data_parallel_and_fsdp_equal_one_device(tmp_path):
    out = tmp_path / "devices.npz"
    subprocess.run(
        [sys.executable, str(WORKER), "devices", str(out)],
        env=_env("--xla_force_host_platform_device_count=8"),
        check=True,
        timeout=180,
    )
    d = np.load(out)
    ref = {k.removeprefix("ref/"): d[k] for k in d.files if k.startswith("ref/")}
    for mode in ("dp", "fsdp"):
        _assert_params_close({k.removeprefix(f"{mode}/"): d[k] for k in d.files if k.startswith(f"{mode}/")}, ref, mode)
        assert int(d[f"{mode}_batch_shard_rows"]) == sharding_worker.BATCH // 8  # the batch really is split
    assert int(d["dp_param_shards"]) == 1 and int(d["dp_param_shards_after"]) == 1  # replicated
    assert int(d["fsdp_param_shards"]) == 8 and int(d["fsdp_param_shards_after"]) == 8  # stays sharded
    assert bool(d["global_batch_equal"]) and int(d["global_batch_shards"]) == 8
    assert "divisible by the 8 devices" in str(d["indivisible_error"])


@pytest.mark.slow  # two processes that each start JAX and compile: CI's slow pass
def test_two_process_distributed_run_on_loopback_equals_one_process(tmp_path):
    assert jax.config.jax_cpu_collectives_implementation in ("gloo", "none")  # gloo is the one the worker sets
    port, outs = _free_port(), [tmp_path / f"p{i}.npz" for i in range(2)]
    procs = [
        subprocess.Popen([sys.executable, str(WORKER), "process", str(i), "2", str(port), str(outs[i])], env=_env())
        for i in range(2)
    ]
    try:
        codes = [p.wait(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0]
    ref = sharding_worker.reference()
    ref_losses = ref.pop("losses")
    assert ref_losses[-1] < ref_losses[0]  # the problem does train
    for r in (dict(np.load(o)) for o in outs):
        np.testing.assert_allclose(r.pop("losses"), ref_losses, rtol=1e-5)  # same loss at every step
        _assert_params_close(r, ref, "2-process")


def test_initialize_distributed_forwards_to_jax(monkeypatch):
    calls = {}
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.update(kw))
    monkeypatch.setattr(jax.config, "update", lambda name, value: calls.update({name: value}))
    sharding.initialize_distributed("10.0.0.1:1234", 4, 2, initialization_timeout=5)
    assert calls == {
        "jax_cpu_collectives_implementation": "gloo",
        "coordinator_address": "10.0.0.1:1234",
        "num_processes": 4,
        "process_id": 2,
        "local_device_ids": None,
        "initialization_timeout": 5,
    }


def test_train_state_shardings_replicate_scalars_and_key():
    model, _, opt, _, _ = sharding_worker.problem()
    ts = nnjax.init_train_state(model, opt, jax.random.key(0), (16,))
    sh = sharding.train_state_shardings(ts, sharding.make_mesh(), fsdp=True)
    assert sh.step.spec == jax.sharding.PartitionSpec() and sh.key.spec == jax.sharding.PartitionSpec()
    assert jnp.shape(ts.params["dense_0"]["w"]) == (16, 24)
