"""Plots: every figure gets a title and axis labels; bad input is a clear error."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from course_lib import plots  # noqa: E402
from course_lib.train import History, TrainConfig, lr_schedule  # noqa: E402


def labelled(ax):
    return ax.get_title() and ax.get_xlabel() and ax.get_ylabel()


def test_smooth_is_a_moving_average():
    np.testing.assert_allclose(plots.smooth([1, 2, 3, 4], window=2), [1, 1.5, 2.5, 3.5])


def test_figures_are_labelled():
    h = History(step=list(range(10)), train_loss=list(np.linspace(4, 2, 10)), val_step=[0, 9],
                val_loss=[4.1, 2.2])
    assert labelled(plots.loss_curves(h))
    assert labelled(plots.schedule(lr_schedule(TrainConfig(steps=50, warmup_steps=5)), 50))
    ax = plots.heatmap(np.eye(3), xlabels=["a", " ", "c"], ylabels=list("abc"))
    assert labelled(ax) and [t.get_text() for t in ax.get_xticklabels()] == ["a", " ", "c"]


def test_heatmap_rejects_4d_weights():
    with pytest.raises(ValueError, match="weights\\[0, head\\]"):
        plots.heatmap(np.zeros((1, 2, 3, 3)))
