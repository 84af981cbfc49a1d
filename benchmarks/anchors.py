#!/usr/bin/env python
"""nnjax's anchor benchmark: training-step speed of nnjax next to hand-written JAX and the libraries
users would pick instead (Flax Linen and NNX, Equinox, Haiku, PyTorch eager on CPU).

The workloads, the raw-JAX / Linen / NNX / Equinox / Haiku / PyTorch implementations and the protocol
are taken from the project's shared anchor benchmark (``shared/bench/anchors.py``, 2026-11-24); this file
adds the nnjax rows, the fused-fit rows, the exact FLOP count of the MLP step and a targets summary.

Workloads (``--only`` picks some, comma-separated):
  peak        float32 2048x2048 matmul through XLA (and torch.mm): the machine's matmul peak, measured
              at the start and again at the end of the run.
  tiny        4-8-1 ReLU MLP, MSE, SGD, batch 32, one jitted step per Python call (dispatch overhead).
  tiny_fused  the same model trained over epochs of 100 batches: Python loop vs lax.scan vs ``fit``
              (``fused=False`` / ``"epoch"`` / ``"all"``).
  mlp         784-512-512-10 ReLU MLP, batch 128, Adam, one jitted step per call.
  mlp_scan    the same, 100 steps fused (lax.scan over make_train_step(jit=False), ``fit`` fused).
  cnn         2 conv + 2 dense on 28x28x1, batch 128, Adam (nnjax rows when nnjax has Conv and MaxPool).
  lstm        Embedding 96->64, LSTM 256, seq 64, batch 32, next-token CE (nnjax rows when nnjax has LSTM).
  ensemble    32 independent 784-64-10 MLPs, one Adam step each, one jit(vmap(step)) program.

Protocol (per workload): synthetic data made once with fixed seeds and put on the device; each
implementation is built and compiled first ("first call s"); the units per measurement are calibrated so
one measurement takes about ``--target-s`` s; ``--repeats`` measurements interleave the implementations
(A B C A B C ...) with the garbage collector off inside a measurement; the table shows the median and
min-max per-step time and the ratio of medians to hand-written JAX measured in the same run. Rows whose
library is not installed are skipped with a note.

``fit`` rows: ``fit`` compiles a fresh program on each call, so its steady-state speed is measured
without the compile: ``fused=False`` / ``"epoch"`` time the epochs after the first one with a callback;
``fused="all"`` (callbacks run after the one program) from the end of the program's compile, as reported
through ``jax.monitoring``, to the first callback, for 1 + n epochs minus the same for 1 epoch.

Usage:
  python benchmarks/anchors.py                 # everything; writes benchmarks/results-<date>.md
  python benchmarks/anchors.py --quick         # smoke test: few, short repeats
  python benchmarks/anchors.py --only tiny,ensemble --impls 'nnjax*'   # nnjax rows + the raw-JAX baselines
Progress goes to stderr; the markdown report to stdout and to the results file.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import importlib
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from functools import partial

WORKLOADS = ["peak", "tiny", "tiny_fused", "mlp", "mlp_scan", "cnn", "lstm", "ensemble"]
HERE = os.path.dirname(os.path.abspath(__file__))

# Optional libraries: a module object, or None when absent (its rows are skipped with a note).
np = jax = jnp = lax = optax = nnjax = None
nn_linen = flax_train_state = nnx = eqx = hk = torch = tnn = F = None
MISSING: dict[str, str] = {}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def setup_libs() -> dict[str, bool]:
    """Imports the required libraries and whichever optional ones are installed."""
    g = globals()
    import jax as _jax
    import jax.numpy as _jnp
    import numpy as _np
    import optax as _optax
    from jax import lax as _lax

    import nnjax as _nnjax

    g.update(np=_np, jax=_jax, jnp=_jnp, lax=_lax, optax=_optax, nnjax=_nnjax)
    optional = {
        "linen": ("flax.linen", "nn_linen"),
        "linen_ts": ("flax.training.train_state", "flax_train_state"),
        "nnx": ("flax.nnx", "nnx"),
        "eqx": ("equinox", "eqx"),
        "haiku": ("haiku", "hk"),
        "torch": ("torch", "torch"),
    }
    for lib, (module, name) in optional.items():
        try:
            g[name] = importlib.import_module(module)
        except Exception as e:  # noqa: BLE001 - any import failure means "not installed"
            g[name] = None
            MISSING[lib] = f"{module} not importable ({type(e).__name__})"
    if not g.get("_LISTENING"):
        _jax.monitoring.register_event_duration_secs_listener(_on_duration)
        g["_LISTENING"] = True
    if torch is not None:
        g["tnn"] = importlib.import_module("torch.nn")
        g["F"] = importlib.import_module("torch.nn.functional")
        torch.set_num_threads(os.cpu_count() or 1)
    return {lib: lib not in MISSING for lib in optional}


def have(lib: str) -> bool:
    mods = {"linen": (nn_linen, flax_train_state), "nnx": (nnx,), "eqx": (eqx,), "haiku": (hk,), "torch": (torch,)}
    return all(m is not None for m in mods.get(lib, (True,)))


# --------------------------------------------------------------------------------------
# harness (protocol of shared/bench/anchors.py)
# --------------------------------------------------------------------------------------


class Impl:
    """One implementation of one workload.

    ``build() -> run``; ``run(n)`` performs n units (a unit is ``steps_per_unit`` training steps) and
    returns when the work is done. ``run`` may return the seconds to count (fit rows, which exclude
    their compile); otherwise the wall time of the call is counted. ``calibrate="key"`` sizes the
    measurements from the per-step time of that earlier implementation instead of calibrating (for rows
    whose every call compiles); it calibrates itself when that one did not run.
    """

    def __init__(self, key, label, build, steps_per_unit=1, calibrate=True):
        self.key, self.label, self.build, self.spu, self.calibrate = key, label, build, steps_per_unit, calibrate
        self.run = self.err = self.first_s = self.n = None
        self.samples: list[float] = []


class Workload:
    """The implementations of a workload, its baseline key, an optional second reference, a note."""

    def __init__(self, impls, base, note="", ref2=None, skipped=()):
        self.impls, self.base, self.note, self.ref2, self.skipped = impls, base, note, ref2, list(skipped)

    def median(self, key):
        im = next((im for im in self.impls if im.key == key and im.samples), None)
        return statistics.median(im.samples) if im else None


def _timed(run, n):
    gc_was = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        counted = run(n)
        wall = time.perf_counter() - t0
        return wall if counted is None else counted
    finally:
        if gc_was:
            gc.enable()


def _short_err(e):
    msg = f"{type(e).__name__}: {e}".strip().splitlines()
    return (msg[0] if msg else type(e).__name__)[:240]


def bench_workload(name, impls, args):
    live, per_step = [], {}
    for im in impls:
        log(f"[{name}] build+warmup {im.key} ...")
        try:
            im.run = im.build()
            t0 = time.perf_counter()
            im.run(1)  # compile + first unit
            im.first_s = time.perf_counter() - t0
            if im.calibrate is True or im.calibrate not in per_step:
                im.run(args.warmup_units)
                k = 1
                while True:
                    t = _timed(im.run, k)
                    if t >= args.calib_s or k >= (1 << 22):
                        break
                    k = max(k * 2, int(k * args.calib_s / max(t, 1e-6) * 1.2))
                per_unit = min([t / k] + [_timed(im.run, k) / k for _ in range(args.calib_runs - 1)])
            else:
                per_unit = per_step[im.calibrate] * im.spu
            im.n = max(args.min_units, int(math.ceil(args.target_s / per_unit)))
            per_step[im.key] = per_unit / im.spu
            live.append(im)
            log(f"[{name}]   first call {im.first_s:.2f}s, ~{per_unit / im.spu * 1e3:.4f} ms/step, {im.n} units")
        except Exception as e:  # noqa: BLE001 - report and continue
            im.err, im.run = _short_err(e), None
            log(f"[{name}]   FAILED: {im.err}")
    for r in range(args.repeats):
        for im in live:
            if im.err:
                continue
            time.sleep(args.pause_s)
            try:
                im.samples.append(_timed(im.run, im.n) / (im.n * im.spu))
            except Exception as e:  # noqa: BLE001
                im.err = _short_err(e)
        log(f"[{name}] repeat {r + 1}/{args.repeats} done")
    for im in impls:
        im.run = None  # free closures and device buffers
    gc.collect()
    return impls


def fmt_ms(v):
    if v is None:
        return "n/a"
    if v >= 100:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.3f}"
    if v >= 0.01:
        return f"{v:.4f}"
    return f"{v:.5f}"


# --------------------------------------------------------------------------------------
# builders, one per library in that library's idiom (from shared/bench/anchors.py)
# --------------------------------------------------------------------------------------


def ce_loss(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def mse_loss(pred, y):
    return jnp.mean((pred - y) ** 2)


def torch_ce(logits, y):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def to_jax(*arrs):
    return tuple(jax.device_put(a) for a in arrs)


def to_torch(*arrs):
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in arrs)


def build_jax(params, loss_fn, tx, data, compiler_options=None):
    """Raw JAX + optax: pure functions, value_and_grad, jit with donated state (and ``compiler_options``)."""

    def _build():
        opt_state = tx.init(params)

        @partial(jax.jit, donate_argnums=(0, 1), compiler_options=compiler_options)
        def train_step(params, opt_state, x, y):
            loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        st = [jax.tree.map(jnp.copy, params), opt_state]
        nb = len(data)

        def run(n):
            p, o = st
            for i in range(n):
                x, y = data[i % nb]
                p, o, _ = train_step(p, o, x, y)
            jax.block_until_ready((p, o))
            st[0], st[1] = p, o

        return run

    return _build


def build_jax_scan(params, loss_fn, tx, xs, ys):
    """Raw JAX: one epoch (len(xs) steps) in one jitted lax.scan, donated state."""

    def _build():
        @partial(jax.jit, donate_argnums=(0, 1))
        def train_epoch(params, opt_state, xs, ys):
            def body(carry, batch):
                p, o = carry
                loss, g = jax.value_and_grad(loss_fn)(p, *batch)
                u, o = tx.update(g, o, p)
                return (optax.apply_updates(p, u), o), loss

            (params, opt_state), losses = lax.scan(body, (params, opt_state), (xs, ys))
            return params, opt_state, losses

        st = [jax.tree.map(jnp.copy, params), tx.init(params)]

        def run(n):
            p, o = st
            for _ in range(n):
                p, o, _ = train_epoch(p, o, xs, ys)
            jax.block_until_ready((p, o))
            st[0], st[1] = p, o

        return run

    return _build


def raw_key_state(ts):
    """Prototype of the proposed fix: the TrainState's key stored as raw uint32 key data."""
    return ts.replace(key=jax.random.key_data(ts.key))


