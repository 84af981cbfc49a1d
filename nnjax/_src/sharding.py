"""Data-parallel and FSDP training on ``jax.sharding``: the same pure step, placed on a device ``Mesh``.

nnjax adds no parallel runtime: it places arrays, and XLA's SPMD partitioner (GSPMD) splits the compiled
step and inserts the collectives (the gradient all-reduce of data parallelism, the parameter all-gathers
and gradient reduce-scatters of FSDP).

    mesh = make_mesh()                                    # all devices, one axis named "data"
    train_state = data_parallel(train_state, mesh)        # replicated (fsdp=True: sharded params/opt state)
    step = make_train_step(model, loss, optimizer)        # unchanged
    train_state, metrics = step(train_state, shard_batch((x, y), mesh))   # batch split along "data"

Multi-host: call ``initialize_distributed(...)`` first in every process (before any other JAX call); the
mesh then spans every process's devices, each process builds the same train state (same key) and feeds only
its own slice of each global batch through ``global_batch_from_process_data``.

Every process runs the same program; results are global ``jax.Array``s. Read a replicated value with
``np.asarray(a.addressable_data(0))`` (or ``jax.experimental.multihost_utils.process_allgather``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from nnjax._src.compile import jit as compile_jit
from nnjax._src.stack import STACKED
from nnjax._src.train import Batch, TrainState
from nnjax._src.types import Array, PyTree


def make_mesh(axis: str = "data", devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis ``Mesh`` named ``axis`` over ``devices`` (default: every device of every process).

    Args:
      axis: the mesh axis name, used by ``shard_batch``, ``data_parallel`` and ``fsdp_spec``.
      devices: the devices, in order; default ``jax.devices()`` (all processes' devices).

    Returns:
      A ``jax.sharding.Mesh`` of shape ``{axis: len(devices)}``.

    Example:
      >>> mesh = nnjax.sharding.make_mesh()
      >>> mesh.axis_names, mesh.size == len(jax.devices())
      (('data',), True)
      >>> dict(nnjax.sharding.make_mesh("batch", jax.devices()[:1]).shape)
      {'batch': 1}
    """
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.array(devices), (axis,))


def _mesh_size(mesh: Mesh, axis: str) -> int:
    if axis not in mesh.shape:
        raise ValueError(f"sharding: mesh axis `{axis}` not found; the mesh has axes {tuple(mesh.shape)}.")
    return int(mesh.shape[axis])


def fsdp_spec(shape: tuple[int, ...], size: int, axis: str = "data", *, skip: int = 0) -> P:
    """The FSDP ``PartitionSpec`` of one array: its largest dimension divisible by ``size`` is split over
    ``axis`` (the earliest among equals); arrays with no such dimension (scalars, biases of odd width)
    are replicated.

    Args:
      shape: the array's shape, e.g. ``(784, 128)``.
      size: the number of devices along ``axis`` (``mesh.shape[axis]``).
      axis: the mesh axis name.
      skip: the number of leading dimensions never split (the stacked copies of ``nnjax.stack``).

    Returns:
      A ``jax.sharding.PartitionSpec``: ``axis`` at the split dimension and None elsewhere, or the empty
      (replicated) spec when ``size`` is 1 or no dimension is divisible.

    Example:
      >>> tuple(nnjax.sharding.fsdp_spec((64, 128), 4))   # the largest divisible dimension is split
      (None, 'data')
      >>> tuple(nnjax.sharding.fsdp_spec((10,), 4))       # nothing divisible by 4: replicated
      ()
    """
    candidates = [(d, -i) for i, d in enumerate(shape) if d % size == 0 and d >= size and i >= skip]
    if size == 1 or not candidates:
        return P()
    _, neg_i = max(candidates)
    spec = [None] * len(shape)
    spec[-neg_i] = axis
    return P(*spec)


def _stacked_axes(path: tuple[Any, ...]) -> int:
    """The number of leading stacked axes of a leaf: one per ``"layers"`` key of ``nnjax.stack`` on its path."""
    return sum(1 for entry in path if isinstance(entry, jax.tree_util.DictKey) and entry.key == STACKED)


