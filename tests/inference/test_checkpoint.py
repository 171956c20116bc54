"""Loading B from checkpoints: Lightning and inference formats, weights_only, label spaces."""

from __future__ import annotations

import pickle

import pytest
import torch

from dmenet.checkpoint import (
    DefocusPredictor,
    load_checkpoint,
    load_predictor,
    save_inference_checkpoint,
)
from dmenet.errors import DMENetError
from dmenet.labels import to_sigma_px


class NotAWeight:
    """A Python object in a checkpoint: loading it needs full unpickling."""

    def __init__(self) -> None:
        self.value = 3


def test_lightning_checkpoint_gives_the_same_b(lightning_ckpt, random_b):
    ckpt = load_checkpoint(lightning_ckpt)
    assert ckpt.kind == "lightning"
    assert ckpt.label_space == "ours"
    assert ckpt.parts["blur_estimator"] == {
        "class_path": "dmenet.modules.blur_estimator.BlurEstimator",
        "init_args": {"weights": None, "aux_heads": True, "n_refine_blocks": 7,
                      "padding_mode": "replicate"},
    }
    predictor = load_predictor(lightning_ckpt, fast=False)
    image = torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        expected = random_b(image).y
        assert torch.equal(predictor(image), expected)
        fast = load_predictor(lightning_ckpt)  # aux heads dropped, BN folded
        assert fast.blur_estimator.aux_heads is None
        assert torch.allclose(fast(image), expected, atol=1e-4)
    sigma = predictor.sigma_px(expected)
    assert torch.allclose(sigma, to_sigma_px(expected, "ours"))


def test_inference_checkpoint_round_trip_keeps_label_space(tmp_path):
    from tests.inference.tiny_b import TinyB

    model = TinyB().eval()
    path = save_inference_checkpoint(tmp_path / "b.ckpt", model, label_space="released",
                                     source="test")
    data = torch.load(path, weights_only=True)  # plain data only
    assert data["label_space"] == "released"
    predictor = load_predictor(path, fast=False)
    assert predictor.label_space == "released"
    image = torch.rand(1, 3, 20, 30)
    with torch.no_grad():
        assert torch.equal(predictor(image), model(image).y)
    y = torch.tensor([0.0, 1.0 / 15.0, 0.5, 1.0])
    assert torch.allclose(predictor.sigma_px(y), torch.tensor([0.0, 0.0, 3.25, 7.0]))


def test_checkpoint_with_python_objects_needs_trust(random_b, tmp_path):
    from dmenet.modules.spec import describe

    state = {f"blur_estimator.{k}": v for k, v in random_b.state_dict().items()}
    path = tmp_path / "pickled.ckpt"
    hparams = {"thing": NotAWeight(), "blur_estimator": describe(random_b)}
    torch.save({"state_dict": state, "hyper_parameters": hparams}, path)
    with pytest.raises(DMENetError, match="trust-checkpoint"):
        load_checkpoint(path)
    assert load_checkpoint(path, trust=True).label_space == "ours"


@pytest.mark.parametrize("content", [b"", b"garbage bytes", pickle.dumps([1, 2, 3])])
def test_unreadable_checkpoints_are_named(tmp_path, content):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(content)
    with pytest.raises(DMENetError, match="bad.ckpt"):
        load_checkpoint(path)


def test_missing_and_foreign_checkpoints(tmp_path):
    with pytest.raises(DMENetError, match="not found"):
        load_checkpoint(tmp_path / "nope.ckpt")
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"net.weight": torch.zeros(1)}}, path)
    with pytest.raises(DMENetError, match="blur_estimator"):
        load_checkpoint(path)


def test_weights_that_do_not_fit_are_refused(tmp_path):
    from tests.inference.tiny_b import TinyB

    state = {f"blur_estimator.{k}": v for k, v in TinyB().state_dict().items()}
    del state["blur_estimator.head.0.bias"]
    path = tmp_path / "misfit.ckpt"
    spec = {"class_path": "tests.inference.tiny_b.TinyB", "init_args": {"width": 8}}
    torch.save({"state_dict": state, "hyper_parameters": {"blur_estimator": spec}}, path)
    with pytest.raises(DMENetError, match=r"1 missing: head\.0\.bias"):
        load_predictor(path)
    state["blur_estimator.head.0.bias"] = torch.zeros(2)
    torch.save({"state_dict": state, "hyper_parameters": {"blur_estimator": spec}}, path)
    with pytest.raises(DMENetError, match=r"misshaped: head\.0\.bias \(2,\) \(expected \(1,\)\)"):
        load_predictor(path)


def test_weights_checkpoint_with_d_and_s_round_trip(tmp_path):
    from dmenet.checkpoint import save_checkpoint
    from dmenet.modules import DomainDiscriminator, SharpnessCalibrator
    from tests.inference.tiny_b import TinyB

    torch.manual_seed(0)
    parts = {"blur_estimator": TinyB(width=4, padding_mode="replicate"),
             "domain_discriminator": DomainDiscriminator(in_channels=4, channels=(8,)),
             "sharpness_calibrator": SharpnessCalibrator(channels=(4,))}
    path = save_checkpoint(tmp_path / "bds.ckpt", parts, label_space="released", source="x.npz",
                           converted={"blur_estimator": {"arrays": 3}})
    ckpt = load_checkpoint(path)
    assert ckpt.kind == "weights" and ckpt.label_space == "released"
    assert ckpt.record["converted"] == {"blur_estimator": {"arrays": 3}}
    assert ckpt.parts["domain_discriminator"]["init_args"] == {"in_channels": 4, "channels": [8]}
    for name, part in parts.items():
        rebuilt = ckpt.build(name)  # from the recorded description alone, weights assigned
        assert type(rebuilt) is type(part) and rebuilt.init_args == part.init_args
        for key, value in part.state_dict().items():
            assert torch.equal(rebuilt.state_dict()[key], value), key
    x = torch.rand(1, 3, 20, 30)
    with torch.no_grad():
        assert torch.equal(ckpt.build("blur_estimator").eval()(x).y, parts["blur_estimator"].eval()(x).y)
    with pytest.raises(DMENetError, match="no content_loss"):
        ckpt.build("content_loss")


def test_files_of_the_first_format_are_refused(tmp_path):
    path = tmp_path / "v1.ckpt"
    torch.save({"dmenet_inference_checkpoint": 1, "state_dict": {}}, path)
    with pytest.raises(DMENetError, match="convert-official"):
        load_checkpoint(path)


def test_unknown_label_space_is_refused(random_b):
    with pytest.raises(DMENetError, match="label space"):
        DefocusPredictor(random_b, label_space="mine")
