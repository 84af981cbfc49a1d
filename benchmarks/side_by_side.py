"""The same task on the same embedded data in different tools: test accuracy and training wall time.

Two tasks on the embedded UCI 8x8 digits (no download), one split for every tool and run
(``nnjax.data.train_test_split``: stratified 80/20, seed 0; 1,437 training and 360 test images), pixels
scaled to [0, 1] (``/ 16``, as the examples do). The parent process builds the arrays once, writes them
to one ``.npz`` and hands that file to every run, so every tool trains and tests on the same float32 arrays.

  mlp  64 -> 128 -> ReLU -> 128 -> ReLU -> 10, softmax cross-entropy, Adam(1e-3), batch 32, 30 epochs
       (examples/digits_mlp.py's defaults), no weight decay:
         nnjax_mlp    examples/digits_mlp.py's make_model + nnjax.fit(optax.adam(1e-3))
         sklearn_mlp  sklearn MLPClassifier(solver="adam", alpha=0, max_iter=epochs, tol=0,
                      n_iter_no_change > epochs, early_stopping=False)
         keras_mlp    Keras 3 on JAX (KERAS_BACKEND=jax), Sequential of Dense, Adam(1e-3, epsilon=1e-8),
                      model.fit(verbose=0) (jit-compiled, Keras's default on JAX)
  cnn  examples/digits_cnn.py's CNN: 3x3 convolutions 32, 32, 64 (SAME) each with BatchNorm (running
       averages 0.9 / PyTorch momentum 0.1, eps 1e-5) and ReLU, 2x2 max pooling after the 2nd and 3rd,
       dense 128 + ReLU + Dropout(0.3), dense 10; Adam with a cosine decay of the learning rate from 2e-3
       to 0 over the run's steps, batch 32, 25 epochs:
         nnjax_cnn    examples/digits_cnn.py's digits_model + nnjax.fit
         torch_cnn    the equivalent torch nn.Sequential (NCHW), torch.optim.Adam + LambdaLR (the same
                      cosine, stepped per update)

Initialization: nnjax, Keras and the torch model here use Glorot-uniform weights and zero biases (torch's
own default, Kaiming-uniform(a=sqrt(5)) with uniform biases, is replaced); scikit-learn has its own,
Glorot-uniform weights AND biases (bound sqrt(6 / (fan_in + fan_out))), which it does not let one change.
Batches: nnjax and the torch loop here drop the last partial batch of each shuffled epoch (1437 // 32 = 44
updates per epoch); scikit-learn and Keras train on it too (45 updates, the last of 29 examples).
Adam (betas 0.9, 0.999, epsilon 1e-8 in all): optax and torch add epsilon to sqrt(v_hat), Keras and
scikit-learn to sqrt(v) (the paper's "epsilon hat"); a negligible difference here. torch's BatchNorm
keeps the unbiased batch variance in its running average (nnjax: the biased one), and its flatten runs
over (C, H, W) rather than (H, W, C): a permutation of the first dense layer's inputs, the same model.

Threads: by default every run may use all the cores this process may use: XLA's thread pool (nnjax,
Keras) and NumPy's BLAS (scikit-learn) size themselves to them, and torch.set_num_threads(cores).
``--threads N`` pins each run to N of those cores (CPU affinity, set before jax or torch is imported, so
XLA sees N; with ``--jobs``, runs going at once get different cores), with torch.set_num_threads(N) and
scikit-learn's BLAS limited to N (threadpoolctl). Where other work shares the cores, a library running a
thread per core can be many times slower than with one thread (its threads wait for each other's time
slices): time on a quiet machine.

Each run is a fresh process (the script re-invokes itself with ``--tool NAME --seed S``, printing one JSON
line), so every run pays its library's start-up and compilation. "train call" is the time of the
training call (``nnjax.fit``, ``MLPClassifier.fit``, ``model.fit``, the torch loop); "setup + train" adds
the time to create the model's weights and optimizer before it (``keras.Sequential`` with its ``Input``
and ``model.compile``; the torch modules, their initialization and ``torch.optim.Adam``), which
``nnjax.fit`` and ``MLPClassifier.fit`` do inside their training call: the same work in every tool.
Both include compilation and exclude imports, data loading and the final test evaluation; "first
epoch" is the time from the start of the training call to the end of the first epoch (for JAX tools:
most of it is compilation). Seeds 0..runs-1
seed initialization, data order and dropout; the split stays the same. Medians [min-max] over the runs.

Cold and warm: each (tool, seed) runs twice, in two fresh processes one after the other, each tool as it
comes out of the box. nnjax turns on its persistent compilation cache (``nnjax.config.compilation_cache``,
as its example trainers do) in a directory that is empty for the cold run and kept for the warm one, so the
warm run loads its compiled programs instead of compiling them. Keras, scikit-learn and PyTorch keep no
compiled state across processes by default: their warm run is a second fresh process.

Run:   python benchmarks/side_by_side.py [--runs 5] [--epochs N] [--tools nnjax,torch,mlp,...] [--out FILE.md]
Smoke: python benchmarks/side_by_side.py --runs 1 --epochs 1 [--jobs 2 --threads 1]   (--jobs: times compete)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.metadata
import importlib.util
import json
import math
import os
import pathlib
import platform
import queue
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]

MLP = {"hidden": 128, "learning_rate": 1e-3, "batch_size": 32, "epochs": 30}  # examples/digits_mlp.py, adam
CNN = {"learning_rate": 2e-3, "batch_size": 32, "epochs": 25}  # examples/digits_cnn.py, digits
SPLIT_SEED = 0


class Tool:
    """One row: a library running one task. ``modules``: what must be importable (else "not installed")."""

    def __init__(self, name: str, task: str, label: str, modules: tuple[str, ...], run: Callable[..., dict]):
        self.name, self.task, self.label, self.modules, self.run = name, task, label, modules, run


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def core_set(n: int, slot: int = 0) -> list[int]:
    """``n`` of the cores this process may use, for the ``slot``-th of the runs going at once (wrapping round)."""
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(cores()))
    return sorted({available[(slot * n + i) % len(available)] for i in range(min(n, len(available)))})


def pin_to_cores(cpus: list[int]) -> None:
    """Restricts this process (and the thread pools its libraries create later) to ``cpus``."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)


