"""Data-parallel and FSDP training on jax.sharding meshes, on one host or many."""

from nnjax._src.sharding import (
    data_parallel,
    fsdp_spec,
    global_batch_from_process_data,
    initialize_distributed,
    jit_sharded,
    make_mesh,
    shard_batch,
    train_state_shardings,
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