def train_state_shardings(
    train_state: TrainState, mesh: Mesh, axis: str = "data", *, fsdp: bool = False, shard_stacked: bool = False
) -> Any:
    """The ``NamedSharding`` of every leaf of ``train_state``: replicated (data parallel), or, with ``fsdp``,
    parameters, model state and optimizer state split along their largest ``axis``-divisible dimension.

    ``step`` and ``key`` are always replicated; the split dimension of each array is ``fsdp_spec``'s, never
    the leading axis of the copies of a ``nnjax.stack`` (arrays under a ``"layers"`` key) unless
    ``shard_stacked``: a scan over a split axis would gather every copy's params at every step.

    Args:
      train_state: a ``TrainState`` (concrete, or abstract from ``abstract_train_state``).
      mesh: the device mesh, e.g. ``make_mesh()``.
      axis: the mesh axis to shard along.
      fsdp: shard parameters, model state and optimizer state instead of replicating them.
      shard_stacked: let FSDP split the stacked axis of ``nnjax.stack``'s params too.

    Returns:
      A ``TrainState`` of the same structure whose leaves are ``jax.sharding.NamedSharding``.

    Raises:
      ValueError: ``mesh`` has no axis ``axis``.

    Example:
      >>> ts = nnjax.init_train_state(nnjax.Dense(2), optax.sgd(0.1), jax.random.key(0), (3,))
      >>> mesh = nnjax.sharding.make_mesh()
      >>> shardings = nnjax.sharding.train_state_shardings(ts, mesh, fsdp=True)
      >>> type(shardings.params["w"]).__name__, tuple(shardings.step.spec)
      ('NamedSharding', ())
      >>> shardings.params["w"].spec == nnjax.sharding.fsdp_spec((3, 2), mesh.size)
      True
    """
    size = _mesh_size(mesh, axis)
    replicated = NamedSharding(mesh, P())

    def leaf_sharding(path, a):
        if not fsdp:
            return replicated
        skip = 0 if shard_stacked else _stacked_axes(path)
        return NamedSharding(mesh, fsdp_spec(tuple(np.shape(a)), size, axis, skip=skip))

    def sharded(tree):
        return jax.tree_util.tree_map_with_path(leaf_sharding, tree)

    return train_state.replace(
        step=replicated,
        params=sharded(train_state.params),
        state=sharded(train_state.state),
        opt_state=sharded(train_state.opt_state),
        key=replicated,
    )


def _place(a: Any, sharding: NamedSharding) -> Array:
    """Puts an array (the same value in every process) on ``sharding``, which may span several processes."""
    if sharding.is_fully_addressable:
        return jax.device_put(a, sharding)
    if isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
        impl = jax.random.key_impl(a)
        return jax.random.wrap_key_data(_place(jax.random.key_data(a), sharding), impl=impl)
    host = np.asarray(a)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def data_parallel(
    train_state: TrainState,
    mesh: Mesh | None = None,
    axis: str = "data",
    *,
    fsdp: bool = False,
    shard_stacked: bool = False,
) -> TrainState:
    """Places ``train_state`` on ``mesh`` for data-parallel training: replicated on every device, or, with
    ``fsdp=True``, parameters and optimizer state sharded along ``axis`` (``train_state_shardings``).

    The jitted step of ``make_train_step`` then runs data-parallel on batches from ``shard_batch``: GSPMD
    partitions it and adds the all-reduce of the gradients (and, for FSDP, the all-gathers of parameters).
    In several processes, every process must pass the same ``train_state`` (same key).

    Args:
      train_state: a ``TrainState`` (e.g. from ``init_train_state``), the same value in every process.
      mesh: the device mesh; default ``make_mesh(axis)`` (every device).
      axis: the mesh axis of the data (and, with ``fsdp``, of the parameter shards).
      fsdp: shard parameters, model state and optimizer state (``train_state_shardings``).
      shard_stacked: with ``fsdp``, let the stacked axis of ``nnjax.stack``'s params be split too.

    Returns:
      The same ``TrainState`` with every leaf a ``jax.Array`` placed on ``mesh``.

    Raises:
      ValueError: ``mesh`` has no axis ``axis``.

    Example:
      >>> model, opt = nnjax.Dense(2), optax.sgd(0.1)
      >>> ts = nnjax.init_train_state(model, opt, jax.random.key(0), (3,))
      >>> ts = nnjax.sharding.data_parallel(ts, nnjax.sharding.make_mesh())
      >>> ts.params["w"].shape, ts.params["w"].sharding.is_fully_replicated
      ((3, 2), True)
    """
    mesh = make_mesh(axis) if mesh is None else mesh
    shardings = train_state_shardings(train_state, mesh, axis, fsdp=fsdp, shard_stacked=shard_stacked)
    return jax.tree.map(_place, train_state, shardings)


