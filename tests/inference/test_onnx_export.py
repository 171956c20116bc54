"""``dmenet export``: ONNX with dynamic batch, height and width, equal to PyTorch."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from dmenet.checkpoint import load_predictor
from dmenet.cli import main as dmenet


def _compare(onnx_path, predictor, shapes):
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["y", "sigma_px"]
    for shape in shapes:
        image = torch.rand(*shape)
        with torch.no_grad():
            y = predictor(image)
            sigma = predictor.sigma_px(y)
        y_onnx, sigma_onnx = session.run(None, {"image": image.numpy()})
        assert y_onnx.shape == (shape[0], 1, *shape[2:])
        assert float(y.std()) > 1e-3
        assert np.abs(y_onnx - y.numpy()).max() < 1e-4
        assert np.abs(sigma_onnx - sigma.numpy()).max() < 1e-3


@pytest.fixture(params=["zeros", "replicate"])
def ckpt(request, tiny_ckpt, tmp_path):
    """Zero padding (our training) and edge replication (converted official weights)."""
    if request.param == "zeros":
        return tiny_ckpt
    from dmenet.checkpoint import save_inference_checkpoint
    from tests.inference.tiny_b import TinyB

    model = TinyB(padding_mode="replicate")
    model.load_state_dict(load_predictor(tiny_ckpt, fast=False).blur_estimator.state_dict())
    return save_inference_checkpoint(tmp_path / "replicate.ckpt", model, label_space="released")


def test_export_has_dynamic_size_and_matches_pytorch(ckpt, tmp_path, capsys):
    tiny_ckpt = ckpt
    out = tmp_path / "model.onnx"
    assert dmenet(["export", "--ckpt", str(tiny_ckpt), "--out", str(out)]) == 0
    onnx.checker.check_model(onnx.load(str(out)))
    graph = onnx.load(str(out)).graph
    for value in [*graph.input, *graph.output]:  # N, C, H, W with named dynamic axes
        dims = value.type.tensor_type.shape.dim
        assert [d.dim_param or d.dim_value for d in dims] == [
            "batch", 3 if value.name == "image" else 1, "height", "width"]
    predictor = load_predictor(tiny_ckpt)
    assert predictor.label_space == "released"
    # sizes that are and are not multiples of 16, and a batch of 2
    _compare(out, predictor, [(1, 3, 48, 64), (2, 3, 37, 90)])
    capsys.readouterr()
    assert dmenet(["export", "--ckpt", str(tiny_ckpt), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