def version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def accuracy(logits_or_labels: np.ndarray, y: np.ndarray) -> float:
    predicted = np.asarray(logits_or_labels)
    if predicted.ndim == 2:
        predicted = predicted.argmax(axis=-1)
    return float(np.mean(predicted == np.asarray(y)))


def load_example(name: str):
    """examples/<name>.py as a module (the examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"nnjax_example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def make_data(split_seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """The arrays every tool gets: examples/digits_mlp.py's ``load_data`` (x / 16, stratified 80/20 split)."""
    import nnjax

    images, labels = nnjax.data.load_digits()
    x = images.reshape(len(images), 64).astype(np.float32) / 16.0
    x_train, y_train, x_test, y_test = nnjax.data.train_test_split(
        x, labels, test_fraction=0.2, seed=split_seed, stratify=True
    )
    return {
        "x_train": np.ascontiguousarray(x_train, np.float32),
        "y_train": np.asarray(y_train, np.int32),
        "x_test": np.ascontiguousarray(x_test, np.float32),
        "y_test": np.asarray(y_test, np.int32),
    }


def images(x: np.ndarray) -> np.ndarray:
    """(n, 64) -> (n, 8, 8, 1), channels-last (row-major pixels, as load_digits gives them)."""
    return x.reshape(len(x), 8, 8, 1)