def build_nnjax_namedtuple(model, loss, tx, input_shape, data):
    """Prototype of a second fix: nnjax's step unchanged, but the TrainState a NamedTuple (flattened and rebuilt
    by JAX's C++ pytree code, no dataclass __init__ per call) holding a raw uint32 key."""
    from typing import Any, NamedTuple

    class TupleTrainState(NamedTuple):
        step: Any
        params: Any
        state: Any
        opt_state: Any
        key: Any

        def replace(self, **changes):
            return self._replace(**changes)

    def _build():
        ts = nnjax.init_train_state(model, tx, jax.random.key(0), input_shape)
        ts = TupleTrainState(ts.step, ts.params, ts.state, ts.opt_state, jax.random.key_data(ts.key))
        step = nnjax.make_train_step(model, loss, tx)  # duck-typed: uses .step/.params/.../.replace only
        st = [ts]
        nb = len(data)

        def run(n):
            s = st[0]
            for i in range(n):
                s, _ = step(s, data[i % nb])
            jax.block_until_ready(s)
            st[0] = s

        return run

    return _build


def has_typed_key(ts):
    return jax.dtypes.issubdtype(ts.key.dtype, jax.dtypes.prng_key)


def build_nnjax(model, loss, tx, input_shape, data, *, raw_key=False):
    """nnjax: init_train_state + make_train_step (jit, donated TrainState), Python loop."""

    def _build():
        ts = nnjax.init_train_state(model, tx, jax.random.key(0), input_shape)
        if raw_key:
            ts = raw_key_state(ts)
        step = nnjax.make_train_step(model, loss, tx)
        st = [ts]
        nb = len(data)

        def run(n):
            s = st[0]
            for i in range(n):
                s, _ = step(s, data[i % nb])
            jax.block_until_ready(s)
            st[0] = s

        return run

    return _build


def build_nnjax_scan(model, loss, tx, input_shape, xs, ys):
    """nnjax: jit(lax.scan(make_train_step(jit=False))) over an epoch of batches, donated TrainState."""

    def _build():
        step = nnjax.make_train_step(model, loss, tx, jit=False)
        epoch = jax.jit(lambda ts, xs, ys: lax.scan(step, ts, (xs, ys)), donate_argnums=0)
        st = [nnjax.init_train_state(model, tx, jax.random.key(0), input_shape)]

        def run(n):
            s = st[0]
            for _ in range(n):
                s, _ = epoch(s, xs, ys)
            jax.block_until_ready(s)
            st[0] = s

        return run

    return _build


COMPILE_S = [0.0]  # seconds JAX reported spending in tracing, lowering and compiling (jax.monitoring)
COMPILE_END = [0.0]  # when the last such report came (perf_counter): the end of the latest compile


def _on_duration(event, duration, **_):
    if event.startswith("/jax/core/compile/"):
        COMPILE_S[0] += duration
        COMPILE_END[0] = time.perf_counter()


def clock():
    """Wall time minus the time spent compiling so far: differences of it exclude any compile in between."""
    return time.perf_counter() - COMPILE_S[0]


def build_nnjax_fit(model, loss, tx, x, y, batch_size, fused):
    """nnjax.fit: steady-state time per epoch, compiles excluded (see the module docstring)."""

    def _build():
        st = [None]
        common = dict(batch_size=batch_size, fused=fused, progress=False)

        def fit_to(epochs, callbacks=()):
            res = nnjax.fit(model, loss, tx, x, y, epochs=epochs, train_state=st[0], callbacks=callbacks, **common)
            jax.block_until_ready(res.train_state)
            st[0] = res.train_state

        def done_epochs():  # the first call initializes the train state; later ones continue from it
            return 0 if st[0] is None else int(st[0].step) // (x.shape[0] // batch_size)

        def run(n):
            if fused == "all":
                # The run is one program, compiled then run inside fit; callbacks come after it. From the end of
                # its compile to the first callback is its run (+ fetching the logs); the same for one epoch,
                # subtracted, leaves n epochs without the first run's one-time costs.
                times = []
                for extra in (1, 1 + n):
                    stamps = []
                    stamp = partial(lambda out, *_: out.append(time.perf_counter()), stamps)
                    fit_to(done_epochs() + extra, callbacks=[stamp])
                    times.append(stamps[0] - COMPILE_END[0])
                return max(times[1] - times[0], 1e-9)
            stamps = []  # after each epoch; the first epoch (compile) is left out
            fit_to(done_epochs() + 1 + n, callbacks=[lambda epoch, ts, logs: stamps.append(clock())])
            return stamps[-1] - stamps[0]

        return run

    return _build


def linen_train_step(state, x, y, loss_from_out):
    def loss_fn(params):
        return loss_from_out(state.apply_fn({"params": params}, x), y)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss


def linen_state(module, x0, tx):
    params = module.init(jax.random.key(0), x0)["params"]
    return flax_train_state.TrainState.create(apply_fn=module.apply, params=params, tx=tx)


def build_linen(module, x0, loss_from_out, tx, data):
    """Flax Linen: TrainState + module.apply inside jax.jit (as in the Flax examples)."""

    def _build():
        train_step = jax.jit(partial(linen_train_step, loss_from_out=loss_from_out))
        st = [linen_state(module, x0, tx)]
        nb = len(data)

        def run(n):
            s = st[0]
            for i in range(n):
                x, y = data[i % nb]
                s, _ = train_step(s, x, y)
            jax.block_until_ready(s)
            st[0] = s

        return run

    return _build


def build_linen_scan(module, x0, loss_from_out, tx, xs, ys):
    def _build():
        step = partial(linen_train_step, loss_from_out=loss_from_out)
        train_epoch = jax.jit(lambda s, xs, ys: lax.scan(lambda s, b: step(s, *b), s, (xs, ys)))
        st = [linen_state(module, x0, tx)]

        def run(n):
            s = st[0]
            for _ in range(n):
                s, _ = train_epoch(s, xs, ys)
            jax.block_until_ready(s)
            st[0] = s

        return run

    return _build


def build_haiku(forward, x0, loss_from_out, tx, data):
    """Haiku: hk.transform + jax.jit'd update on (params, opt_state)."""

    def _build():
        net = hk.without_apply_rng(hk.transform(forward))
        params = net.init(jax.random.PRNGKey(0), x0)

        def loss_fn(params, x, y):
            return loss_from_out(net.apply(params, x), y)

        @jax.jit
        def update(params, opt_state, x, y):
            loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        st = [params, tx.init(params)]
        nb = len(data)

        def run(n):
            p, o = st
            for i in range(n):
                x, y = data[i % nb]
                p, o, _ = update(p, o, x, y)
            jax.block_until_ready((p, o))
            st[0], st[1] = p, o

        return run

    return _build


def eqx_loss(model, x, y, loss_from_out):
    return loss_from_out(jax.vmap(model)(x), y)


def build_eqx(make_model, loss_from_out, tx, data):
    """Equinox: per-example module + jax.vmap, eqx.filter_jit / filter_value_and_grad."""

    def _build():
        model = make_model()
        opt_state = tx.init(eqx.filter(model, eqx.is_array))
        loss_fn = partial(eqx_loss, loss_from_out=loss_from_out)

        @eqx.filter_jit
        def make_step(model, opt_state, x, y):
            loss, grads = eqx.filter_value_and_grad(loss_fn)(model, x, y)
            updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
            return eqx.apply_updates(model, updates), opt_state, loss

        st = [model, opt_state]
        nb = len(data)

        def run(n):
            m, o = st
            for i in range(n):
                x, y = data[i % nb]
                m, o, _ = make_step(m, o, x, y)
            jax.block_until_ready((eqx.filter(m, eqx.is_array), o))
            st[0], st[1] = m, o

        return run

    return _build


def build_eqx_partition(make_model, loss_from_out, tx, data):
    """Equinox split once with eqx.partition, step under plain jax.jit (no per-call filtering)."""

    def _build():
        params, static = eqx.partition(make_model(), eqx.is_array)
        loss_fn = partial(eqx_loss, loss_from_out=loss_from_out)

        @jax.jit
        def step(params, opt_state, x, y):
            loss, grads = eqx.filter_value_and_grad(loss_fn)(eqx.combine(params, static), x, y)
            updates, opt_state = tx.update(grads, opt_state, params)
            return eqx.apply_updates(params, updates), opt_state, loss

        st = [params, tx.init(params)]
        nb = len(data)

        def run(n):
            p, o = st
            for i in range(n):
                x, y = data[i % nb]
                p, o, _ = step(p, o, x, y)
            jax.block_until_ready((p, o))
            st[0], st[1] = p, o

        return run

    return _build


