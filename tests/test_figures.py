import dataclasses

import pytest
from conftest import training_summary

from a2d.figures import plot_alignment, plot_training, training_figure
from a2d.files import InputError, write_json


def summary(alignment):
    return dataclasses.asdict(training_summary(alignment=alignment))


def test_figures_are_written_as_png(tmp_path):
    weights = {"encoder_self": [[0.1 * (i + j) for j in range(4)] for i in range(8)],
               "decoder_cross": [[0.0] * 4 for _ in range(8)]}
    write_json(tmp_path / "train.json", summary({"student_heads_per_layer": 2, "teacher_heads_per_layer": 4,
                                                 "weights": weights}))
    plot_alignment(str(tmp_path / "train.json"), str(tmp_path / "aam.png"))
    plot_training(str(tmp_path / "train.json"), str(tmp_path / "curves.png"))
    for name in ("aam.png", "curves.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:4] == b"\x89PNG" and len(data) > 10_000


def test_alignment_figure_needs_an_aam(tmp_path):
    write_json(tmp_path / "train.json", summary({}))
    with pytest.raises(InputError, match="has no attention alignment module"):
        plot_alignment(str(tmp_path / "train.json"), str(tmp_path / "aam.png"))
    assert not (tmp_path / "aam.png").exists()


def test_the_curves_legend_covers_no_line():
    """The legend lies outside both panels (it used to sit on the loss curves), inside the figure."""
    fig = training_figure(training_summary(epochs=5))
    renderer = fig.canvas.get_renderer()
    loss_panel, bleu_panel = fig.axes
    legend = loss_panel.get_legend().get_window_extent(renderer)
    assert len(loss_panel.get_legend().get_texts()) == 2  # attention, ls
    for panel in (loss_panel, bleu_panel):
        assert not legend.overlaps(panel.get_window_extent(renderer))
    assert fig.bbox.x0 <= legend.x0 and legend.x1 <= fig.bbox.x1
