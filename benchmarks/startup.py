"""Start-up: what a user waits for before the first result, each measured in fresh processes.

Every run is a new Python process, so it pays what a user's script pays: imports, JAX's first lowering,
XLA compilation. "cold" runs with an empty compilation cache (``NNJAX_COMPILATION_CACHE`` pointed at a
new directory), "warm" is a second process with the directory the cold one filled. Medians [min-max]
over ``--runs`` pairs of processes, run one after the other.

  import        ``import nnjax`` against ``import jax, optax`` (seconds of the import alone; no cache)
  init          ``init_train_state`` of the README's MLP 64-128-128-10 with Adam, the key made before
                (issue 23's targets: at most 0.4 s cold, 0.05 s warm)
  model_init    the README tour's ``model.init`` (64-128-10), and how many XLA programs it compiles
  refit         the first ``fit`` in a process (5 epochs of the digits MLP), then a second one of the same
                model, loss and optimizer objects on other data of the same shape; cache off: the second
                runs the programs the first compiled

Run: python benchmarks/startup.py [--runs 5] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, sys, time
task = sys.argv[1]
start = time.perf_counter()
if task == "import_jax":
    import jax, optax
    print(json.dumps({"seconds": time.perf_counter() - start}))
    sys.exit()
import nnjax
if task == "import_nnjax":
    print(json.dumps({"seconds": time.perf_counter() - start}))
    sys.exit()
import jax, numpy as np, optax
nnjax.config.compilation_cache()  # NNJAX_COMPILATION_CACHE: a new directory (cold), the same (warm) or 0
programs = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, duration, **kw: programs.append(event == "/jax/core/compile/backend_compile_duration"))
if task == "init":
    model = nnjax.serial(nnjax.Dense(128), nnjax.Relu(), nnjax.Dense(128), nnjax.Relu(), nnjax.Dense(10))
    optimizer, key = optax.adam(1e-3), jax.random.key(0)
    jax.block_until_ready(key)
    before, start = sum(programs), time.perf_counter()
    jax.block_until_ready(nnjax.init_train_state(model, optimizer, key, (64,)))
elif task == "model_init":
    model = nnjax.serial(nnjax.Dense(128), nnjax.Relu(), nnjax.Dense(10))
    key = jax.random.key(0)
    jax.block_until_ready(key)
    before, start = sum(programs), time.perf_counter()
    jax.block_until_ready(model.init(key, (64,)))
elif task == "refit":
    images, labels = nnjax.data.load_digits()
    x = images.reshape(-1, 64).astype(np.float32) / 16
    model = nnjax.serial(nnjax.Dense(128), nnjax.Relu(), nnjax.Dense(128), nnjax.Relu(), nnjax.Dense(10))
    optimizer, loss = optax.adam(1e-3), nnjax.losses.softmax_cross_entropy
    fit = lambda x, y, seed: nnjax.fit(model, loss, optimizer, x, y, epochs=5, batch_size=32, seed=seed,
                                       progress=False)
    first = time.perf_counter()
    jax.block_until_ready(fit(x[:1400], labels[:1400], 0).train_state)
    first = time.perf_counter() - first
    before, start = sum(programs), time.perf_counter()
    jax.block_until_ready(fit(x[-1400:], labels[-1400:], 1).train_state)
print(json.dumps({"seconds": time.perf_counter() - start, "programs": sum(programs) - before,
                  **({"first fit": first} if task == "refit" else {})}))
"""

TASKS = {  # name -> (child task, kinds of run)
    "import jax, optax": ("import_jax", ("once",)),
    "import nnjax": ("import_nnjax", ("once",)),
    "init_train_state, README MLP": ("init", ("cold", "warm")),
    "model.init, README tour": ("model_init", ("cold", "warm")),
    "second fit in a process": ("refit", ("no cache",)),
}


def child(task: str, cache: str) -> dict:
    env = {**os.environ, "NNJAX_COMPILATION_CACHE": cache}
    out = subprocess.run([sys.executable, "-c", CHILD, task], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(runs: int) -> dict[tuple[str, str], list[dict]]:
    results: dict[tuple[str, str], list[dict]] = {}
    for _ in range(runs):
        for name, (task, kinds) in TASKS.items():
            with tempfile.TemporaryDirectory() as cache:
                for kind in kinds:
                    where = "0" if kind in ("once", "no cache") else cache  # warm reuses what cold filled
                    results.setdefault((name, kind), []).append(child(task, where))
    return results


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}-{max(values):.3f}]"


def report(results: dict[tuple[str, str], list[dict]], runs: int, started: str) -> str:
    lines = [
        "## Start-up: fresh processes, cold (empty compilation cache) and warm (the cache the cold run filled)",
        "",
        f"- command: `python benchmarks/startup.py --runs {runs}`; started {started}",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; Python "
        f"{platform.python_version()}; load average at the end {os.getloadavg()[0]:.2f}",
        "",
        "| what | run | seconds, median [min-max] | XLA programs (compiled, or loaded from the cache) |",
        "|---|---|---|---|",
    ]
    for (name, kind), values in results.items():
        if "first fit" in values[0]:
            lines.append(f"| first fit in a process | no cache | {spread([v['first fit'] for v in values])} | - |")
        programs = sorted({v["programs"] for v in values}) if "programs" in values[0] else ["-"]
        lines.append(f"| {name} | {kind} | {spread([v['seconds'] for v in values])} | "
                     f"{', '.join(map(str, programs))} |")
    imports = [statistics.median(v["seconds"] for v in results[(name, "once")]) for name in list(TASKS)[:2]]
    init = {kind: statistics.median(v["seconds"] for v in results[("init_train_state, README MLP", kind)])
            for kind in ("cold", "warm")}
    lines += [
        "",
        f"- `import nnjax` takes {imports[1] - imports[0]:+.3f} s beside `import jax, optax` (target: within ~0.15 s)",
        f"- README MLP initialization: {init['cold']:.3f} s cold ({init['cold'] / 0.4:.2f}x the 0.4 s target), "
        f"{init['warm']:.3f} s warm ({init['warm'] / 0.05:.2f}x the 0.05 s target)",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="pairs of processes per measurement")
    parser.add_argument("--out", default=None, help="also write the Markdown report to this file")
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M")
    text = report(measure(args.runs), args.runs, started)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
