"""Tiled inference equals untiled inference; tile geometry covers the photo."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dmenet.tiling import (
    DEFAULT_OVERLAP_PX,
    auto_tile_px,
    blend_geometry,
    blend_ramp,
    predict_tiled,
    tile_spans,
    tile_starts,
)


class TinyUNet(nn.Module):
    """A small fully-convolutional net with B's traits: 4 poolings (stride 16), bottom/right
    replicate padding to a multiple of 16, BatchNorm in eval mode, skips, nearest upsampling."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.ModuleList(nn.Conv2d(c_in, 8, 3, padding=1) for c_in in (3, 8, 8, 8, 8))
        self.bn = nn.ModuleList(nn.BatchNorm2d(8) for _ in range(5))
        self.up = nn.ModuleList(nn.Conv2d(16, 8, 3, padding=1) for _ in range(4))
        self.out = nn.Conv2d(8, 1, 3, padding=1)
        for bn in self.bn:  # non-trivial eval-mode statistics
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (16 - w % 16) % 16, 0, (16 - h % 16) % 16), mode="replicate")
        skips = []
        for i, (conv, bn) in enumerate(zip(self.down, self.bn)):
            x = F.relu(bn(conv(x)))
            if i < 4:
                skips.append(x)
                x = F.max_pool2d(x, 2)
        for conv, skip in zip(self.up, reversed(skips)):
            x = F.relu(conv(torch.cat([F.interpolate(x, scale_factor=2.0, mode="nearest"), skip], 1)))
        return torch.sigmoid(self.out(x))[..., :h, :w]


@pytest.mark.parametrize("length", [1, 15, 100, 255, 256, 257, 700, 1000, 1031])
@pytest.mark.parametrize("tile,overlap", [(256, 128), (300, 100), (512, 384)])
def test_tile_starts_cover_and_align(length, tile, overlap):
    spans = tile_spans(length, tile, overlap)
    starts = [s for s, _ in spans]
    ends = [e for _, e in spans]
    assert starts == tile_starts(length, tile, overlap)
    assert starts[0] == 0
    assert all(s % 16 == 0 for s in starts)
    assert all(b > a for a, b in zip(starts, starts[1:]))
    assert ends[-1] == length  # the last tile ends on the photo's edge
    for e0, s1 in zip(ends, starts[1:]):
        assert e0 - s1 >= overlap  # neighbours overlap by at least the requested amount
    assert all(e - s <= tile + 15 for s, e in zip(starts, ends))
    # balanced: no more tiles than needed, and only the overlaps (plus alignment) recomputed
    n = len(spans)
    if n > 1:
        assert sum(e - s for s, e in spans) <= length + (n - 1) * (overlap + 3 * 16)
        assert n == 2 or (length + (n - 2) * (overlap + 15)) / (n - 1) > tile - 16


def test_auto_tile_fits_the_budget():
    from dmenet import tiling

    assert auto_tile_px(800, 1200, memory_gb=4.0) == 0  # 1 MP: runs whole
    tile_h, tile_w = auto_tile_px(4000, 6000, memory_gb=4.0)
    assert tile_h % 16 == 0 and 1024 <= min(tile_h, tile_w) < 4000
    rows, cols = tile_spans(4000, tile_h, DEFAULT_OVERLAP_PX), tile_spans(6000, tile_w, DEFAULT_OVERLAP_PX)
    biggest = max(e - s for s, e in rows) * max(e - s for s, e in cols)
    peak = (tiling.BASE_GB * 2**30 + tiling.PHOTO_BYTES_PER_PX * 24e6
            + tiling.TILE_BYTES_PER_PX["fast"] * biggest)
    assert peak <= 4.0 * 2**30
    computed = sum(e - s for s, e in rows) * sum(e - s for s, e in cols)
    # no square tile of the same area recomputes less
    side = int((tile_h * tile_w) ** 0.5) // 16 * 16
    square = (sum(e - s for s, e in tile_spans(4000, side, DEFAULT_OVERLAP_PX))
              * sum(e - s for s, e in tile_spans(6000, side, DEFAULT_OVERLAP_PX)))
    assert computed <= square
    bigger = auto_tile_px(4000, 6000, memory_gb=8.0)  # more memory, bigger tiles
    assert bigger[0] * bigger[1] > tile_h * tile_w
    ref = auto_tile_px(4000, 6000, memory_gb=4.0, path="reference")
    assert ref[0] * ref[1] < tile_h * tile_w