def cosine_factor(step: int, total: int) -> float:
    """optax.cosine_decay_schedule(1, total) at ``step`` (alpha 0, exponent 1)."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


# ---- the runs (each in its own process) --------------------------------------------------------


def run_nnjax_mlp(data, seed: int, epochs: int, threads: int) -> dict[str, Any]:
    import optax

    model = load_example("digits_mlp").make_model(MLP["hidden"])
    return _run_nnjax(model, optax.adam(MLP["learning_rate"]), data["x_train"], data, seed, epochs, MLP)


def run_nnjax_cnn(data, seed: int, epochs: int, threads: int) -> dict[str, Any]:
    import optax

    model = load_example("digits_cnn").digits_model()
    steps = epochs * (len(data["x_train"]) // CNN["batch_size"])
    schedule = optax.cosine_decay_schedule(CNN["learning_rate"], max(steps, 1))  # as examples/digits_cnn.py
    return _run_nnjax(model, optax.adam(schedule), images(data["x_train"]), data, seed, epochs, CNN, cnn=True)


def _run_nnjax(model, optimizer, x_train, data, seed, epochs, config, cnn=False) -> dict[str, Any]:
    import jax

    import nnjax

    nnjax.config.compilation_cache()  # NNJAX_COMPILATION_CACHE: empty for a cold run, kept for a warm one
    epoch_ends: list[float] = []
    start = time.perf_counter()
    train_state, _ = nnjax.fit(
        model, nnjax.losses.softmax_cross_entropy, optimizer, x_train, data["y_train"], epochs=epochs,
        batch_size=config["batch_size"], seed=seed, progress=False,
        callbacks=[lambda epoch, state, logs: epoch_ends.append(time.perf_counter())],
    )  # fmt: skip
    jax.block_until_ready(train_state.params)
    seconds = time.perf_counter() - start
    x_test = images(data["x_test"]) if cnn else data["x_test"]
    logits = nnjax.predict(model, train_state, x_test)
    return {
        "test_accuracy": accuracy(logits, data["y_test"]),
        "train_seconds": seconds,
        "first_epoch_seconds": epoch_ends[0] - start if epoch_ends else None,
        "setup_seconds": 0.0,  # fit creates the weights and the optimizer state: the training call holds it
        "params": int(sum(leaf.size for leaf in jax.tree.leaves(train_state.params))),
        "versions": {k: version(k) for k in ("nnjax", "jax", "jaxlib", "optax")},
        "backend": jax.default_backend(),
    }


def run_sklearn_mlp(data, seed: int, epochs: int, threads: int) -> dict[str, Any]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    epoch_ends: list[float] = []

    class EpochTimedMLP(MLPClassifier):
        """MLPClassifier noting the time at each epoch's end (its private once-per-epoch hook; no-op if gone)."""

        def _update_no_improvement_count(self, *args, **kwargs):
            epoch_ends.append(time.perf_counter())
            return super()._update_no_improvement_count(*args, **kwargs)

    classifier = EpochTimedMLP(
        hidden_layer_sizes=(MLP["hidden"], MLP["hidden"]), activation="relu", solver="adam", alpha=0.0,
        batch_size=MLP["batch_size"], learning_rate_init=MLP["learning_rate"], max_iter=epochs, shuffle=True,
        random_state=seed, tol=0.0, early_stopping=False, n_iter_no_change=epochs + 1,
        beta_1=0.9, beta_2=0.999, epsilon=1e-8,
    )  # fmt: skip
    with warnings.catch_warnings(), threadpool_limits(limits=threads):
        warnings.simplefilter("ignore", ConvergenceWarning)  # "max_iter reached": the point here
        start = time.perf_counter()
        classifier.fit(data["x_train"], data["y_train"])
        seconds = time.perf_counter() - start
    assert classifier.n_iter_ == epochs, (classifier.n_iter_, epochs)
    params = sum(w.size for w in classifier.coefs_) + sum(b.size for b in classifier.intercepts_)
    return {
        "test_accuracy": accuracy(classifier.predict(data["x_test"]), data["y_test"]),
        "train_seconds": seconds,
        "first_epoch_seconds": epoch_ends[0] - start if epoch_ends else None,
        "setup_seconds": 0.0,  # MLPClassifier.fit creates the weights: the training call holds it
        "params": int(params),
        "versions": {"scikit-learn": version("scikit-learn"), "numpy": np.__version__},
        "backend": f"NumPy BLAS, {plural(threads, 'thread')}",
    }


