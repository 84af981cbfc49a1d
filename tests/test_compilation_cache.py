"""nnjax.config.compilation_cache: JAX's persistent cache, on by choice; a second run compiles nothing."""

import os
import subprocess
import sys

import pytest

import nnjax

PROBE = """
import sys, jax, numpy as np, optax
counts = {"hits": 0, "misses": 0}
def count(event, **kw):
    for k in counts:
        counts[k] += event == f"/jax/compilation_cache/cache_{k}"
jax.monitoring.register_event_listener(count)
import nnjax
print(jax.config.jax_compilation_cache_dir)            # an import changes nothing
print(nnjax.config.compilation_cache(sys.argv[1]))
if sys.argv[2] == "fit":
    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    model = nnjax.serial(nnjax.Dense(8), nnjax.Relu(), nnjax.Dense(2))
    nnjax.fit(model, nnjax.losses.softmax_cross_entropy, optax.adam(1e-2), x, y, epochs=2, batch_size=16,
              validation_data=(x, y), progress=False)
else:  # one small program: enough to show where the cache is, or that it is off
    jax.jit(jax.numpy.sin)(np.float32(1.0)).block_until_ready()
print(counts["hits"], counts["misses"])
"""


def _probe(directory, work="fit", **env):
    environ = {k: v for k, v in os.environ.items() if k != "NNJAX_COMPILATION_CACHE"} | env
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(directory), work], capture_output=True, text=True, check=True, env=environ
    ).stdout.split("\n")
    return out[0], out[1], tuple(int(v) for v in out[2].split())


def test_a_second_process_loads_every_program_and_compiles_none(tmp_path):
    before, used, (hits, misses) = _probe(tmp_path)
    assert before == "None" and used == str(tmp_path) and misses > 5  # the first run compiles and keeps
    assert len(os.listdir(tmp_path)) >= misses
    _, _, (hits, misses) = _probe(tmp_path)
    assert misses == 0 and hits > 5


def test_the_environment_names_the_directory_or_keeps_the_cache_off(tmp_path):
    other = tmp_path / "from_env"
    _, used, _ = _probe(tmp_path / "given", "sin", NNJAX_COMPILATION_CACHE=str(other))
    assert used == str(other) and os.listdir(other) and not (tmp_path / "given").exists()
    _, used, (hits, misses) = _probe(tmp_path / "off", "sin", NNJAX_COMPILATION_CACHE="0")
    assert used == "None" and hits == misses == 0 and not (tmp_path / "off").exists()


def test_default_directory_and_bad_size(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert nnjax.config.default_cache_directory() == str(tmp_path / "nnjax" / "xla")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert nnjax.config.default_cache_directory() == os.path.expanduser("~/.cache/nnjax/xla")
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match="compilation_cache: argument `max_size_bytes` expected a positive int"):
            nnjax.config.compilation_cache(tmp_path, max_size_bytes=bad)


def test_the_size_cap_removes_the_least_recently_used_entries_first(tmp_path):
    for i in range(5):
        path = tmp_path / f"entry{i}-cache"
        path.write_bytes(b"x" * 100)
        os.utime(path, (1000 + i, 1000 + i))  # entry0 is the least recently used
    from nnjax._src.compilation_cache import trim_cache

    assert trim_cache(str(tmp_path), 250) == 3
    assert sorted(os.listdir(tmp_path)) == ["entry3-cache", "entry4-cache"]
    assert trim_cache(str(tmp_path), 250) == 0
