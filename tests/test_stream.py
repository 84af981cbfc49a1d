"""Streaming from the host: prefetching keeps order and values; fit_stream equals a hand loop of steps."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnjax
from nnjax import losses, metrics

RNG = np.random.default_rng(0)
X = RNG.normal(size=(96, 5)).astype(np.float32)
Y = (X[:, 0] + X[:, 1] > 0).astype(np.int32)
MODEL = nnjax.serial(nnjax.Dense(16), nnjax.Relu(), nnjax.Dense(2))


def _batches(epoch):
    return nnjax.data.batches(X, Y, 16, seed=epoch, drop_last=True)


def test_prefetch_keeps_order_values_and_reads_ahead_by_size():
    pulled = []

    def source():
        for i in range(5):
            pulled.append(i)
            yield np.full((2, 3), i, np.float32)

    iterator = nnjax.prefetch_to_device(source(), size=2)
    first = next(iterator)
    assert isinstance(first, jax.Array) and float(first[0, 0]) == 0.0
    assert pulled == [0, 1, 2]  # the current batch and 2 ahead
    rest = [float(b[0, 0]) for b in iterator]
    assert rest == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="prefetch_to_device: argument `size`"):
        next(nnjax.prefetch_to_device(source(), size=0))


def test_fit_stream_equals_a_hand_written_loop_of_steps():
    optimizer = optax.adam(1e-2)
    result = nnjax.fit_stream(MODEL, losses.softmax_cross_entropy, optimizer, _batches, epochs=3,
                              metrics={"accuracy": metrics.accuracy}, validation_data=(X, Y), progress=False)
    step = nnjax.make_train_step(MODEL, losses.softmax_cross_entropy, optimizer)
    train_state = nnjax.init_train_state(MODEL, optimizer, jax.random.key(0), (5,))
    losses_by_epoch = []
    for epoch in range(3):
        values = []
        for batch in _batches(epoch):
            train_state, logs = step(train_state, batch)
            values.append(float(logs["loss"]))
        losses_by_epoch.append(np.mean(values))
    np.testing.assert_allclose(result.history["loss"], losses_by_epoch, rtol=1e-5)
    np.testing.assert_allclose(result.train_state.params["dense_2"]["w"], train_state.params["dense_2"]["w"],
                               rtol=1e-5, atol=1e-6)
    assert list(result.history) == ["loss", "accuracy", "val_loss", "val_accuracy"]
    assert result.history["val_accuracy"][-1] > 0.8


def test_fit_stream_continues_and_stops_by_callback():
    optimizer = optax.sgd(0.1)
    first = nnjax.fit_stream(MODEL, losses.softmax_cross_entropy, optimizer, _batches, epochs=1, progress=False)
    seen = []
    result = nnjax.fit_stream(MODEL, losses.softmax_cross_entropy, optimizer, _batches, epochs=5, initial_epoch=1,
                              train_state=first.train_state, progress=False,
                              callbacks=[lambda epoch, ts, logs: seen.append(epoch) or epoch == 2])
    assert seen == [1, 2] and int(result.train_state.step) == 3 * (96 // 16)
    with pytest.raises(ValueError, match="yielded no batch"):
        nnjax.fit_stream(MODEL, losses.softmax_cross_entropy, optimizer, lambda e: iter([]), epochs=1,
                         input_shape=(5,), progress=False)


def test_prefetch_to_a_sharding():
    mesh = nnjax.sharding.make_mesh()
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    (xb, yb), = list(nnjax.prefetch_to_device([(X[:8], Y[:8])], sharding=sharding))
    assert xb.sharding == sharding and jnp.array_equal(yb, Y[:8])