def run_keras_mlp(data, seed: int, epochs: int, threads: int) -> dict[str, Any]:
    os.environ["KERAS_BACKEND"] = "jax"
    import keras

    if keras.backend.backend() != "jax":
        raise RuntimeError(f"Keras backend is {keras.backend.backend()!r}, expected 'jax' (KERAS_BACKEND=jax)")
    keras.utils.set_random_seed(seed)
    setup_start = time.perf_counter()  # Keras creates the weights here (the Input gives their shapes)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(MLP["hidden"], activation="relu"),  # glorot_uniform weights, zero biases
            keras.layers.Dense(MLP["hidden"], activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(MLP["learning_rate"], beta_1=0.9, beta_2=0.999, epsilon=1e-8),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    setup_seconds = time.perf_counter() - setup_start
    epoch_ends: list[float] = []

    class EpochTimes(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            epoch_ends.append(time.perf_counter())

    start = time.perf_counter()
    model.fit(
        data["x_train"], data["y_train"], batch_size=MLP["batch_size"], epochs=epochs, shuffle=True, verbose=0,
        callbacks=[EpochTimes()],
    )  # fmt: skip
    seconds = time.perf_counter() - start
    logits = model.predict(data["x_test"], batch_size=len(data["x_test"]), verbose=0)
    import jax

    return {
        "test_accuracy": accuracy(logits, data["y_test"]),
        "train_seconds": seconds,
        "first_epoch_seconds": epoch_ends[0] - start if epoch_ends else None,
        "setup_seconds": setup_seconds,
        "params": int(sum(math.prod(w.shape) for w in model.trainable_weights)),
        "versions": {"keras": version("keras"), "jax": version("jax"), "jaxlib": version("jaxlib")},
        "backend": f"keras {keras.backend.backend()} on {jax.default_backend()}",
    }


def run_torch_cnn(data, seed: int, epochs: int, threads: int) -> dict[str, Any]:
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(seed)

    def conv(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out, eps=1e-5, momentum=0.1), nn.ReLU()]

    setup_start = time.perf_counter()
    model = nn.Sequential(
        *conv(1, 32),
        *conv(32, 32), nn.MaxPool2d(2),  # (8, 8) -> (4, 4)
        *conv(32, 64), nn.MaxPool2d(2),  # (4, 4) -> (2, 2)
        nn.Flatten(),
        nn.Linear(64 * 2 * 2, 128), nn.ReLU(), nn.Dropout(0.3),
        nn.Linear(128, 10),
    )  # fmt: skip
    for module in model.modules():  # nnjax's initialization: Glorot-uniform weights, zero biases
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)

    batch_size = CNN["batch_size"]
    steps_per_epoch = len(data["x_train"]) // batch_size  # the last partial batch is dropped, as nnjax.fit does
    total = max(epochs * steps_per_epoch, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=CNN["learning_rate"], betas=(0.9, 0.999), eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_factor(step, total))
    generator = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    setup_seconds = time.perf_counter() - setup_start

    x_train = torch.from_numpy(np.ascontiguousarray(images(data["x_train"]).transpose(0, 3, 1, 2)))
    y_train = torch.from_numpy(data["y_train"].astype(np.int64))
    x_test = torch.from_numpy(np.ascontiguousarray(images(data["x_test"]).transpose(0, 3, 1, 2)))

    epoch_ends: list[float] = []
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=generator)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            loss.backward()
            optimizer.step()
            scheduler.step()
        epoch_ends.append(time.perf_counter())
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        logits = model(x_test).numpy()
    return {
        "test_accuracy": accuracy(logits, data["y_test"]),
        "train_seconds": seconds,
        "first_epoch_seconds": epoch_ends[0] - start if epoch_ends else None,
        "setup_seconds": setup_seconds,
        "params": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
        "versions": {"torch": torch.__version__, "numpy": np.__version__},
        "backend": f"cpu, {plural(threads, 'thread')}",
    }


TOOLS = {
    tool.name: tool
    for tool in (
        Tool("nnjax_mlp", "mlp", "nnjax", ("jax", "optax", "nnjax"), run_nnjax_mlp),
        Tool("sklearn_mlp", "mlp", "scikit-learn MLPClassifier", ("sklearn",), run_sklearn_mlp),
        Tool("keras_mlp", "mlp", "Keras 3 (JAX backend)", ("keras", "jax"), run_keras_mlp),
        Tool("nnjax_cnn", "cnn", "nnjax", ("jax", "optax", "nnjax"), run_nnjax_cnn),
        Tool("torch_cnn", "cnn", "PyTorch (eager)", ("torch",), run_torch_cnn),
    )
}
DEFAULT_EPOCHS = {"mlp": MLP["epochs"], "cnn": CNN["epochs"]}
TASK_TITLES = {
    "mlp": "digits MLP: 64-128-128-10 ReLU, Adam(1e-3), batch 32",
    "cnn": "digits CNN (examples/digits_cnn.py): conv 32-32-64 + BatchNorm, dense 128 + Dropout 0.3; "
    "Adam, cosine decay from 2e-3, batch 32",
}


