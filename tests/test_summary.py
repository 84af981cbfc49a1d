"""``summary``: totals equal the real parameter count; FLOPs come from XLA and scale with width."""

import jax
import jax.numpy as jnp
import pytest

import nnjax as nn
from nnjax._src.summary import summarize, summary


def real_count(model, input_shape, dtype=jnp.float32):
    params, state = model.init(jax.random.key(0), input_shape, dtype)
    return sum(a.size for a in jax.tree.leaves(params)), sum(a.nbytes for a in jax.tree.leaves(params))


MODELS = {
    "dense": (nn.Dense(7), (3,)),
    "mlp": (nn.serial(nn.Dense(32), nn.Relu(), nn.Dense(10)), (64,)),
    "nested": (
        nn.serial(
            nn.Flatten(),
            nn.Dense(16),
            nn.Tanh(),
            nn.residual(nn.Dense(8), nn.Relu(), nn.Dense(16)),
            nn.fanout(2),
            nn.parallel(nn.Dense(4), nn.serial(nn.Dense(5), nn.Relu())),
            nn.concatenate(),
            nn.Dropout(0.5),
            nn.Dense(3),
        ),
        (4, 4),
    ),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_totals_equal_real_parameter_count(name):
    model, shape = MODELS[name]
    s = summarize(model, shape)
    count, nbytes = real_count(model, shape)
    assert s.total_params == count
    assert s.param_bytes == nbytes
    assert sum(r.params for r in s.rows if not r.container) == count  # the rows add up too
    assert s.output_shape == model.output_shape(shape)
    assert f"Total params: {count:,}" in str(s)


def test_rows_walk_combinators_with_shapes_and_paths():
    model, shape = MODELS["nested"]
    s = summarize(model, shape, flops=False)
    params, _ = model.init(jax.random.key(0), shape)
    by_path = {r.path: r for r in s.rows}
    assert by_path["residual_3"].container and by_path["residual_3"].output_shape == (16,)
    assert by_path["residual_3/body/dense_0"].output_shape == (8,)
    assert by_path["residual_3/body/dense_0"].params == params["residual_3"]["body"]["dense_0"]["w"].size + 8
    assert by_path["parallel_5"].output_shape == ((4,), (5,))
    assert by_path["parallel_5/serial_1"].container and by_path["parallel_5/serial_1"].output_shape == (5,)
    assert by_path["parallel_5/serial_1/dense_0"].params == 16 * 5 + 5
    assert by_path["parallel_5/serial_1/dense_0"].depth == 2
    assert by_path["concatenate_6"].output_shape == (9,)
    assert by_path["flatten_0"].output_shape == (16,)
    assert all(r.flops is None for r in s.rows) and s.flops is None


def test_flops_positive_and_scale_with_width():
    def flops(width):
        return summarize(nn.serial(nn.Dense(width), nn.Relu(), nn.Dense(width)), (64,))

    small, large = flops(16), flops(64)
    assert small.flops > 0
    # a dense layer is about 2 * in * out FLOPs; the model's width grows 4x (first layer) and 16x (second)
    assert 2 * 64 * 16 <= small.rows[0].flops <= 2 * 64 * 16 + 4 * 16
    assert large.rows[0].flops / small.rows[0].flops == pytest.approx(4.0, rel=0.05)
    assert large.rows[2].flops / small.rows[2].flops == pytest.approx(16.0, rel=0.1)
    assert large.flops > 4 * small.flops


def test_memory_follows_dtype():
    model = nn.serial(nn.Dense(10), nn.Relu(), nn.Dense(2))
    f32, bf16 = summarize(model, (5,), flops=False), summarize(model, (5,), jnp.bfloat16, flops=False)
    assert f32.total_params == bf16.total_params == 5 * 10 + 10 + 10 * 2 + 2
    assert f32.param_bytes == 4 * f32.total_params and bf16.param_bytes == 2 * bf16.total_params


def test_summary_prints_unless_told_not_to(capsys):
    model = nn.serial(nn.Dense(32), nn.Relu(), nn.Dense(10))
    text = summary(model, (64,), show=False)
    assert capsys.readouterr().out == ""
    assert "Total params: 2,410 (9.4 KiB)" in text
    assert "dense_0  Dense(32)" in text and "(10,)" in text and "Forward FLOPs per example" in text
    printed = summary(model, (64,))
    assert capsys.readouterr().out.strip() == printed.strip()


def test_summary_does_not_allocate_parameters():
    model = nn.serial(nn.Dense(4096), nn.Dense(4096))  # 33.6M params (128 MiB): only shapes are traced
    s = summarize(model, (4096,), flops=False)
    assert s.total_params == 2 * (4096 * 4096 + 4096)
    assert "128.0 MiB" in str(s)