def build_eqx_scan(make_model, loss_from_out, tx, xs, ys):
    def _build():
        params, static = eqx.partition(make_model(), eqx.is_array)
        loss_fn = partial(eqx_loss, loss_from_out=loss_from_out)

        @eqx.filter_jit
        def train_epoch(params, opt_state, xs, ys):
            def body(carry, batch):
                p, o = carry
                loss, g = eqx.filter_value_and_grad(loss_fn)(eqx.combine(p, static), *batch)
                u, o = tx.update(g, o, p)
                return (eqx.apply_updates(p, u), o), loss

            (params, opt_state), losses = lax.scan(body, (params, opt_state), (xs, ys))
            return params, opt_state, losses

        st = [params, tx.init(params)]

        def run(n):
            p, o = st
            for _ in range(n):
                p, o, _ = train_epoch(p, o, xs, ys)
            jax.block_until_ready((p, o))
            st[0], st[1] = p, o

        return run

    return _build


def nnx_train_step(model, optimizer, x, y, loss_from_out):
    def loss_fn(model):
        return loss_from_out(model(x), y)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


NNX_MODES = {
    "nnx": "flax_nnx: nnx.jit + nnx.Optimizer (default graph mode)",
    "nnx_jit_partial": "flax_nnx: nnx.jit_partial(step, model, opt, graph=False)",
}


def build_nnx(make_model, loss_from_out, tx, data, mode):
    """Flax NNX: the idiomatic nnx.jit, and the fastest documented call style (jit_partial)."""

    def _build():
        model = make_model()
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        step_fn = partial(nnx_train_step, loss_from_out=loss_from_out)
        nb = len(data)
        if mode == "nnx":
            jitted = nnx.jit(step_fn)
            call = lambda x, y: jitted(model, optimizer, x, y)  # noqa: E731
        else:
            call = nnx.jit_partial(step_fn, model, optimizer, graph=False)

        def run(n):
            for i in range(n):
                call(*data[i % nb])
            jax.block_until_ready(nnx.state((model, optimizer)))

        return run

    return _build


def build_torch(make_model, make_opt, loss_from_out, data):
    """PyTorch eager: zero_grad / forward / backward / optimizer.step."""

    def _build():
        torch.manual_seed(0)
        model = make_model()
        opt = make_opt(model.parameters())
        nb = len(data)

        def run(n):
            for i in range(n):
                x, y = data[i % nb]
                opt.zero_grad(set_to_none=True)
                loss_from_out(model(x), y).backward()
                opt.step()

        return run

    return _build


# --------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------


def jax_dense_init(key, din, dout):
    w = jax.random.normal(key, (din, dout), jnp.float32) * math.sqrt(2.0 / din)
    return {"w": w, "b": jnp.zeros((dout,), jnp.float32)}


def jax_mlp_init(key, sizes):
    keys = jax.random.split(key, len(sizes) - 1)
    return [jax_dense_init(k, a, b) for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)]


def jax_mlp_apply(params, x):
    for i, layer in enumerate(params):
        x = x @ layer["w"] + layer["b"]
        if i < len(params) - 1:
            x = jax.nn.relu(x)
    return x


def jax_mlp_loss(params, x, y):
    return ce_loss(jax_mlp_apply(params, x), y)


def jax_mlp_mse(params, x, y):
    return mse_loss(jax_mlp_apply(params, x), y)


def nnjax_mlp(sizes):
    layers = []
    for i, width in enumerate(sizes[1:]):
        layers.append(nnjax.Dense(width))
        if i < len(sizes) - 2:
            layers.append(nnjax.Relu())
    return nnjax.serial(*layers)


def make_linen_mlp(hidden, out):
    class MLP(nn_linen.Module):
        @nn_linen.compact
        def __call__(self, x):
            for h in hidden:
                x = nn_linen.relu(nn_linen.Dense(h)(x))
            return nn_linen.Dense(out)(x)

    return MLP()


def make_nnx_mlp(sizes, seed=0):
    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)])

        def __call__(self, x):
            for i, layer in enumerate(self.layers):
                x = layer(x)
                if i < len(self.layers) - 1:
                    x = nnx.relu(x)
            return x

    return lambda: MLP(nnx.Rngs(seed))


def make_eqx_mlp(sizes, seed=0):
    return lambda: eqx.nn.MLP(
        sizes[0], sizes[-1], sizes[1], depth=len(sizes) - 2, activation=jax.nn.relu, key=jax.random.PRNGKey(seed)
    )


def make_hk_mlp(sizes):
    return lambda x: hk.nets.MLP(list(sizes[1:]), activation=jax.nn.relu)(x)