def missing_modules(tool: Tool) -> list[str]:
    return [m for m in tool.modules if importlib.util.find_spec(m) is None]


def child(args: argparse.Namespace) -> int:
    """``--tool NAME --seed S``: one run, one JSON line on stdout."""
    tool = TOOLS[args.tool]
    epochs = args.epochs if args.epochs is not None else DEFAULT_EPOCHS[tool.task]
    out: dict[str, Any] = {"tool": tool.name, "task": tool.task, "seed": args.seed, "epochs": epochs}
    try:
        if args.cpus:
            pin_to_cores([int(c) for c in args.cpus.split(",")])  # before jax and torch start their thread pools
        missing = missing_modules(tool)
        if missing:
            raise ModuleNotFoundError(", ".join(missing))
        if args.keep_freed_memory:
            import nnjax

            nnjax.keep_freed_memory()
        if args.data:
            with np.load(args.data) as f:
                data = {k: f[k] for k in f.files}
        else:
            data = make_data()
        out.update(tool.run(data, args.seed, epochs, cores()))
        out["total_seconds"] = out["setup_seconds"] + out["train_seconds"]
    except ModuleNotFoundError as e:
        out["error"] = f"not installed ({e.name or e})"
    except Exception as e:  # reported in the table, not a crash
        out["error"] = f"failed: {type(e).__name__}: {e}"
    print(json.dumps(out), flush=True)
    return 0 if "error" not in out else 1


# ---- the driver --------------------------------------------------------------------------------


def select_tools(spec: str | None) -> list[Tool]:
    """``--tools``: comma-separated tool names (``torch_cnn``), libraries (``nnjax``) or tasks (``mlp``)."""
    if not spec or spec == "all":
        return list(TOOLS.values())
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    chosen = [t for t in TOOLS.values() if any(w in (t.name, t.task, t.name.split("_")[0]) for w in wanted)]
    unknown = [w for w in wanted if not any(w in (t.name, t.task, t.name.split("_")[0]) for t in TOOLS.values())]
    if unknown:
        raise SystemExit(f"side_by_side: unknown --tools {unknown}; known: {sorted(TOOLS)}, their libraries and tasks")
    return chosen


def run_one(
    tool: Tool, seed: int, epochs: int | None, data_path: str, args, slot: int = 0, cache_dir: str | None = None
) -> dict[str, Any]:
    command = [sys.executable, str(pathlib.Path(__file__).resolve()), "--tool", tool.name, "--seed", str(seed),
               "--data", data_path]  # fmt: skip
    if epochs is not None:
        command += ["--epochs", str(epochs)]
    if args.keep_freed_memory:
        command.append("--keep-freed-memory")
    if args.threads:
        command += ["--cpus", ",".join(map(str, core_set(args.threads, slot)))]
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONUNBUFFERED": "1"}
    if cache_dir is not None:
        env["NNJAX_COMPILATION_CACHE"] = cache_dir
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"tool": tool.name, "seed": seed, "error": f"failed: timed out after {args.timeout}s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"tool": tool.name, "seed": seed, "error": f"failed (exit {proc.returncode}): {tail}"}
    return json.loads(lines[-1])


def spread(values: list[float], fmt: str) -> str:
    if not values:
        return "—"
    median = statistics.median(values)
    if len(values) == 1:
        return format(median, fmt)
    return f"{format(median, fmt)} [{format(min(values), fmt)}-{format(max(values), fmt)}]"


TIMES = (  # (column, the run's field): the warm run's field is "warm_" + field
    ("setup + train", "total_seconds"),
    ("train call", "train_seconds"),
    ("first epoch", "first_epoch_seconds"),
)


def times(runs: list[dict], field: str) -> list[float]:
    return [r[field] for r in runs if r.get(field) is not None]


