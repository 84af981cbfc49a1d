"""The README's tour and fit example run as written (the fit example with fewer epochs)."""

import contextlib
import io
import pathlib
import re

import pytest

README = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


@pytest.fixture(scope="module")
def tour_and_fit():
    """The tour and the fit example (3 epochs), run once for this file: later blocks run in a copy of their
    namespace, as a reader runs them in one session; the tour's printed output is kept for its test."""
    namespace, printed = {}, io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(BLOCKS[1], namespace)
    tour = dict(namespace)
    exec(BLOCKS[2].replace("epochs=30", "epochs=3"), namespace)
    return tour, printed.getvalue(), namespace


def test_tour_runs_and_prints_readable_params(tour_and_fit):
    namespace, printed, _ = tour_and_fit
    assert "'dense_0': {'b': (128,), 'w': (64, 128)}" in printed
    assert namespace["metrics"]["loss"].shape == (8,)  # 8 vmapped models, one loss each
    assert int(namespace["train_state"].step) == 1


def test_fit_example_runs(tour_and_fit):
    namespace = tour_and_fit[2]
    assert len(namespace["result"].history["val_accuracy"]) == 3
    assert namespace["result"].history["val_accuracy"][-1] > 0.8


def test_general_objective_example_trains_a_vae_with_aux_in_the_history(tour_and_fit):
    namespace = dict(tour_and_fit[2])
    exec(BLOCKS[3].replace("epochs=100", "epochs=5"), namespace)
    history = namespace["result"].history
    assert list(history) == ["loss", "kl", "reconstruction", "val_loss", "val_kl", "val_reconstruction"]
    assert len(history["kl"]) == 5 and history["loss"][-1] < history["loss"][0]
    assert sorted(namespace["result"].train_state.params) == ["decoder", "encoder"]


def test_inside_a_run_example_records_per_step_series_and_starts_from_given_weights(tour_and_fit):
    namespace = dict(tour_and_fit[2])
    exec(BLOCKS[4], namespace)
    history, steps = namespace["result"].history, 1437 // 32
    assert len(history["step/grad_norm"]) == 2 * steps and len(history["loss"]) == 2
    assert len(history["step/grad_norm/dense_0"]) == 2 * steps and "relu_1" not in str(list(history))
    assert "grad_norm per step" in [ax.get_title() for ax in namespace["fig"].axes]
    assert int(namespace["again"].train_state.step) == steps
