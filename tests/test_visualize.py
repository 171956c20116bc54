import numpy as np
import torch

from dmenet.visualize import colorize, defocus_panel, log_panels


def test_colorize_spans_the_colormap():
    rgb = colorize(np.array([[0.0, 7.0, 100.0]]), 0.0, 7.0)
    assert rgb.shape == (1, 3, 3) and rgb.dtype == np.uint8
    assert not np.array_equal(rgb[0, 0], rgb[0, 1])
    assert np.array_equal(rgb[0, 1], rgb[0, 2])  # clipped at vmax


def test_panel_layout_and_files(tmp_path):
    image = torch.rand(3, 8, 10)
    pred = torch.linspace(0, 1, 80).view(1, 8, 10)
    panel = defocus_panel(image, pred, pred * 0.5)
    assert panel.shape == (3, 8, 50) and 0 <= panel.min() and panel.max() <= 1
    assert torch.equal(panel[:, :, :10], image)
    assert torch.allclose(panel[:, :, 10:20], pred.expand(3, -1, -1))
    assert defocus_panel(image, pred).shape == (3, 8, 30)  # no label: 3 tiles
    paths = log_panels(None, "val/x", [panel, panel], step=3, out_dir=tmp_path)
    assert [p.name for p in paths] == ["iter_0000003_0.png", "iter_0000003_1.png"]