def table(task: str, tools: list[Tool], results: dict[str, list[dict]], epochs: dict[str, int]) -> list[str]:
    columns = " | ".join(f"{name} cold, median s [min-max] | warm" for name, _ in TIMES)
    lines = [
        f"### {TASK_TITLES[task]}, {epochs[task]} epochs",
        "",
        f"| tool | test accuracy median [min-max] | {columns} | params | runs | versions |",
        "|---|---|" + "---|---|" * len(TIMES) + "---:|---:|---|",
    ]
    for tool in tools:
        runs = results.get(tool.name, [])
        ok = [r for r in runs if "error" not in r]
        errors = sorted({r["error"] for r in runs if "error" in r})
        if not ok:
            reason = errors[0] if errors else "not run"
            lines.append(f"| {tool.label} (`{tool.name}`) | {reason} |" + " — | —" * len(TIMES) + " | — | 0 | — |")
            continue
        versions = ", ".join(f"{k} {v}" for k, v in ok[0]["versions"].items())
        if ok[0].get("backend"):
            versions += f"; {ok[0]['backend']}"
        note = f" ({len(runs) - len(ok)} failed: {errors[0]})" if errors else ""
        cells = " | ".join(
            f"{spread(times(ok, field), '.2f')} | {spread(times(ok, 'warm_' + field), '.2f')}" for _, field in TIMES
        )
        lines.append(
            f"| {tool.label} (`{tool.name}`) | {spread([r['test_accuracy'] for r in ok], '.4f')}{note} "
            f"| {cells} | {ok[0]['params']:,} | {len(ok)} | {versions} |"
        )
    lines += ratios(tools, results)
    return lines


def ratios(tools: list[Tool], results: dict[str, list[dict]]) -> list[str]:
    """One line per other tool of the task: nnjax's median times over that tool's (below 1: nnjax is faster)."""
    ok = {tool.name: [r for r in results.get(tool.name, []) if "error" not in r] for tool in tools}
    ours = [r for name, runs in ok.items() if name.startswith("nnjax_") for r in runs]
    lines = []
    for tool in tools:
        theirs = ok[tool.name]
        if tool.name.startswith("nnjax_") or not ours or not theirs:
            continue
        parts = []
        for name, field in TIMES[:2]:
            for when, key in (("cold", field), ("warm", "warm_" + field)):
                a, b = times(ours, key), times(theirs, key)
                if a and b:
                    parts.append(f"{name} {when} {statistics.median(a) / statistics.median(b):.2f}x")
        lines.append(f"- nnjax / {tool.label}, medians: {', '.join(parts)}")
    return ["", *lines] if lines else []


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return f"{cpu}, {cores()} cores; Python {platform.python_version()}, {platform.system()}"