def make_torch_mlp(sizes):
    def make():
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(tnn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(tnn.ReLU())
        return tnn.Sequential(*layers)

    return make


def torch_adam(lr):
    return lambda p: torch.optim.Adam(p, lr=lr)


def selected(key, keep):
    """``--impls`` matching: a key, or a prefix ending in ``*`` (``nnjax*`` keeps every nnjax row)."""
    return any(key == k or (k.endswith("*") and key.startswith(k[:-1])) for k in keep)


class Rows:
    """Collects a workload's implementations, skipping those whose library is absent or not selected."""

    def __init__(self, keep, base):
        self.keep, self.base, self.impls, self.skipped = keep, base, [], []

    def add(self, lib, key, label, make_build, **kw):
        if self.keep and key != self.base and not selected(key, self.keep):
            return
        if lib != "jax" and not have(lib):
            self.skipped.append((key, f"{lib} not installed"))
            return
        try:
            self.impls.append(Impl(key, label, make_build(), **kw))
        except Exception as e:  # noqa: BLE001 - a row that cannot even be set up
            self.skipped.append((key, _short_err(e)))


# --------------------------------------------------------------------------------------
# workloads
# --------------------------------------------------------------------------------------

MLP_SIZES = (784, 512, 512, 10)
MLP_B = 128
NB = 4  # distinct pre-generated batches cycled through (same for every implementation)
SCAN_STEPS = 100
TINY_SIZES = (4, 8, 1)
TINY_B = 32


def mlp_flops_executed(b=MLP_B, sizes=MLP_SIZES):
    """FLOPs of one training step as executed: forward (2BMN per layer), weight gradients (2BMN per
    layer) and input gradients for every layer but the first (nothing needs d loss / d input)."""
    layers = list(zip(sizes[:-1], sizes[1:], strict=True))
    fwd = sum(2 * b * m * n for m, n in layers)
    return fwd + fwd + (fwd - 2 * b * layers[0][0] * layers[0][1])


def mlp_flops_3x(b=MLP_B, sizes=MLP_SIZES):
    return 3 * sum(2 * b * m * n for m, n in zip(sizes[:-1], sizes[1:], strict=True))


def mlp_data(nbatches, seed):
    rs = np.random.RandomState(seed)
    x = rs.standard_normal((nbatches, MLP_B, 784)).astype(np.float32)
    y = rs.randint(0, 10, size=(nbatches, MLP_B)).astype(np.int32)
    return x, y


def tiny_data(nbatches, seed=5):
    rs = np.random.RandomState(seed)
    x = rs.standard_normal((nbatches, TINY_B, 4)).astype(np.float32)
    w = np.array([[3.0], [-1.0], [0.5], [2.0]], np.float32)
    y = (x @ w + 0.1 * rs.standard_normal((nbatches, TINY_B, 1))).astype(np.float32)
    return x, y


def workload_tiny(keep):
    x, y = tiny_data(NB)
    jd = [to_jax(x[i], y[i]) for i in range(NB)]
    tx = optax.sgd(1e-2)
    model = nnjax_mlp(TINY_SIZES)
    r = Rows(keep, "jax")
    r.add(
        "jax",
        "jax",
        "raw JAX + optax (jit, donate)",
        lambda: build_jax(jax_mlp_init(jax.random.PRNGKey(0), TINY_SIZES), jax_mlp_mse, tx, jd),
    )
    r.add(
        "jax",
        "nnjax",
        "nnjax: make_train_step (jit, donated TrainState)",
        lambda: build_nnjax(model, nnjax.losses.mse, tx, (4,), jd),
    )
    if has_typed_key(nnjax.init_train_state(model, tx, jax.random.key(0), (4,))):
        r.add(
            "jax",
            "nnjax_rawkey",
            "nnjax, prototype fix: TrainState.key as raw uint32 key data",
            lambda: build_nnjax(model, nnjax.losses.mse, tx, (4,), jd, raw_key=True),
        )
        r.add(
            "jax",
            "nnjax_tuple",
            "nnjax, prototype fix: TrainState as a NamedTuple + raw key",
            lambda: build_nnjax_namedtuple(model, nnjax.losses.mse, tx, (4,), jd),
        )
    r.add(
        "linen",
        "linen",
        "flax_linen: TrainState + jax.jit",
        lambda: build_linen(make_linen_mlp(TINY_SIZES[1:-1], 1), jd[0][0], mse_loss, tx, jd),
    )
    for mode, label in NNX_MODES.items():
        r.add("nnx", mode, label, lambda mode=mode: build_nnx(make_nnx_mlp(TINY_SIZES), mse_loss, tx, jd, mode))
    r.add(
        "eqx", "eqx", "equinox: eqx.nn.MLP + filter_jit", lambda: build_eqx(make_eqx_mlp(TINY_SIZES), mse_loss, tx, jd)
    )
    r.add(
        "eqx",
        "eqx_partition",
        "equinox: eqx.partition once + jax.jit",
        lambda: build_eqx_partition(make_eqx_mlp(TINY_SIZES), mse_loss, tx, jd),
    )
    r.add(
        "haiku",
        "haiku",
        "haiku: hk.transform + jax.jit",
        lambda: build_haiku(make_hk_mlp(TINY_SIZES), jd[0][0], mse_loss, tx, jd),
    )
    r.add(
        "torch",
        "torch",
        "torch eager",
        lambda: build_torch(
            make_torch_mlp(TINY_SIZES),
            lambda p: torch.optim.SGD(p, lr=1e-2),
            F.mse_loss,
            [to_torch(x[i], y[i]) for i in range(NB)],
        ),
    )
    return Workload(
        r.impls,
        "jax",
        f"{TINY_SIZES} ReLU MLP, MSE, SGD(1e-2), batch {TINY_B}: per-step dispatch overhead.",
        skipped=r.skipped,
    )


def workload_tiny_fused(keep):
    x, y = tiny_data(SCAN_STEPS, seed=7)
    xs, ys = to_jax(x, y)
    jd = [to_jax(x[i], y[i]) for i in range(SCAN_STEPS)]
    flat_x, flat_y = x.reshape(-1, 4), y.reshape(-1, 1)
    tx = optax.sgd(1e-2)
    model = nnjax_mlp(TINY_SIZES)
    p0 = jax_mlp_init(jax.random.PRNGKey(0), TINY_SIZES)
    loss = nnjax.losses.mse
    r = Rows(keep, "jax_loop")
    r.add(
        "jax",
        "jax_loop",
        "raw JAX: jitted step, Python loop over 100 batches",
        lambda: build_jax(p0, jax_mlp_mse, tx, jd),
    )
    r.add(
        "jax",
        "jax_scan",
        "raw JAX: 100 steps in one lax.scan",
        lambda: build_jax_scan(p0, jax_mlp_mse, tx, xs, ys),
        steps_per_unit=SCAN_STEPS,
    )
    r.add(
        "jax",
        "nnjax_loop",
        "nnjax: jitted make_train_step, Python loop",
        lambda: build_nnjax(model, loss, tx, (4,), jd),
    )
    r.add(
        "jax",
        "nnjax_scan",
        "nnjax: lax.scan over make_train_step(jit=False)",
        lambda: build_nnjax_scan(model, loss, tx, (4,), xs, ys),
        steps_per_unit=SCAN_STEPS,
    )
    for fused, key, like in (
        (False, "nnjax_fit_loop", "nnjax_loop"),
        ("epoch", "nnjax_fit_epoch", "nnjax_scan"),
        ("all", "nnjax_fit_all", "nnjax_scan"),
    ):
        r.add(
            "jax",
            key,
            f"nnjax: fit(fused={fused!r}), {SCAN_STEPS} steps/epoch, shuffled on device",
            lambda fused=fused: build_nnjax_fit(model, loss, tx, flat_x, flat_y, TINY_B, fused),
            steps_per_unit=SCAN_STEPS,
            calibrate=like,
        )
    return Workload(
        r.impls,
        "jax_loop",
        f"{TINY_SIZES} MLP, MSE, SGD(1e-2), batch {TINY_B}; one unit = an epoch of {SCAN_STEPS} batches. "
        "fit rows: steady state without the compile (module docstring); they also shuffle and gather "
        "each batch on the device.",
        ref2="nnjax_fit_loop",
        skipped=r.skipped,
    )


def workload_mlp(keep):
    x, y = mlp_data(NB, 0)
    jd = [to_jax(x[i], y[i]) for i in range(NB)]
    tx = optax.adam(1e-3)
    x0 = jd[0][0]
    r = Rows(keep, "jax")
    r.add(
        "jax",
        "jax",
        "raw JAX + optax (jit, donate)",
        lambda: build_jax(jax_mlp_init(jax.random.PRNGKey(0), MLP_SIZES), jax_mlp_loss, tx, jd),
    )
    r.add(
        "jax",
        "nnjax",
        "nnjax: make_train_step (jit, donated TrainState)",
        lambda: build_nnjax(nnjax_mlp(MLP_SIZES), nnjax.losses.softmax_cross_entropy, tx, (784,), jd),
    )
    r.add(
        "linen",
        "linen",
        "flax_linen: TrainState + jax.jit",
        lambda: build_linen(make_linen_mlp(MLP_SIZES[1:-1], 10), x0, ce_loss, tx, jd),
    )
    for mode, label in NNX_MODES.items():
        r.add("nnx", mode, label, lambda mode=mode: build_nnx(make_nnx_mlp(MLP_SIZES), ce_loss, tx, jd, mode))
    r.add("eqx", "eqx", "equinox: eqx.nn.MLP + filter_jit", lambda: build_eqx(make_eqx_mlp(MLP_SIZES), ce_loss, tx, jd))
    r.add(
        "eqx",
        "eqx_partition",
        "equinox: eqx.partition once + jax.jit",
        lambda: build_eqx_partition(make_eqx_mlp(MLP_SIZES), ce_loss, tx, jd),
    )
    r.add(
        "haiku",
        "haiku",
        "haiku: hk.transform + jax.jit",
        lambda: build_haiku(make_hk_mlp(MLP_SIZES), x0, ce_loss, tx, jd),
    )
    r.add(
        "torch",
        "torch",
        "torch eager",
        lambda: build_torch(
            make_torch_mlp(MLP_SIZES),
            torch_adam(1e-3),
            torch_ce,
            [to_torch(x[i], y[i].astype(np.int64)) for i in range(NB)],
        ),
    )
    return Workload(
        r.impls, "jax", f"{MLP_SIZES} ReLU MLP, batch {MLP_B}, Adam(1e-3), softmax cross-entropy.", skipped=r.skipped
    )


def workload_mlp_scan(keep):
    x, y = mlp_data(SCAN_STEPS, 1)
    xs, ys = to_jax(x, y)
    jd = [to_jax(x[i], y[i]) for i in range(SCAN_STEPS)]
    flat_x, flat_y = x.reshape(-1, 784), y.reshape(-1)
    tx = optax.adam(1e-3)
    p0 = jax_mlp_init(jax.random.PRNGKey(0), MLP_SIZES)
    model, loss = nnjax_mlp(MLP_SIZES), nnjax.losses.softmax_cross_entropy
    r = Rows(keep, "jax_loop")
    r.add(
        "jax",
        "jax_loop",
        "raw JAX: jitted step, Python loop over 100 batches",
        lambda: build_jax(p0, jax_mlp_loss, tx, jd),
    )
    r.add(
        "jax",
        "jax_scan",
        "raw JAX: 100 steps in one lax.scan (jit, donate)",
        lambda: build_jax_scan(p0, jax_mlp_loss, tx, xs, ys),
        steps_per_unit=SCAN_STEPS,
    )
    r.add(
        "jax",
        "nnjax_loop",
        "nnjax: jitted make_train_step, Python loop",
        lambda: build_nnjax(model, loss, tx, (784,), jd),
    )
    r.add(
        "jax",
        "nnjax_scan",
        "nnjax: lax.scan over make_train_step(jit=False) (jit, donate)",
        lambda: build_nnjax_scan(model, loss, tx, (784,), xs, ys),
        steps_per_unit=SCAN_STEPS,
    )
    for fused in ("epoch", "all"):
        r.add(
            "jax",
            f"nnjax_fit_{fused}",
            f"nnjax: fit(fused={fused!r}), 100 steps/epoch, shuffled on device",
            lambda fused=fused: build_nnjax_fit(model, loss, tx, flat_x, flat_y, MLP_B, fused),
            steps_per_unit=SCAN_STEPS,
            calibrate="nnjax_scan",
        )
    module = make_linen_mlp(MLP_SIZES[1:-1], 10) if have("linen") else None
    r.add(
        "linen",
        "linen_loop",
        "flax_linen: jitted step, Python loop",
        lambda: build_linen(module, jd[0][0], ce_loss, tx, jd),
    )
    r.add(
        "linen",
        "linen_scan",
        "flax_linen: TrainState carried through lax.scan",
        lambda: build_linen_scan(module, jd[0][0], ce_loss, tx, xs, ys),
        steps_per_unit=SCAN_STEPS,
    )
    r.add(
        "eqx",
        "eqx_loop",
        "equinox: filter_jit step, Python loop",
        lambda: build_eqx(make_eqx_mlp(MLP_SIZES), ce_loss, tx, jd),
    )
    r.add(
        "eqx",
        "eqx_scan",
        "equinox: partition/combine + lax.scan",
        lambda: build_eqx_scan(make_eqx_mlp(MLP_SIZES), ce_loss, tx, xs, ys),
        steps_per_unit=SCAN_STEPS,
    )
    r.add(
        "torch",
        "torch_loop",
        "torch eager, Python loop",
        lambda: build_torch(
            make_torch_mlp(MLP_SIZES),
            torch_adam(1e-3),
            torch_ce,
            [to_torch(x[i], y[i].astype(np.int64)) for i in range(SCAN_STEPS)],
        ),
    )
    return Workload(
        r.impls,
        "jax_loop",
        f"One unit = one epoch of {SCAN_STEPS} distinct batches ({MLP_SIZES}, Adam); per-step time = epoch "
        "time / 100. fit rows: steady state without the compile (module docstring); they also shuffle "
        "and gather each batch on the device.",
        ref2="jax_scan",
        skipped=r.skipped,
    )


# --- CNN --------------------------------------------------------------------------------


def cnn_flops_executed(b=128):
    conv1 = 2 * b * 28 * 28 * 32 * (3 * 3 * 1)
    conv2 = 2 * b * 14 * 14 * 64 * (3 * 3 * 32)
    d1 = 2 * b * (7 * 7 * 64) * 128
    d2 = 2 * b * 128 * 10
    fwd = conv1 + conv2 + d1 + d2
    return 3 * fwd - conv1  # no input gradient for the first convolution


def jax_cnn_init(key):
    k = jax.random.split(key, 4)

    def conv(key, cin, cout):
        w = jax.random.normal(key, (3, 3, cin, cout), jnp.float32) * math.sqrt(2.0 / (9 * cin))
        return {"w": w, "b": jnp.zeros((cout,), jnp.float32)}

    return {
        "c1": conv(k[0], 1, 32),
        "c2": conv(k[1], 32, 64),
        "d1": jax_dense_init(k[2], 7 * 7 * 64, 128),
        "d2": jax_dense_init(k[3], 128, 10),
    }


def jax_cnn_apply(p, x):
    def conv(x, c):
        return lax.conv_general_dilated(x, c["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + c["b"]

    def pool(x):
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

    x = pool(jax.nn.relu(conv(x, p["c1"])))
    x = pool(jax.nn.relu(conv(x, p["c2"])))
    x = x.reshape((x.shape[0], -1))
    x = jax.nn.relu(x @ p["d1"]["w"] + p["d1"]["b"])
    return x @ p["d2"]["w"] + p["d2"]["b"]


def jax_cnn_loss(p, x, y):
    return ce_loss(jax_cnn_apply(p, x), y)


def nnjax_layer(*names):
    """The first of ``names`` that nnjax exports (or defines in nnjax._src.*); None if none."""
    for name in names:
        module, _, attr = name.rpartition(".")
        try:
            obj = getattr(importlib.import_module(f"nnjax._src.{module}") if module else nnjax, attr)
        except (ImportError, AttributeError):
            continue
        return obj
    return None


def nnjax_cnn():
    """The anchor CNN in nnjax, or a string saying why it cannot be built."""
    conv, pool = nnjax_layer("Conv", "conv.Conv"), nnjax_layer("MaxPool", "pooling.MaxPool")
    if conv is None or pool is None:
        return "nnjax has no Conv/MaxPool yet"
    model = nnjax.serial(
        conv(32, (3, 3)),
        nnjax.Relu(),
        pool((2, 2), strides=(2, 2)),
        conv(64, (3, 3)),
        nnjax.Relu(),
        pool((2, 2), strides=(2, 2)),
        nnjax.Flatten(),
        nnjax.Dense(128),
        nnjax.Relu(),
        nnjax.Dense(10),
    )
    shape = model.output_shape((28, 28, 1))
    return model if shape == (10,) else f"unexpected nnjax CNN output shape {shape}"


def workload_cnn(keep):
    rs = np.random.RandomState(2)
    x = rs.standard_normal((NB, 128, 28, 28, 1)).astype(np.float32)  # NHWC
    y = rs.randint(0, 10, size=(NB, 128)).astype(np.int32)
    xc = np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3))  # NCHW for equinox / torch
    jd = [to_jax(x[i], y[i]) for i in range(NB)]
    tx = optax.adam(1e-3)
    x0 = jd[0][0]
    r = Rows(keep, "jax")
    r.add(
        "jax",
        "jax",
        "raw JAX + optax (lax.conv_general_dilated, reduce_window max pool, NHWC)",
        lambda: build_jax(jax_cnn_init(jax.random.PRNGKey(0)), jax_cnn_loss, tx, jd),
    )
    if nnjax.default_compiler_options():
        r.add(
            "jax",
            "jax_opts",
            "raw JAX as above, compiled with nnjax.default_compiler_options() (XLA's own CPU convolutions)",
            lambda: build_jax(
                jax_cnn_init(jax.random.PRNGKey(0)), jax_cnn_loss, tx, jd, nnjax.default_compiler_options()
            ),
        )
    try:
        model = nnjax_cnn()
    except Exception as e:  # noqa: BLE001 - the layer files are being written: skip cleanly
        model = f"nnjax CNN failed to build: {_short_err(e)}"
    if isinstance(model, str):
        r.skipped.append(("nnjax", model))
    else:
        r.add(
            "jax",
            "nnjax",
            "nnjax: serial(Conv, Relu, MaxPool, ...) + make_train_step",
            lambda: build_nnjax(model, nnjax.losses.softmax_cross_entropy, tx, (28, 28, 1), jd),
        )

    if have("linen"):

        class LinenCNN(nn_linen.Module):
            @nn_linen.compact
            def __call__(self, x):
                x = nn_linen.max_pool(nn_linen.relu(nn_linen.Conv(32, (3, 3))(x)), (2, 2), strides=(2, 2))
                x = nn_linen.max_pool(nn_linen.relu(nn_linen.Conv(64, (3, 3))(x)), (2, 2), strides=(2, 2))
                x = nn_linen.relu(nn_linen.Dense(128)(x.reshape((x.shape[0], -1))))
                return nn_linen.Dense(10)(x)

        r.add(
            "linen", "linen", "flax_linen: TrainState + jax.jit", lambda: build_linen(LinenCNN(), x0, ce_loss, tx, jd)
        )

    if have("nnx"):

        class NNXCNN(nnx.Module):
            def __init__(self, rngs):
                self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), rngs=rngs)
                self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
                self.linear1 = nnx.Linear(7 * 7 * 64, 128, rngs=rngs)
                self.linear2 = nnx.Linear(128, 10, rngs=rngs)

            def __call__(self, x):
                x = nnx.max_pool(nnx.relu(self.conv1(x)), window_shape=(2, 2), strides=(2, 2))
                x = nnx.max_pool(nnx.relu(self.conv2(x)), window_shape=(2, 2), strides=(2, 2))
                return self.linear2(nnx.relu(self.linear1(x.reshape((x.shape[0], -1)))))

        r.add("nnx", "nnx", NNX_MODES["nnx"], lambda: build_nnx(lambda: NNXCNN(nnx.Rngs(0)), ce_loss, tx, jd, "nnx"))

    if have("eqx"):

        class EqxCNN(eqx.Module):
            conv1: eqx.nn.Conv2d
            conv2: eqx.nn.Conv2d
            pool: eqx.nn.MaxPool2d
            linear1: eqx.nn.Linear
            linear2: eqx.nn.Linear

            def __init__(self, key):
                k = jax.random.split(key, 4)
                self.conv1 = eqx.nn.Conv2d(1, 32, 3, padding=1, key=k[0])
                self.conv2 = eqx.nn.Conv2d(32, 64, 3, padding=1, key=k[1])
                self.pool = eqx.nn.MaxPool2d(kernel_size=2, stride=2)
                self.linear1 = eqx.nn.Linear(7 * 7 * 64, 128, key=k[2])
                self.linear2 = eqx.nn.Linear(128, 10, key=k[3])

            def __call__(self, x):  # one example, CHW
                x = self.pool(jax.nn.relu(self.conv1(x)))
                x = self.pool(jax.nn.relu(self.conv2(x)))
                return self.linear2(jax.nn.relu(self.linear1(x.reshape(-1))))

        jdc = [to_jax(xc[i], y[i]) for i in range(NB)]
        r.add(
            "eqx",
            "eqx",
            "equinox: per-example Conv2d (CHW) + vmap, filter_jit",
            lambda: build_eqx(lambda: EqxCNN(jax.random.PRNGKey(0)), ce_loss, tx, jdc),
        )

    def hk_cnn(x):
        x = jax.nn.relu(hk.Conv2D(32, 3)(x))
        x = hk.max_pool(x, window_shape=(1, 2, 2, 1), strides=(1, 2, 2, 1), padding="VALID")
        x = jax.nn.relu(hk.Conv2D(64, 3)(x))
        x = hk.max_pool(x, window_shape=(1, 2, 2, 1), strides=(1, 2, 2, 1), padding="VALID")
        x = jax.nn.relu(hk.Linear(128)(hk.Flatten()(x)))
        return hk.Linear(10)(x)

    r.add("haiku", "haiku", "haiku: hk.transform + jax.jit", lambda: build_haiku(hk_cnn, x0, ce_loss, tx, jd))

    def torch_cnn():
        return tnn.Sequential(
            tnn.Conv2d(1, 32, 3, padding=1),
            tnn.ReLU(),
            tnn.MaxPool2d(2),
            tnn.Conv2d(32, 64, 3, padding=1),
            tnn.ReLU(),
            tnn.MaxPool2d(2),
            tnn.Flatten(),
            tnn.Linear(7 * 7 * 64, 128),
            tnn.ReLU(),
            tnn.Linear(128, 10),
        )

    r.add(
        "torch",
        "torch",
        "torch eager (NCHW)",
        lambda: build_torch(
            torch_cnn, torch_adam(1e-3), torch_ce, [to_torch(xc[i], y[i].astype(np.int64)) for i in range(NB)]
        ),
    )
    return Workload(
        r.impls,
        "jax",
        "SAME padding, 2x2 max pools, Adam. JAX libraries get NHWC input; Equinox and PyTorch "
        "get the same data pre-transposed to NCHW (outside timing).",
        ref2="torch",
        skipped=r.skipped,
    )