def _batch_sharding(mesh: Mesh, axis: str, tree: PyTree, where: str) -> NamedSharding:
    size = _mesh_size(mesh, axis)
    for a in jax.tree.leaves(tree):
        if np.ndim(a) == 0 or np.shape(a)[0] % size:
            raise ValueError(
                f"{where}: expected a leading batch axis divisible by the {size} devices of mesh axis `{axis}`, "
                f"given shape {tuple(np.shape(a))}. Hint: choose a batch size that is a multiple of {size}."
            )
    return NamedSharding(mesh, P(axis))


def shard_batch(batch: Batch, mesh: Mesh | None = None, axis: str = "data") -> Batch:
    """Splits every array of ``batch`` along its first (batch) axis over the mesh axis ``axis``.

    Single process: ``batch`` is the whole global batch. (With several processes use
    ``global_batch_from_process_data``.)

    Args:
      batch: a pytree of arrays ``(batch, ...)``, e.g. ``(x, y)``; ``batch`` divisible by the number of
        devices along ``axis``.
      mesh: the device mesh; default ``make_mesh(axis)`` (every device).
      axis: the mesh axis to split the batch over.

    Returns:
      The same pytree of global ``jax.Array``s, each split along its first axis (spec ``P(axis)``).

    Raises:
      ValueError: ``mesh`` has no axis ``axis``, or a leaf is a scalar or has a batch size not divisible
        by the number of devices along ``axis``.

    Example:
      >>> mesh = nnjax.sharding.make_mesh()
      >>> n = 4 * mesh.size                 # a multiple of the number of devices
      >>> x, y = nnjax.sharding.shard_batch((np.ones((n, 3), np.float32), np.zeros(n, np.int32)), mesh)
      >>> x.shape == (n, 3), tuple(x.sharding.spec)
      (True, ('data',))
    """
    mesh = make_mesh(axis) if mesh is None else mesh
    sharding = _batch_sharding(mesh, axis, batch, "shard_batch")
    return jax.tree.map(lambda a: jax.device_put(a, sharding), batch)


def global_batch_from_process_data(local_batch: Batch, mesh: Mesh | None = None, axis: str = "data") -> Batch:
    """Builds global batch arrays from each process's own rows (``jax.make_array_from_process_local_data``).

    Process ``p`` passes the rows that belong to its devices (e.g. rows ``p * n_local:(p + 1) * n_local``
    of the global batch, for a mesh over ``jax.devices()``); the result has ``process_count()`` times as
    many rows, split along ``axis``. In one process it equals ``shard_batch``.

    Args:
      local_batch: a pytree of host arrays ``(n_local, ...)``: this process's rows, ``n_local`` divisible
        by its number of local devices in ``mesh``.
      mesh: the device mesh; default ``make_mesh(axis)`` (every device of every process).
      axis: the mesh axis to split the batch over.

    Returns:
      The same pytree of global ``jax.Array``s ``(n_local * process_count(), ...)``, split along ``axis``.

    Raises:
      ValueError: raised by JAX when the rows cannot be split evenly over this process's devices.

    Example:
      >>> mesh = nnjax.sharding.make_mesh()
      >>> rows = 2 * len(jax.local_devices())   # this process's rows
      >>> x = nnjax.sharding.global_batch_from_process_data(np.ones((rows, 3), np.float32), mesh)
      >>> x.shape == (rows * jax.process_count(), 3), tuple(x.sharding.spec)
      (True, ('data',))
    """
    mesh = make_mesh(axis) if mesh is None else mesh
    sharding = NamedSharding(mesh, P(axis))
    return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), local_batch)