def loadavg() -> str:
    if not os.path.exists("/proc/loadavg"):
        return "?"
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def report(args, tools, results, epochs, load_start: str, started: str) -> str:
    command = "python benchmarks/side_by_side.py " + shlex.join(args.argv)
    lines = [
        "## Side by side: the digits MLP and CNN in nnjax, scikit-learn, Keras 3 and PyTorch",
        "",
        f"- command: `{command.strip()}`",
        f"- started {started}; machine: {machine()}; load average (1, 5, 15 min) at start {load_start}, "
        f"at end {loadavg()}",
        f"- {args.runs} runs per tool (seeds 0-{args.runs - 1}), each in a fresh process; one split for all "
        f"(stratified 80/20, seed {SPLIT_SEED}: 1,437 train / 360 test images, pixels / 16)",
        "- setup + train: creating the model's weights and optimizer, then the training call; train call: the "
        "training call alone; both with compilation, without imports, data loading and the final test "
        "evaluation (nnjax's and scikit-learn's training calls create the weights themselves: their setup is "
        "0); first epoch: from the start of the training call to the end of epoch 1",
        "- cold: a fresh process with an empty compilation cache; warm: a second fresh process, nnjax's "
        "persistent compilation cache kept from the cold run (the other tools keep nothing across processes)",
    ]
    if args.threads:
        lines.append(
            f"- threads: each run pinned to {plural(args.threads, 'core')} (--threads; torch and BLAS threads too)"
        )
    else:
        lines.append(f"- threads: each run may use all {plural(cores(), 'core')}")
    if args.jobs > 1:
        lines.append(f"- {args.jobs} runs at once (--jobs): the times compete for the cores, compare them with care")
    if args.note:
        lines.append(f"- note: {args.note}")
    for task in ("mlp", "cnn"):
        task_tools = [t for t in tools if t.task == task]
        if task_tools:
            lines += ["", *table(task, task_tools, results, epochs)]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs per tool, seeds 0..runs-1 (median reported)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs for every task (default: mlp 30, cnn 25)")
    parser.add_argument("--tools", default="all", help=f"comma-separated: tools {sorted(TOOLS)}, libraries or tasks")
    parser.add_argument("--out", default=None, help="also write the Markdown report to this file")
    parser.add_argument("--note", default=None, help="a line added to the report's header (e.g. the machine's load)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (>1 for smoke runs only: times compete)")
    threads_help = "pin each run to this many cores (default: all; torch and BLAS threads follow)"
    parser.add_argument("--threads", type=int, default=None, help=threads_help)
    parser.add_argument("--keep-freed-memory", action="store_true", help="nnjax.keep_freed_memory() in every run")
    parser.add_argument("--tool", choices=sorted(TOOLS), help=argparse.SUPPRESS)  # child mode: one run
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cpus", default=None, help=argparse.SUPPRESS)  # child mode: the cores to run on
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.runs < 1 or args.jobs < 1 or any(n is not None and n < 1 for n in (args.epochs, args.threads)):
        parser.error("--runs, --jobs, --epochs and --threads must be positive")
    return args


def main(argv: list[str] | None = None) -> str | int:
    args = parse_args(argv)
    if args.tool:
        return child(args)
    tools = select_tools(args.tools)
    epochs = {task: args.epochs if args.epochs is not None else n for task, n in DEFAULT_EPOCHS.items()}
    load_start, started = loadavg(), time.strftime("%Y-%m-%d %H:%M")
    results: dict[str, list[dict]] = {t.name: [] for t in tools}
    runnable = []
    for tool in tools:
        missing = missing_modules(tool)
        if missing:
            results[tool.name].append({"tool": tool.name, "error": f"not installed ({', '.join(missing)})"})
            print(f"{tool.name}: not installed ({', '.join(missing)}), skipped", file=sys.stderr, flush=True)
        else:
            runnable.append(tool)
    with tempfile.TemporaryDirectory() as tmp:
        data_path = str(pathlib.Path(tmp) / "digits_split.npz")
        np.savez(data_path, **make_data())
        # Seeds outermost: the tools take turns, so a change in the machine's load hits them all.
        todo = [(tool, seed) for seed in range(args.runs) for tool in runnable]

        slots: queue.Queue[int] = queue.Queue()  # with --jobs and --threads, runs going at once get other cores
        for slot in range(args.jobs):
            slots.put(slot)

        def one(item: tuple[Tool, int]) -> dict[str, Any]:
            """A cold run then a warm one (see the module docstring); the result is the cold run's, with the
            warm run's times beside it."""
            tool, seed = item
            slot = slots.get()
            try:
                with tempfile.TemporaryDirectory() as cache_dir:
                    result = run_one(tool, seed, args.epochs, data_path, args, slot, cache_dir)
                    warm = run_one(tool, seed, args.epochs, data_path, args, slot, cache_dir)
            finally:
                slots.put(slot)
            if "error" not in result and "error" not in warm:
                result.update({f"warm_{field}": warm.get(field) for _, field in TIMES})
            shown = result.get("error") or (
                f"test accuracy {result['test_accuracy']:.4f}, setup + train {result['total_seconds']:.2f}s cold, "
                f"{result.get('warm_total_seconds', float('nan')):.2f}s warm"
            )
            print(f"{tool.name} seed {seed}: {shown}", file=sys.stderr, flush=True)
            return result

        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for (tool, _), result in zip(todo, pool.map(one, todo), strict=True):
                results[tool.name].append(result)
    text = report(args, tools, results, epochs, load_start, started)
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text)
        print(f"written to {args.out}", file=sys.stderr)
    return text


if __name__ == "__main__":
    outcome = main()
    sys.exit(outcome if isinstance(outcome, int) else 0)
