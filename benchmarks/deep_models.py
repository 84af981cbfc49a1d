#!/usr/bin/env python
"""Deep models: compile time and program size of the zoo GPT's train step, stacked (``nnjax.stack``) vs unrolled,
by depth; peak temporary memory per rematerialization policy; step time stacked vs unrolled.

One run measures, for the zoo GPT (``nnjax.models.GPT``, AdamW, ``make_train_step``, softmax cross-entropy):

1. compile: ``jax.jit(step).lower(train_state, batch)`` then ``.compile()`` (seconds each, the fastest of
   ``--compile-repeats`` cold compiles of a freshly built model: on a shared machine the fastest is the one
   least slowed by other work; the persistent compilation cache is off), and the compiled program's size
   (``len(compiled.as_text())``), at each depth, with ``scan_layers=True`` (one block in a ``lax.scan``) and
   ``scan_layers=False`` (one traced block per layer).
   Target: the stacked depth-24 compile at most 1.5x the stacked depth-2 one.
2. memory: ``compiled.memory_analysis().temp_size_in_bytes`` of the stacked step at ``--memory-depth``, with no
   remat and with each ``nnjax.remat`` policy, same batch. Target: ``nothing_saveable`` at most 40% of no remat.
3. step time: the median of ``--repeats`` measurements of ``--steps`` steps each of ``make_train_step``'s jitted
   step, stacked and unrolled in turns, at ``--memory-depth``; their ratio.

Run:
  python benchmarks/deep_models.py                      # --size cpu (the issue's: hidden 64, 4 heads, T=32)
  python benchmarks/deep_models.py --size small --out benchmarks/results-gpu-deep-models.md   # on a GPU
  python benchmarks/deep_models.py --size tiny          # a quick try of the script itself
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import optax

import nnjax

SIZES = {
    # The measurement on a 2-core CPU: hidden 64, 4 heads, sequences of 32.
    "cpu": {"vocab": 256, "seq": 32, "batch": 8, "hidden": 64, "heads": 4, "mlp": 256, "depths": (2, 6, 12, 24)},
    # For an accelerator: a GPT-2-small-like width, sequences of 256.
    "small": {"vocab": 8192, "seq": 256, "batch": 16, "hidden": 512, "heads": 8, "mlp": 2048, "depths": (2, 6, 12, 24)},
    "tiny": {"vocab": 32, "seq": 8, "batch": 2, "hidden": 16, "heads": 2, "mlp": 32, "depths": (1, 2)},
}
POLICIES = (None, "everything_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable", "nothing_saveable")


def gpt(config: dict, depth: int, *, scan_layers: bool = True, remat=None) -> nnjax.models.GPTModel:
    return nnjax.models.GPT(
        vocab_size=config["vocab"],
        max_len=config["seq"],
        hidden=config["hidden"],
        depth=depth,
        num_heads=config["heads"],
        mlp_dim=config["mlp"],
        scan_layers=scan_layers,
        remat=remat,
    )


def _step_and_inputs(model, config: dict, concrete: bool = False):
    tx = optax.adamw(3e-4)
    shape = (config["seq"],)
    if concrete:
        train_state = nnjax.init_train_state(model, tx, jax.random.key(0), shape)
    else:
        train_state = nnjax.abstract_train_state(model, tx, shape)
    step = nnjax.make_train_step(model, nnjax.losses.softmax_cross_entropy, tx, jit=False)
    tokens = jax.random.randint(jax.random.key(1), (config["batch"], config["seq"] + 1), 0, config["vocab"])
    return step, train_state, (tokens[:, :-1], tokens[:, 1:])


def compile_figures(model, config: dict) -> dict:
    """Lower and compile seconds, program size and temporary memory of one train step (nothing runs)."""
    step, train_state, batch = _step_and_inputs(model, config)
    start = time.perf_counter()
    lowered = jax.jit(step).lower(train_state, batch)
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    return {
        "lower_s": lower_s,
        "compile_s": compile_s,
        "text_chars": len(compiled.as_text()),
        "temp_bytes": None if memory is None else int(memory.temp_size_in_bytes),
    }


def step_times(models: dict, config: dict, steps: int, repeats: int) -> dict:
    """Median seconds per train step of each model, measured in turns (one run of ``steps`` steps of each model,
    ``repeats`` times), so that a busy moment of a shared machine slows every model alike."""
    runs = {}
    for name, model in models.items():
        _, train_state, batch = _step_and_inputs(model, config, concrete=True)
        step = nnjax.make_train_step(model, nnjax.losses.softmax_cross_entropy, optax.adamw(3e-4))  # jit, donate
        for _ in range(2):
            train_state, _ = step(train_state, batch)
        jax.block_until_ready(train_state)
        runs[name] = [step, train_state, batch]
    times = {name: [] for name in models}
    for _ in range(repeats):
        for name, run in runs.items():
            step, train_state, batch = run
            start = time.perf_counter()
            for _ in range(steps):
                train_state, _ = step(train_state, batch)
            jax.block_until_ready(train_state)
            times[name].append((time.perf_counter() - start) / steps)
            run[1] = train_state
    return {name: statistics.median(t) for name, t in times.items()}


def fastest(build, config: dict, repeats: int) -> dict:
    """``compile_figures`` of ``repeats`` freshly built models (nothing cached between them): the fastest."""
    runs = [compile_figures(build(), config) for _ in range(max(1, repeats))]
    return {
        "lower_s": min(r["lower_s"] for r in runs),
        "compile_s": min(r["compile_s"] for r in runs),
        "text_chars": runs[0]["text_chars"],
        "temp_bytes": runs[0]["temp_bytes"],
    }


def run(
    size: str = "cpu",
    *,
    memory_depth: int | None = None,
    steps: int = 10,
    repeats: int = 5,
    compile_repeats: int = 2,
) -> dict:
    """All three measurements for one size; returns the figures (the smoke test reads them)."""
    jax.config.update("jax_enable_compilation_cache", False)  # cold compiles only
    config = SIZES[size]
    depths = config["depths"]
    memory_depth = memory_depth or (12 if 12 in depths else depths[-1])
    compile_rows = []
    for depth in depths:
        for scan_layers in (True, False):
            build = lambda depth=depth, scan_layers=scan_layers: gpt(config, depth, scan_layers=scan_layers)  # noqa: E731
            figures = fastest(build, config, compile_repeats)
            compile_rows.append({"depth": depth, "scan_layers": scan_layers, **figures})
            print(f"compile depth {depth:>2} {'stacked ' if scan_layers else 'unrolled'}: {figures}", flush=True)
    memory_rows = []
    for policy in POLICIES:
        figures = compile_figures(gpt(config, memory_depth, remat=policy), config)
        memory_rows.append({"policy": policy, **figures})
        print(f"memory depth {memory_depth} remat={policy}: {figures}", flush=True)
    unrolled = compile_figures(gpt(config, memory_depth, scan_layers=False), config)
    times = step_times({sl: gpt(config, memory_depth, scan_layers=sl) for sl in (True, False)}, config, steps, repeats)
    return {
        "size": size,
        "config": config,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "memory_depth": memory_depth,
        "compile": compile_rows,
        "memory": memory_rows,
        "unrolled_temp_bytes": unrolled["temp_bytes"],
        "step_s": times,
        "compile_repeats": compile_repeats,
    }


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.2f}"


def markdown(r: dict) -> str:
    c = r["config"]
    rows = {(row["depth"], row["scan_layers"]): row for row in r["compile"]}
    depths = c["depths"]
    lines = [
        f"### Deep models: the zoo GPT's train step, stacked (`nnjax.stack`) vs unrolled ({r['size']}), "
        f"{r['device']} ({r['backend']})",
        "",
        f"- GPT: hidden {c['hidden']}, {c['heads']} heads, MLP {c['mlp']}, vocab {c['vocab']}, sequences of "
        f"{c['seq']}, batch {c['batch']}; float32, AdamW, `make_train_step`, softmax cross-entropy",
        f"- jax {jax.__version__}, nnjax {nnjax.__version__}, python {platform.python_version()}, "
        f"{platform.machine()}; compile: `jax.jit(step).lower(...)` then `.compile()`, cold (no persistent cache), "
        f"the fastest of {r.get('compile_repeats', 1)} per row",
        "",
        "| depth | stacked lower s | stacked compile s | stacked program chars | unrolled lower s | "
        "unrolled compile s | unrolled program chars | compile unrolled / stacked |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for depth in depths:
        s, u = rows[(depth, True)], rows[(depth, False)]
        lines.append(
            f"| {depth} | {s['lower_s']:.2f} | {s['compile_s']:.2f} | {s['text_chars']:,} | {u['lower_s']:.2f} | "
            f"{u['compile_s']:.2f} | {u['text_chars']:,} | {u['compile_s'] / s['compile_s']:.1f}x |"
        )
    first, last = depths[0], depths[-1]
    for scan_layers, label in ((True, "stacked"), (False, "unrolled")):
        a, b = rows[(first, scan_layers)], rows[(last, scan_layers)]
        lines.append("")
        lines.append(
            f"- {label}: depth {last} / depth {first}: compile {b['compile_s'] / a['compile_s']:.2f}x, "
            f"lower + compile {(b['lower_s'] + b['compile_s']) / (a['lower_s'] + a['compile_s']):.2f}x, "
            f"program size {b['text_chars'] / a['text_chars']:.2f}x"
            + (" (target: compile at most 1.5x)" if scan_layers else "")
        )
    base = r["memory"][0]["temp_bytes"]
    lines += [
        "",
        f"Peak temporary memory (`compiled.memory_analysis().temp_size_in_bytes`) of the stacked depth-"
        f"{r['memory_depth']} step, same batch; unrolled without remat: {_mib(r['unrolled_temp_bytes'])} MiB.",
        "",
        "| remat policy | temp MiB | of no remat | compile s |",
        "|---|---:|---:|---:|",
    ]
    for row in r["memory"]:
        share = "n/a" if base in (None, 0) or row["temp_bytes"] is None else f"{100 * row['temp_bytes'] / base:.0f}%"
        name = "none (no remat)" if row["policy"] is None else f"`{row['policy']}`"
        lines.append(f"| {name} | {_mib(row['temp_bytes'])} | {share} | {row['compile_s']:.2f} |")
    stacked, unrolled = r["step_s"][True], r["step_s"][False]
    lines += [
        "",
        "- target: `nothing_saveable` at most 40% of no remat",
        f"- step time at depth {r['memory_depth']}: stacked {1e3 * stacked:.2f} ms, unrolled {1e3 * unrolled:.2f} ms, "
        f"stacked / unrolled {stacked / unrolled:.2f}x",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default=None, help="default: small on GPU/TPU, cpu on CPU")
    parser.add_argument("--memory-depth", type=int, default=None, help="depth of the memory and step-time rows")
    parser.add_argument("--steps", type=int, default=10, help="steps per step-time measurement")
    parser.add_argument("--repeats", type=int, default=5, help="step-time measurements (median reported)")
    parser.add_argument("--compile-repeats", type=int, default=2, help="cold compiles per row (the fastest is kept)")
    parser.add_argument("--out", default=None, help="also write the markdown here")
    args = parser.parse_args(argv)
    size = args.size or ("cpu" if jax.default_backend() == "cpu" else "small")
    result = run(
        size,
        memory_depth=args.memory_depth,
        steps=args.steps,
        repeats=args.repeats,
        compile_repeats=args.compile_repeats,
    )
    text = markdown(result)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return result


if __name__ == "__main__":
    main()