# --- LSTM -------------------------------------------------------------------------------

VOCAB, EMB, HID, SEQ, LB = 96, 64, 256, 64, 32


def jax_lstm_init(key):
    k = jax.random.split(key, 4)
    s = 1.0 / math.sqrt(HID)
    u = lambda kk, shape: jax.random.uniform(kk, shape, jnp.float32, -s, s)  # noqa: E731
    return {
        "embed": jax.random.normal(k[0], (VOCAB, EMB), jnp.float32),
        "w_ih": u(k[1], (EMB, 4 * HID)),
        "w_hh": u(k[2], (HID, 4 * HID)),
        "b": jnp.zeros((4 * HID,), jnp.float32),
        "w_out": u(k[3], (HID, VOCAB)),
        "b_out": jnp.zeros((VOCAB,), jnp.float32),
    }


def jax_lstm_apply(p, tokens):
    e = p["embed"][tokens.T]  # (T, B, E)

    def cell(carry, x_t):
        h, c = carry
        gates = x_t @ p["w_ih"] + h @ p["w_hh"] + p["b"]
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    h0 = jnp.zeros((tokens.shape[0], HID), jnp.float32)
    _, hs = lax.scan(cell, (h0, h0), e)
    return jnp.swapaxes(hs, 0, 1) @ p["w_out"] + p["b_out"]