def test_blend_weights_cover_every_pixel():
    length, tile, overlap = 1000, 256, 128
    starts = tile_starts(length, tile, overlap)
    total = torch.zeros(length, dtype=torch.float64)
    for i, s in enumerate(starts):
        e = length if i == len(starts) - 1 else s + tile
        total[s:e] += blend_ramp(e - s, i > 0, i < len(starts) - 1, overlap)
    assert float(total.min()) > 0.5
    blend, margin = blend_geometry(overlap)
    w = blend_ramp(tile, True, True, overlap)
    assert float(w[:margin].max()) == 0.0 and float(w[-margin:].max()) == 0.0
    assert float(w[margin + blend : tile - margin - blend].min()) == 1.0


def test_tiled_equals_untiled_small_net():
    torch.manual_seed(0)
    net = TinyUNet().eval()
    image = torch.rand(1, 3, 181, 457)
    with torch.no_grad():
        full = net(image)
    tiled = predict_tiled(net, image, tile=224, overlap=192)
    assert tiled.shape == full.shape
    assert float(full.std()) > 1e-3  # the comparison is not between constants
    assert torch.allclose(tiled, full, atol=1e-5)


def test_too_small_overlap_is_detectably_different():
    """The check above can fail: with almost no overlap the seams show."""
    torch.manual_seed(0)
    net = TinyUNet().eval()
    image = torch.rand(1, 3, 64, 457)
    with torch.no_grad():
        full = net(image)
    tiled = predict_tiled(net, image, tile=128, overlap=8)
    assert float((tiled - full).abs().max()) > 1e-4  # 10x the tolerance used above


def test_no_tiling_when_photo_fits():
    """A photo with no more pixels than one tile runs whole, whatever its shape."""
    from dmenet.tiling import needs_tiling

    net = TinyUNet().eval()
    calls = []

    def counting(x):
        calls.append(tuple(x.shape))
        return net(x)

    image = torch.rand(1, 3, 40, 100)  # 4000 px <= 64 * 64, though wider than a tile
    with torch.no_grad():
        assert torch.equal(predict_tiled(counting, image, tile=64, overlap=16), net(image))
    assert calls == [(1, 3, 40, 100)]
    assert needs_tiling(65, 64, 64) and not needs_tiling(64, 64, 64) and not needs_tiling(10**4, 10**4, 0)


def test_tiled_equals_untiled_fast_b(random_b):
    """B on the fast path (replicate padding) with the default overlap: tiled within 1e-3 of
    untiled (the fast path itself equals the reference: tests/inference/test_fast.py)."""
    import copy

    from dmenet.checkpoint import DefocusPredictor, prepare_for_inference
    from dmenet.inference.fast import fast_predictor
    from dmenet.tiling import DEFAULT_OVERLAP_PX
    from tests.inference.test_fast import with_padding_mode

    model = prepare_for_inference(with_padding_mode(copy.deepcopy(random_b), "replicate"))
    reference = DefocusPredictor(model).eval()
    predictor = fast_predictor(reference)
    assert predictor.fast_path
    torch.manual_seed(2)
    image = F.avg_pool2d(torch.rand(1, 3, 32, 704), 3, 1, 1)
    with torch.no_grad():
        full = predictor(image)
    assert float(full.std()) > 1e-2
    tiled = predict_tiled(predictor, image, tile=512, overlap=DEFAULT_OVERLAP_PX, max_untiled_px=0)
    assert len(tile_starts(704, 512, DEFAULT_OVERLAP_PX)) == 3
    assert float((tiled - full).abs().max()) < 1e-3


@pytest.mark.slow
def test_tiled_equals_untiled_real_b(random_b):
    """The paper's B with the default overlap: tiled within 1e-3 of untiled (tiles cut across)."""
    from dmenet.checkpoint import DefocusPredictor
    from dmenet.tiling import DEFAULT_OVERLAP_PX

    predictor = DefocusPredictor(random_b).eval()
    torch.manual_seed(1)
    image = F.avg_pool2d(torch.rand(1, 3, 32, 704), 3, 1, 1)
    with torch.no_grad():
        full = predictor(image)
    assert float(full.std()) > 1e-2
    # a long strip: fewer pixels than one tile, so tiling is forced (max_untiled_px=0)
    tiled = predict_tiled(predictor, image, tile=512, overlap=DEFAULT_OVERLAP_PX, max_untiled_px=0)
    assert len(tile_starts(704, 512, DEFAULT_OVERLAP_PX)) == 3
    assert float((tiled - full).abs().max()) < 1e-3
