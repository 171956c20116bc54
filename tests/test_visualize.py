import numpy as np
import torch

from dmenet.labels import SIGMA_MAX_PX
from dmenet.visualize import PANEL_MIN_HEIGHT_PX, colorize, defocus_panel, log_panels

TITLE_PX = 22  # the title bar above each tile


def test_colorize_spans_the_colormap():
    rgb = colorize(np.array([[0.0, 7.0, 100.0]]), 0.0, 7.0)
    assert rgb.shape == (1, 3, 3) and rgb.dtype == np.uint8
    assert not np.array_equal(rgb[0, 0], rgb[0, 1])
    assert np.array_equal(rgb[0, 1], rgb[0, 2])  # clipped at vmax


def _u8(panel: torch.Tensor) -> np.ndarray:
    return (panel.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


def test_panel_is_titled_tall_and_in_px(tmp_path):
    image = torch.rand(3, 8, 10)
    pred = torch.linspace(0, 1, 80).view(1, 8, 10)
    panel = defocus_panel(image, pred, pred)  # prediction == label: zero error
    factor = 32  # 8 rows -> at least 256 rows, by a whole factor
    assert panel.shape[1] == TITLE_PX + 8 * factor >= PANEL_MIN_HEIGHT_PX
    assert 0 <= panel.min() and panel.max() <= 1
    pic = _u8(panel)
    # four tiles of 10 * factor columns (+ 2 px gaps) and a colour bar
    tile_w = 10 * factor + 2
    assert pic.shape[1] == 4 * tile_w + 64
    # titles: white text on the black bar above every tile
    for k in range(4):
        assert pic[:TITLE_PX, k * tile_w: (k + 1) * tile_w - 2].max() > 200
    body = pic[TITLE_PX:]
    # photo tile: the photo, upscaled by nearest neighbour
    photo = (image.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(body[::factor, : 10 * factor : factor], photo)
    # label and prediction: sigma in px on the 0..7 px scale
    expected = colorize(pred[0].numpy() * SIGMA_MAX_PX)
    assert np.array_equal(body[::factor, tile_w: tile_w + 10 * factor: factor], expected)
    assert np.array_equal(body[::factor, 2 * tile_w: 2 * tile_w + 10 * factor: factor], expected)
    # error tile: |pred - label| = 0 px everywhere -> the colour of 0 px
    error = body[:, 3 * tile_w: 3 * tile_w + 10 * factor]
    assert (error == colorize(np.zeros((1, 1)))[0, 0]).all()
    # colour bar: 7 px at the top, 0 px at the bottom
    bar = body[:, 4 * tile_w + 8]
    assert np.array_equal(bar[0], colorize(np.array([[SIGMA_MAX_PX]]))[0, 0])
    assert np.array_equal(bar[-1], colorize(np.zeros((1, 1)))[0, 0])


def test_panel_without_label_and_files(tmp_path):
    image = torch.rand(3, 300, 20)
    pred = torch.rand(1, 300, 20)
    panel = defocus_panel(image, pred)  # photo | prediction, already tall enough: no upscaling
    assert panel.shape == (3, TITLE_PX + 300, 2 * 22 + 64)
    paths = log_panels(None, "val/x", [panel, panel], step=3, out_dir=tmp_path)
    assert [p.name for p in paths] == ["iter_0000003_0.png", "iter_0000003_1.png"]
