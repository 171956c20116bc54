"""B: the paper's VGG19 U-Net and every other registered blur estimator."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from dmenet.errors import DMENetError
from dmenet.modules import BlurEstimate, BlurEstimator, LightBlurEstimator
from dmenet.modules.vgg import vgg19_features
from dmenet.registry import BLUR_ESTIMATORS, load_all

load_all()
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=sorted(BLUR_ESTIMATORS.names()))
def any_b(request, paper_b, light_b) -> nn.Module:
    """Every registered B (the two shipped ones reuse the session fixtures)."""
    name = request.param
    cls = BLUR_ESTIMATORS.get(name)
    for built in (paper_b, light_b):
        if type(built) is cls:
            return built
    return BLUR_ESTIMATORS.create(name, weights=None)


class TestEveryBlurEstimator:
    @pytest.mark.parametrize("hw", [(97, 131), (32, 48), (17, 5)])
    def test_shapes_at_any_size(self, any_b, hw):
        any_b.eval()
        h, w = hw
        with torch.no_grad():
            out = any_b(torch.rand(2, 3, h, w))
        assert isinstance(out, BlurEstimate)
        assert out.y.shape == (2, 1, h, w) and out.y.dtype == torch.float32
        assert out.feature.shape == (2, 64, h, w)
        assert 0.0 <= float(out.y.min()) and float(out.y.max()) <= 1.0
        assert torch.isfinite(out.y).all() and torch.isfinite(out.feature).all()
        # auxiliary maps, coarse to fine: H/16 .. H, rounded up (padded input, cropped back)
        expected = [(math.ceil(h / s), math.ceil(w / s)) for s in (16, 8, 4, 2, 1)]
        assert [tuple(a.shape[-2:]) for a in out.aux] == expected
        for a in out.aux:
            assert a.shape[:2] == (2, 1) and 0.0 <= float(a.min()) and float(a.max()) <= 1.0

    def test_gradients_reach_every_parameter(self, any_b):
        any_b.train()
        any_b.zero_grad()
        out = any_b(torch.rand(2, 3, 32, 32))
        loss = out.y.mean() + sum(a.mean() for a in out.aux) + out.feature.mean()
        loss.backward()
        missing = [
            n for n, p in any_b.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
        ]
        assert missing == []
        any_b.zero_grad()

    def test_rejects_wrong_channels(self, any_b):
        with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
            any_b(torch.rand(1, 1, 32, 32))

    def test_records_init_args_as_plain_data(self, any_b):
        args = any_b.init_args
        assert "weights" in args
        rebuilt = type(any_b)(**args)
        assert [n for n, _ in rebuilt.named_parameters()] == [
            n for n, _ in any_b.named_parameters()
        ]


class TestPaperBlurEstimator:
    def test_registered(self):
        assert BLUR_ESTIMATORS.get("dmenet_vgg19") is BlurEstimator
        assert BLUR_ESTIMATORS.get("light_resnet18") is LightBlurEstimator

    def test_encoder_is_torchvision_vgg19_conv_layers(self, paper_b):
        from torchvision.models import vgg19

        reference = vgg19(weights=None).features
        n_ref = sum(
            p.numel() for m in reference if isinstance(m, nn.Conv2d) for p in m.parameters()
        )
        n_enc = sum(p.numel() for p in paper_b.encoder.parameters())
        assert n_enc == n_ref == 20_024_384
        # same names as torchvision's features (minus pool5): a torchvision state_dict loads strictly
        ref_state = {k: v for k, v in reference.state_dict().items()}
        paper_b.encoder.load_state_dict(ref_state, strict=True)
        assert len(paper_b.encoder) == 36  # conv1_1 .. relu5_4, no pool5

    def test_parameter_count_is_the_reference_b(self, paper_b):
        # SPEC section 3: the official B has 26,939,819 trainable values (documented in
        # docs/training.md); our conv without bias + BN (gamma, beta) counts as the reference's
        # conv with bias + BN (beta only)
        assert sum(p.numel() for p in paper_b.parameters() if p.requires_grad) == 26_939_819

    def test_aux_heads_are_the_reference_layers(self, paper_b):
        # conv -> BN -> LReLU(0.2), conv to 1 -> BN -> sigmoid; widths 256, 128, 64, 32, 32
        assert [h.conv1.out_channels for h in paper_b.aux_heads] == [256, 128, 64, 32, 32]
        assert [h.conv1.in_channels for h in paper_b.aux_heads] == [512, 256, 128, 64, 64]
        for head in paper_b.aux_heads:
            assert [type(m).__name__ for m in head] == [
                "Conv2d", "BatchNorm2d", "LeakyReLU", "Conv2d", "BatchNorm2d", "Sigmoid"]
            assert head.conv1.bias is None and head.conv2.bias is None
            assert head.conv2.out_channels == 1 and head.act1.negative_slope == 0.2

    def test_padding_is_edge_replication_by_default(self, paper_b):
        padded = [m for m in paper_b.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
        assert len(padded) == 16 + 10 + 14 + 10 + 3  # encoder, decoder, refine, aux, head
        assert {m.padding_mode for m in padded} == {"replicate"}
        assert paper_b.init_args["padding_mode"] == "replicate"
        zeros = BlurEstimator(weights=None, aux_heads=False, n_refine_blocks=1, padding_mode="zeros")
        assert {m.padding_mode for m in zeros.modules() if isinstance(m, nn.Conv2d)} == {"zeros"}
        with pytest.raises(ValueError, match="padding_mode"):
            BlurEstimator(weights=None, padding_mode="reflect")

    def test_edge_padding_sees_a_constant_image_as_constant(self):
        # with edge replication a constant input gives a constant map (no border artefacts);
        # zero padding does not
        torch.manual_seed(0)
        for mode, flat in (("replicate", True), ("zeros", False)):
            b = BlurEstimator(weights=None, aux_heads=False, n_refine_blocks=1, padding_mode=mode).eval()
            with torch.no_grad():
                y = b(torch.full((1, 3, 32, 32), 0.3)).y
            assert (float(y.max() - y.min()) < 1e-5) == flat, mode

    def test_decoder_layout_matches_spec(self, paper_b):
        def widths(stage):
            return [m.out_channels for m in stage.modules() if isinstance(m, nn.Conv2d)]

        assert widths(paper_b.decoder3) == [256] * 3
        assert widths(paper_b.decoder2) == [128] * 3
        assert widths(paper_b.decoder1) == [64] * 3
        assert widths(paper_b.decoder0) == [64]
        assert len(paper_b.refine) == 7
        for block in paper_b.refine:
            assert block.shortcut.conv.kernel_size == (1, 1)
            assert [m.kernel_size for m in block.body.modules() if isinstance(m, nn.Conv2d)] == [
                (3, 3)
            ] * 2
        assert widths(paper_b.head) == [64, 32, 1]
        assert len(paper_b.aux_heads) == 5
        assert all(h.conv2.out_channels == 1 for h in paper_b.aux_heads)
        leaky = [m for m in paper_b.decoder3.modules() if isinstance(m, nn.LeakyReLU)]
        assert leaky and all(m.negative_slope == 0.2 for m in leaky)

    def test_without_aux_heads(self):
        b = BlurEstimator(weights=None, aux_heads=False, n_refine_blocks=1)
        assert not any(n.startswith("aux_heads") for n, _ in b.named_parameters())
        with torch.no_grad():
            out = b(torch.rand(1, 3, 20, 24))
        assert out.aux == [] and out.y.shape == (1, 1, 20, 24)

    def test_local_weights_file(self, tmp_path):
        reference = vgg19_features(None)
        path = tmp_path / "vgg19.pth"
        torch.save({f"features.{k}": v for k, v in reference.state_dict().items()}, path)
        b = BlurEstimator(weights=str(path), n_refine_blocks=1)
        assert torch.equal(b.encoder[34].weight, reference[34].weight)
        assert b.init_args["weights"] == str(path)

    def test_missing_weights_file_is_a_user_error(self, tmp_path):
        with pytest.raises(DMENetError, match="not found"):
            BlurEstimator(weights=str(tmp_path / "nope.pth"))

    def test_layer_list_document_matches_the_model(self, paper_b):
        """docs/blur_estimator_layers.md lists every conv/BN of B, in order, with its shape."""
        doc = (REPO / "docs" / "blur_estimator_layers.md").read_text()
        rows = re.findall(
            r"^\| (\d*) \| `([^`]+)` \| (conv \dx\d|BatchNorm) \| \(([\d, ]+)\)", doc, re.M
        )
        documented = [
            (name, tuple(int(x) for x in shape.split(",") if x.strip()))
            for _, name, _, shape in rows
        ]
        modules = dict(paper_b.named_modules())
        actual = {
            n: (tuple(m.weight.shape) if isinstance(m, nn.Conv2d) else (m.num_features,))
            for n, m in modules.items()
            if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))
        }
        assert sorted(n for n, _ in documented) == sorted(actual)
        for name, shape in documented:
            assert actual[name] == shape, name


class TestLightBlurEstimator:
    def test_lighter_than_the_paper_b(self, paper_b, light_b):
        n_light = sum(p.numel() for p in light_b.parameters())
        assert n_light < 0.6 * sum(p.numel() for p in paper_b.parameters())

    def test_missing_weights_file_is_a_user_error(self, tmp_path):
        with pytest.raises(DMENetError, match="not found"):
            LightBlurEstimator(weights=str(tmp_path / "nope.pth"))

    def test_local_weights_file(self, tmp_path):
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        path = tmp_path / "r18.pth"
        torch.save(net.state_dict(), path)
        b = LightBlurEstimator(weights=str(path))
        assert torch.equal(b.layer4[1].conv2.weight, net.layer4[1].conv2.weight)