def jax_lstm_loss(p, x, y):
    return ce_loss(jax_lstm_apply(p, x), y)


def nnjax_lstm():
    """The anchor LSTM language model in nnjax, or a string saying why it cannot be built."""
    embedding = nnjax_layer("Embedding", "embedding.Embedding")
    lstm = nnjax_layer("LSTM", "recurrent.LSTM")
    if embedding is None or lstm is None:
        return "nnjax has no Embedding/LSTM yet"
    model = nnjax.serial(embedding(VOCAB, EMB), lstm(HID), nnjax.Dense(VOCAB))
    shape = model.output_shape((SEQ,))
    return model if shape == (SEQ, VOCAB) else f"unexpected nnjax LSTM output shape {shape}"


def workload_lstm(keep):
    rs = np.random.RandomState(3)
    t = rs.randint(0, VOCAB, size=(NB, LB, SEQ + 1)).astype(np.int32)
    xi, yi = t[:, :, :-1], t[:, :, 1:]
    jd = [to_jax(np.ascontiguousarray(xi[i]), np.ascontiguousarray(yi[i])) for i in range(NB)]
    tx = optax.adam(1e-3)
    x0 = jd[0][0]
    r = Rows(keep, "jax")
    r.add(
        "jax",
        "jax",
        "raw JAX + optax (lax.scan over time)",
        lambda: build_jax(jax_lstm_init(jax.random.PRNGKey(0)), jax_lstm_loss, tx, jd),
    )
    try:
        model = nnjax_lstm()
    except Exception as e:  # noqa: BLE001 - the layer files are being written: skip cleanly
        model = f"nnjax LSTM failed to build: {_short_err(e)}"
    if isinstance(model, str):
        r.skipped.append(("nnjax", model))
    else:
        r.add(
            "jax",
            "nnjax",
            "nnjax: serial(Embedding, LSTM, Dense) + make_train_step",
            lambda: build_nnjax(model, nnjax.losses.softmax_cross_entropy, tx, (SEQ,), jd),
        )

    if have("linen"):

        class LinenLSTM(nn_linen.Module):
            @nn_linen.compact
            def __call__(self, tokens):
                x = nn_linen.Embed(VOCAB, EMB)(tokens)
                return nn_linen.Dense(VOCAB)(nn_linen.RNN(nn_linen.OptimizedLSTMCell(HID))(x))

        r.add(
            "linen",
            "linen",
            "flax_linen: nn.RNN(OptimizedLSTMCell) + jax.jit",
            lambda: build_linen(LinenLSTM(), x0, ce_loss, tx, jd),
        )

    if have("nnx"):

        class NNXLSTM(nnx.Module):
            def __init__(self, rngs):
                self.embed = nnx.Embed(VOCAB, EMB, rngs=rngs)
                self.rnn = nnx.RNN(nnx.OptimizedLSTMCell(EMB, HID, rngs=rngs))
                self.out = nnx.Linear(HID, VOCAB, rngs=rngs)

            def __call__(self, tokens):
                return self.out(self.rnn(self.embed(tokens)))

        r.add("nnx", "nnx", NNX_MODES["nnx"], lambda: build_nnx(lambda: NNXLSTM(nnx.Rngs(0)), ce_loss, tx, jd, "nnx"))

    if have("eqx"):

        class EqxLSTM(eqx.Module):
            embed: eqx.nn.Embedding
            cell: eqx.nn.LSTMCell
            out: eqx.nn.Linear

            def __init__(self, key):
                k = jax.random.split(key, 3)
                self.embed = eqx.nn.Embedding(VOCAB, EMB, key=k[0])
                self.cell = eqx.nn.LSTMCell(EMB, HID, key=k[1])
                self.out = eqx.nn.Linear(HID, VOCAB, key=k[2])

            def __call__(self, tokens):  # one sequence (T,)
                x = jax.vmap(self.embed)(tokens)

                def step(carry, xt):
                    h, c = self.cell(xt, carry)
                    return (h, c), h

                _, hs = lax.scan(step, (jnp.zeros((HID,)), jnp.zeros((HID,))), x)
                return jax.vmap(self.out)(hs)

        r.add(
            "eqx",
            "eqx",
            "equinox: LSTMCell + lax.scan per sequence, vmap over batch",
            lambda: build_eqx(lambda: EqxLSTM(jax.random.PRNGKey(0)), ce_loss, tx, jd),
        )

    def hk_lstm(tokens):
        x = hk.Embed(VOCAB, EMB)(tokens)
        core = hk.LSTM(HID)
        out, _ = hk.dynamic_unroll(core, x, core.initial_state(tokens.shape[0]), time_major=False)
        return hk.Linear(VOCAB)(out)

    r.add("haiku", "haiku", "haiku: hk.LSTM + hk.dynamic_unroll", lambda: build_haiku(hk_lstm, x0, ce_loss, tx, jd))

    if have("torch"):

        class TorchLSTM(tnn.Module):
            def __init__(self):
                super().__init__()
                self.embed = tnn.Embedding(VOCAB, EMB)
                self.lstm = tnn.LSTM(EMB, HID, batch_first=True)
                self.out = tnn.Linear(HID, VOCAB)

            def forward(self, tokens):
                return self.out(self.lstm(self.embed(tokens))[0])

        r.add(
            "torch",
            "torch",
            "torch eager nn.LSTM",
            lambda: build_torch(
                TorchLSTM,
                torch_adam(1e-3),
                torch_ce,
                [to_torch(xi[i].astype(np.int64), yi[i].astype(np.int64)) for i in range(NB)],
            ),
        )
    return Workload(
        r.impls,
        "jax",
        f"Embedding {VOCAB}->{EMB}, 1-layer LSTM hidden {HID}, seq {SEQ}, batch {LB}, "
        "next-token CE over all positions, Adam.",
        ref2="torch",
        skipped=r.skipped,
    )


# --- ensemble ---------------------------------------------------------------------------

ENS_M, ENS_SIZES = 32, (784, 64, 10)