def jit_sharded(
    step: Callable[[TrainState, Batch], Any], train_state: TrainState, mesh: Mesh | None = None, axis: str = "data"
):
    """``nnjax.jit`` of a plain step (``make_train_step(..., jit=False)``) with shardings pinned: the train
    state in and out keeps the shardings it has now (from ``data_parallel``), batches are split along
    ``axis`` and metrics are replicated. Not needed for correctness (GSPMD propagates the input shardings),
    it guarantees FSDP parameters stay sharded between steps. The train state is donated.

    Args:
      step: a plain, un-jitted step ``(train_state, batch) -> (train_state, metrics)``.
      train_state: the placed train state (from ``data_parallel``): its leaves' shardings are pinned.
      mesh: the device mesh; default ``make_mesh(axis)`` (every device).
      axis: the mesh axis to split batches over.

    Returns:
      The compiled step ``(train_state, batch) -> (train_state, metrics)``; pass batches whose size is
      divisible by the number of devices along ``axis``, and do not reuse a train state once passed.

    Raises:
      AttributeError: a leaf of ``train_state`` is not a ``jax.Array`` (place it with ``data_parallel``).

    Example:
      >>> model, opt = nnjax.Dense(2), optax.sgd(0.1)
      >>> mesh = nnjax.sharding.make_mesh()
      >>> ts = nnjax.sharding.data_parallel(nnjax.init_train_state(model, opt, jax.random.key(0), (3,)), mesh)
      >>> step = nnjax.sharding.jit_sharded(nnjax.make_train_step(model, nnjax.losses.mse, opt, jit=False), ts, mesh)
      >>> n = 4 * mesh.size
      >>> ts, metrics = step(ts, (np.ones((n, 3), np.float32), np.zeros((n, 2), np.float32)))
      >>> int(ts.step), sorted(metrics)
      (1, ['loss'])
    """
    mesh = make_mesh(axis) if mesh is None else mesh
    ts_sharding = jax.tree.map(lambda a: a.sharding, train_state)
    batch_sharding = NamedSharding(mesh, P(axis))
    return compile_jit(
        step,
        in_shardings=(ts_sharding, batch_sharding),
        out_shardings=(ts_sharding, NamedSharding(mesh, P())),
        donate_argnums=0,
    )


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: Sequence[int] | None = None,
    cpu_collectives: str | None = "gloo",
    **kwargs: Any,
) -> None:
    """Starts multi-process JAX: a thin wrapper over ``jax.distributed.initialize``; call it first.

    On TPU pods, SLURM and other managed clusters every argument can be omitted (JAX detects them). By hand,
    e.g. two processes on one machine::

        initialize_distributed("127.0.0.1:12345", num_processes=2, process_id=0)   # in process 0
        initialize_distributed("127.0.0.1:12345", num_processes=2, process_id=1)   # in process 1

    Args:
      coordinator_address: ``"host:port"`` of process 0, reachable by all processes.
      num_processes, process_id: the number of processes and this one's index.
      local_device_ids: restrict this process to some of its local devices.
      cpu_collectives: the cross-process collectives for CPU devices (``"gloo"``, ``"mpi"``, or ``None`` to
        leave JAX's setting); sets ``jax_cpu_collectives_implementation``. Without it, CPU computations
        spanning processes fail.
      **kwargs: passed to ``jax.distributed.initialize`` (e.g. ``initialization_timeout``).

    Returns:
      None. Afterwards ``jax.process_count()`` is ``num_processes`` and ``jax.devices()`` spans them all.

    Raises:
      RuntimeError: raised by JAX when it is called twice, or after JAX has already run a computation.
      ValueError, TypeError: raised by JAX for missing or inconsistent arguments where they cannot be
        detected (e.g. ``process_id >= num_processes``).

    Example:
      One process (no ``initialize_distributed`` call) is the single-host case; every function of
      ``nnjax.sharding`` works the same there:

      >>> jax.process_count(), jax.process_index()
      (1, 0)
      >>> nnjax.sharding.make_mesh().size == jax.local_device_count()
      True
    """
    if cpu_collectives is not None:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
        **kwargs,
    )


__all__ = [
    "data_parallel",
    "fsdp_spec",
    "global_batch_from_process_data",
    "initialize_distributed",
    "jit_sharded",
    "make_mesh",
    "shard_batch",
    "train_state_shardings",
]