def workload_ensemble(keep):
    rs = np.random.RandomState(4)
    x = rs.standard_normal((ENS_M, MLP_B, 784)).astype(np.float32)
    y = rs.randint(0, 10, size=(ENS_M, MLP_B)).astype(np.int32)
    xj, yj = to_jax(x, y)
    tx = optax.adam(1e-3)
    keys = jax.random.split(jax.random.PRNGKey(0), ENS_M)
    model = nnjax_mlp(ENS_SIZES)

    def jax_step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(jax_mlp_loss)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def build_jax_vmap():
        params = jax.vmap(lambda k: jax_mlp_init(k, ENS_SIZES))(keys)
        step = jax.jit(jax.vmap(jax_step), donate_argnums=(0, 1))
        st = [params, jax.vmap(tx.init)(params)]

        def run(n):
            p, o = st
            for _ in range(n):
                p, o, _ = step(p, o, xj, yj)
            jax.block_until_ready((p, o))
            st[0], st[1] = p, o

        return run

    def build_nnjax_vmap(raw_key=False):
        def _build():
            ts = jax.vmap(lambda k: nnjax.init_train_state(model, tx, k, (784,)))(
                jax.random.split(jax.random.key(0), ENS_M)
            )
            if raw_key:
                ts = raw_key_state(ts)
            step = jax.jit(
                jax.vmap(nnjax.make_train_step(model, nnjax.losses.softmax_cross_entropy, tx, jit=False)),
                donate_argnums=0,
            )
            st = [ts]

            def run(n):
                s = st[0]
                for _ in range(n):
                    s, _ = step(s, (xj, yj))
                jax.block_until_ready(s)
                st[0] = s

            return run

        return _build

    def build_eqx_vmap():
        @eqx.filter_vmap
        def make_ensemble(key):
            return eqx.nn.MLP(784, 10, 64, depth=1, activation=jax.nn.relu, key=key)

        def _build():
            ens = make_ensemble(keys)
            loss_fn = partial(eqx_loss, loss_from_out=ce_loss)

            @eqx.filter_jit
            def ens_step(ens, opt_state, x, y):
                @eqx.filter_vmap(in_axes=(eqx.if_array(0), 0, 0))
                def per_model(model, xb, yb):
                    return eqx.filter_value_and_grad(loss_fn)(model, xb, yb)

                loss, grads = per_model(ens, x, y)
                updates, opt_state = tx.update(grads, opt_state, eqx.filter(ens, eqx.is_array))
                return eqx.apply_updates(ens, updates), opt_state, loss

            st = [ens, tx.init(eqx.filter(ens, eqx.is_array))]

            def run(n):
                e, o = st
                for _ in range(n):
                    e, o, _ = ens_step(e, o, xj, yj)
                jax.block_until_ready((eqx.filter(e, eqx.is_array), o))
                st[0], st[1] = e, o

            return run

        return _build

    def build_torch_loop():
        make_tm = make_torch_mlp(ENS_SIZES)
        per_model_t = [to_torch(x[m], y[m].astype(np.int64)) for m in range(ENS_M)]

        def _build():
            torch.manual_seed(0)
            models = [make_tm() for _ in range(ENS_M)]
            opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in models]

            def run(n):
                for _ in range(n):
                    for m in range(ENS_M):
                        xb, yb = per_model_t[m]
                        opts[m].zero_grad(set_to_none=True)
                        F.cross_entropy(models[m](xb), yb).backward()
                        opts[m].step()

            return run

        return _build

    def build_torch_vmap():
        from torch.func import functional_call, grad, stack_module_state, vmap

        xt, yt = to_torch(x, y.astype(np.int64))

        def _build():
            torch.manual_seed(0)
            models = [make_torch_mlp(ENS_SIZES)() for _ in range(ENS_M)]
            params, buffers = stack_module_state(models)
            base = copy.deepcopy(models[0]).to("meta")

            def loss_fn(p, b, xb, yb):
                return F.cross_entropy(functional_call(base, (p, b), (xb,)), yb)

            grad_fn = vmap(grad(loss_fn), in_dims=(0, 0, 0, 0))
            opt = torch.optim.Adam(list(params.values()), lr=1e-3)

            def run(n):
                for _ in range(n):
                    grads = grad_fn(params, buffers, xt, yt)
                    for k, p in params.items():
                        p.grad = grads[k]
                    opt.step()

            return run

        return _build

    r = Rows(keep, "jax_vmap")
    r.add("jax", "jax_vmap", "raw JAX: jit(vmap(train_step)) over stacked params", lambda: build_jax_vmap)
    r.add(
        "jax",
        "nnjax_vmap",
        "nnjax: jit(vmap(make_train_step(jit=False))) over vmapped init_train_state",
        lambda: build_nnjax_vmap(),
    )
    r.add("eqx", "eqx_vmap", "equinox: filter_vmap ensemble + filter_jit", build_eqx_vmap)
    r.add("torch", "torch_loop", "torch eager: Python loop over 32 models/optimizers", build_torch_loop)
    r.add(
        "torch", "torch_func_vmap", "torch.func: vmap(grad(functional_call)) + Adam on stacked params", build_torch_vmap
    )
    return Workload(
        r.impls,
        "jax_vmap",
        f"{ENS_M} independent {ENS_SIZES} MLPs, each with its own batch of {MLP_B}, "
        f"Adam. Time is per 'all {ENS_M} models take one step'.",
        skipped=r.skipped,
    )


# --- peak -------------------------------------------------------------------------------

PEAK_N = 2048


def workload_peak(keep):
    rs = np.random.RandomState(6)
    a_np = rs.standard_normal((PEAK_N, PEAK_N)).astype(np.float32)
    b_np = rs.standard_normal((PEAK_N, PEAK_N)).astype(np.float32)

    def build_xla():
        a, b = to_jax(a_np, b_np)
        f = jax.jit(jnp.dot)

        def run(n):
            c = None
            for _ in range(n):
                c = f(a, b)
            c.block_until_ready()

        return run

    def build_torch_mm():
        a, b = to_torch(a_np, b_np)
        c = torch.empty((PEAK_N, PEAK_N), dtype=torch.float32)

        def run(n):
            for _ in range(n):
                torch.mm(a, b, out=c)

        return run

    r = Rows(set(), "xla_dot")
    r.add("jax", "xla_dot", f"XLA: jax.jit(jnp.dot) {PEAK_N}x{PEAK_N} f32", lambda: build_xla)
    r.add("torch", "torch_mm", f"PyTorch: torch.mm {PEAK_N}x{PEAK_N} f32", lambda: build_torch_mm)
    return Workload(r.impls, "xla_dot", skipped=r.skipped)


BUILDERS = {
    "peak": workload_peak,
    "tiny": workload_tiny,
    "tiny_fused": workload_tiny_fused,
    "mlp": workload_mlp,
    "mlp_scan": workload_mlp_scan,
    "cnn": workload_cnn,
    "lstm": workload_lstm,
    "ensemble": workload_ensemble,
}


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------


def _sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10, cwd=HERE).stdout.strip()
    except Exception:  # noqa: BLE001
        return ""


def machine_lines(argv, load_start):
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            mem = next(f"{int(line.split()[1]) / 1048576:.1f} GiB" for line in f if line.startswith("MemTotal"))
    except (OSError, StopIteration):
        mem = "?"
    import jaxlib

    versions = [
        f"python {platform.python_version()}",
        f"jax {jax.__version__}",
        f"jaxlib {jaxlib.__version__}",
        f"optax {optax.__version__}",
        f"nnjax {nnjax.__version__}",
        f"numpy {np.__version__}",
    ]
    for name, mod in (("flax", "flax"), ("equinox", "equinox"), ("dm-haiku", "haiku"), ("torch", "torch")):
        m = sys.modules.get(mod)
        versions.append(f"{name} {getattr(m, '__version__', '?')}" if m is not None else f"{name} (absent)")
    commit = _sh("git rev-parse --short HEAD") or "?"
    dirty = " (+ uncommitted changes)" if _sh("git status --porcelain --untracked-files=no") else ""
    return [
        "# nnjax anchor benchmark",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- command: `python {' '.join(argv)}`",
        f"- machine: {cpu}, {os.cpu_count()} cores (os.cpu_count), RAM {mem}; jax backend {jax.default_backend()}",
        f"- load average at start: {load_start}",
        f"- versions: {', '.join(versions)}; nnjax commit {commit}{dirty}",
        f"- not installed (rows skipped): {', '.join(f'{k} ({v})' for k, v in MISSING.items()) or 'none'}",
        f"- threads: XLA default; torch.set_num_threads({os.cpu_count()}); "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '(unset)')}",
    ]


def peak_gflops(results):
    """Best-repeat GFLOP/s per backend over the start and end peak runs (noise only slows a run down)."""
    peak = {}
    for wl in ("peak", "peak_end"):
        for im in results[wl].impls if wl in results else ():
            if im.samples:
                peak[im.key] = max(peak.get(im.key, 0.0), 2 * PEAK_N**3 / min(im.samples) / 1e9)
    return peak


def report(results, args, t_total, argv, load_start):
    out = machine_lines(argv, load_start)
    out += [
        "- memory: "
        + (
            "`nnjax.keep_freed_memory()` applied to the whole process before the workloads (every row)"
            if args.keep_freed_memory
            else "glibc malloc defaults (run with --keep-freed-memory for `nnjax.keep_freed_memory()`)"
        ),
        f"- protocol: compile and warm up first; ~{args.target_s}s per measurement (at least {args.min_units} units); "
        f"{args.repeats} repeats interleaved A B C A B C; median and min-max over repeats of the per-step time; JAX "
        "measurements end with jax.block_until_ready. Ratio = median / median of the workload's baseline "
        "(hand-written JAX) in this run: > 1 is slower. Absolute times drift between runs on a shared VM; "
        "compare ratios within one run.",
        "",
    ]
    for wl, w in results.items():
        if wl in ("peak", "peak_end"):
            continue
        ref2 = w.ref2 if w.ref2 and w.ref2 != w.base and w.median(w.ref2) else None
        bmed, rmed = w.median(w.base), (w.median(ref2) if ref2 else None)
        out += [f"## {wl}", ""] + ([w.note, ""] if w.note else [])
        ref_col = f" | vs `{ref2}`" if ref2 else ""
        out += [
            f"| implementation | median ms/step | min–max ms/step | vs `{w.base}`{ref_col} "
            "| steps/measurement | first call s |",
            "|---|---:|---:|---:|" + ("---:|" if ref2 else "") + "---:|---:|",
        ]
        for im in w.impls:
            if not im.samples:
                out.append(f"| `{im.key}` {im.label} | FAILED | — | — |" + (" — |" if ref2 else "") + " — | — |")
                continue
            med = statistics.median(im.samples)
            ratio = f"{med / bmed:.2f}x" if bmed else "n/a"
            ref = (f" | {med / rmed:.2f}x" if rmed else " | n/a") if ref2 else ""
            out.append(
                f"| `{im.key}` {im.label} | {fmt_ms(med * 1e3)} | {fmt_ms(min(im.samples) * 1e3)}–"
                f"{fmt_ms(max(im.samples) * 1e3)} | {ratio}{ref} | {im.n * im.spu} | {im.first_s:.2f} |"
            )
        out.append("")
        notes = [f"- `{im.key}` failed: {im.err}" for im in w.impls if im.err]
        notes += [f"- `{key}` skipped: {why}" for key, why in w.skipped]
        if notes:
            out += notes + [""]

    peak = peak_gflops(results)
    if "peak" in results:
        out += [
            "## float32 matmul peak",
            "",
            f"{PEAK_N}x{PEAK_N} @ {PEAK_N}x{PEAK_N} ({2 * PEAK_N**3 / 1e9:.1f} GFLOP per call), "
            "at the start and the end of the run.",
            "",
            "| when | backend | median ms/call | median GFLOP/s | best GFLOP/s |",
            "|---|---|---:|---:|---:|",
        ]
        for wl in ("peak", "peak_end"):
            for im in results[wl].impls if wl in results else ():
                if im.samples:
                    med = statistics.median(im.samples)
                    out.append(
                        f"| {'start' if wl == 'peak' else 'end'} | `{im.key}` {im.label} | {med * 1e3:.2f} | "
                        f"{2 * PEAK_N**3 / med / 1e9:.1f} | {2 * PEAK_N**3 / min(im.samples) / 1e9:.1f} |"
                    )
        out.append("")

    flops = {"mlp": mlp_flops_executed(), "mlp_scan": mlp_flops_executed(), "cnn": cnn_flops_executed()}
    if any(wl in results for wl in flops):
        out += [
            "## throughput",
            "",
            f"FLOPs counted as executed: forward, weight gradients, and input gradients of every layer but the first "
            f"(mlp {mlp_flops_executed() / 1e9:.4f} GFLOP/step, {mlp_flops_executed() / mlp_flops_3x():.0%} of the "
            f"3x-forward convention; cnn {cnn_flops_executed() / 1e9:.3f} GFLOP/step). % of peak = GFLOP/s at the "
            "median step time / the best measured matmul GFLOP/s of the same backend (XLA for JAX rows, torch.mm for "
            "PyTorch rows) in this run.",
            "",
            "| workload | implementation | median ms/step | GFLOP/s | % of peak |",
            "|---|---|---:|---:|---:|",
        ]
        for wl, fl in flops.items():
            for im in results[wl].impls if wl in results else ():
                if im.samples:
                    g = fl / statistics.median(im.samples) / 1e9
                    own = peak.get("torch_mm" if im.key.startswith("torch") else "xla_dot")
                    out.append(
                        f"| {wl} | `{im.key}` | {fmt_ms(statistics.median(im.samples) * 1e3)} | {g:.1f} | "
                        f"{f'{100 * g / own:.1f}%' if own else 'n/a (run peak)'} |"
                    )
        out.append("")

    out += targets(results, peak)
    load_end = open("/proc/loadavg").read().strip() if os.path.exists("/proc/loadavg") else "?"
    out += [f"Total wall time: {t_total:.0f} s. Load average at end: {load_end}.", ""]
    return "\n".join(out)


def targets(results, peak):
    """The issue's targets (nnjax / hand-written JAX in this run), with what was measured."""

    def med(wl, key):
        return results[wl].median(key) if wl in results else None

    rows = []

    def ratio_row(what, num, den, goal, ok):
        if num and den:
            value = num / den
            rows.append(f"| {what} | {value:.2f}x | {goal} | {'yes' if ok(value) else '**no**'} |")

    ratio_row("tiny MLP step: `nnjax` / `jax`", med("tiny", "nnjax"), med("tiny", "jax"), "≤ 1.10", lambda v: v <= 1.10)
    ratio_row(
        "tiny MLP step, prototype fix: `nnjax_rawkey` / `jax`",
        med("tiny", "nnjax_rawkey"),
        med("tiny", "jax"),
        "≤ 1.10",
        lambda v: v <= 1.10,
    )
    ratio_row(
        "tiny MLP step, prototype fix: `nnjax_tuple` / `jax`",
        med("tiny", "nnjax_tuple"),
        med("tiny", "jax"),
        "≤ 1.10",
        lambda v: v <= 1.10,
    )
    ratio_row("MLP step: `nnjax` / `jax`", med("mlp", "nnjax"), med("mlp", "jax"), "≤ 1.00", lambda v: v <= 1.00)
    for key in ("nnjax_fit_all", "nnjax_fit_epoch", "nnjax_scan"):
        m = med("mlp_scan", key)
        if m and peak.get("xla_dot"):
            pct = mlp_flops_executed() / m / 1e9 / peak["xla_dot"] * 100
            met = "yes" if pct >= 75 else "**no**"
            rows.append(f"| MLP fused, `{key}`: % of XLA matmul peak | {pct:.1f}% | ≥ 75% | {met} |")
    ratio_row(
        "MLP fused: `nnjax_fit_all` / `jax_scan`",
        med("mlp_scan", "nnjax_fit_all"),
        med("mlp_scan", "jax_scan"),
        "(≤ 1.00)",
        lambda v: v <= 1.00,
    )
    ratio_row(
        "ensemble: `nnjax_vmap` / `jax_vmap`",
        med("ensemble", "nnjax_vmap"),
        med("ensemble", "jax_vmap"),
        "≤ 1.05",
        lambda v: v <= 1.05,
    )
    ratio_row(
        "tiny fused speed-up: `nnjax_fit_loop` / `nnjax_fit_all`",
        med("tiny_fused", "nnjax_fit_loop"),
        med("tiny_fused", "nnjax_fit_all"),
        "≥ 10",
        lambda v: v >= 10,
    )
    ratio_row(
        "tiny fused speed-up: `nnjax_loop` / `nnjax_scan`",
        med("tiny_fused", "nnjax_loop"),
        med("tiny_fused", "nnjax_scan"),
        "≥ 10",
        lambda v: v >= 10,
    )
    ratio_row("CNN: `nnjax` / `torch`", med("cnn", "nnjax"), med("cnn", "torch"), "≤ 1.00", lambda v: v <= 1.00)
    ratio_row("LSTM: `nnjax` / `torch`", med("lstm", "nnjax"), med("lstm", "torch"), "≤ 1.00", lambda v: v <= 1.00)
    if not rows:
        return []
    return ["## targets (issue 4)", "", "| target | measured | goal | met |", "|---|---:|---:|---|"] + rows + [""]


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--only", default="", help=f"comma-separated workloads to run, from {','.join(WORKLOADS)} (default: all)"
    )
    ap.add_argument(
        "--impls",
        default="",
        help="comma-separated implementation keys to keep, or prefixes ending in * "
        "(e.g. 'nnjax*,torch*'); each workload's baseline is always kept",
    )
    ap.add_argument("--quick", action="store_true", help="smoke test: 2 short repeats, little warm-up")
    ap.add_argument(
        "--repeats", type=int, default=None, help="interleaved repeats per implementation (default 5; quick 2)"
    )
    ap.add_argument("--target-s", type=float, default=None, help="seconds per measurement (default 0.4; quick 0.05)")
    ap.add_argument("--min-units", type=int, default=2)
    ap.add_argument(
        "--warmup-units", type=int, default=None, help="units run after the compile call (default 3; quick 1)"
    )
    ap.add_argument("--calib-s", type=float, default=None, help="calibration run length (default 0.08 s; quick 0.02)")
    ap.add_argument("--calib-runs", type=int, default=None, help="calibration runs, min taken (default 3; quick 1)")
    ap.add_argument("--pause-s", type=float, default=0.03, help="sleep between measurements")
    ap.add_argument(
        "--out",
        default=None,
        help="markdown file to write (default benchmarks/results-<date>.md; --quick or --only add a suffix)",
    )
    ap.add_argument("--no-write", action="store_true", help="print the report only")
    ap.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="call nnjax.keep_freed_memory() first: glibc keeps freed memory, for every row (file suffix -kfm)",
    )
    args = ap.parse_args(argv)
    quick = args.quick
    for name, full, fast in (
        ("repeats", 5, 2),
        ("target_s", 0.4, 0.05),
        ("warmup_units", 3, 1),
        ("calib_s", 0.08, 0.02),
        ("calib_runs", 3, 1),
    ):
        if getattr(args, name) is None:
            setattr(args, name, fast if quick else full)
    if quick:
        args.pause_s = min(args.pause_s, 0.005)
    args.workloads = [w.strip() for w in args.only.split(",") if w.strip()] or list(WORKLOADS)
    bad = [w for w in args.workloads if w not in BUILDERS]
    if bad:
        ap.error(f"unknown workloads {bad}; choose from {WORKLOADS}")
    args.keep = {k.strip() for k in args.impls.split(",") if k.strip()}
    return args


def run_benchmark(args, argv=()):
    """Runs the selected workloads; returns ``(results, markdown)``. ``results[workload].impls[i].samples``
    holds the per-step seconds of each repeat."""
    load_start = open("/proc/loadavg").read().strip() if os.path.exists("/proc/loadavg") else "?"
    warnings.filterwarnings("ignore")
    setup_libs()
    if args.keep_freed_memory and not nnjax.keep_freed_memory():
        log("note: keep_freed_memory() does not apply here (not glibc): malloc defaults")
    t0 = time.perf_counter()
    results = {}
    runs = list(args.workloads)
    if "peak" in runs and len(runs) > 1:
        runs.append("peak_end")  # the peak again after the workloads: drift check
    for wl in runs:
        log(f"=== {wl} ===")
        w = BUILDERS["peak" if wl == "peak_end" else wl](args.keep)
        if args.keep:
            w.impls = [im for im in w.impls if im.key == w.base or selected(im.key, args.keep)]
        bench_workload(wl, w.impls, args)
        results[wl] = w
        gc.collect()
        jax.clear_caches()
    return results, report(results, args, time.perf_counter() - t0, list(argv), load_start)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    results, text = run_benchmark(args, [os.path.relpath(__file__)] + list(argv))
    for lib, why in MISSING.items():
        log(f"note: {lib} rows skipped: {why}")
    print(text)
    if not args.no_write:
        suffix = ("-quick" if args.quick else "") + (f"-{'-'.join(args.workloads)}" if args.only else "")
        suffix += "-kfm" if args.keep_freed_memory else ""
        path = args.out or os.path.join(HERE, f"results-{datetime.date.today().isoformat()}{suffix}.md")
        with open(path, "w") as f:
            f.write(text + "\n")
        log(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
