import numpy as np
import pytest
import torch

from dmenet import labels


def test_ours_roundtrip():
    sigma = torch.tensor([0.0, 1.0, 3.5, 7.0])
    y = labels.from_sigma_px(sigma)
    assert torch.allclose(y, sigma / 7.0)
    assert torch.allclose(labels.to_sigma_px(y), sigma)
    assert labels.SIGMA_MAX_PX == labels.C_MAX_PX / 4 == 7.0


def test_released_space_matches_the_official_checkpoint():
    y = np.array([0.0, 1 / 15, 0.5, 1.0])
    sigma = labels.to_sigma_px(y, "released")
    np.testing.assert_allclose(sigma, np.maximum(0, (15 * y - 1) / 2))
    # round trip above the clipping point
    np.testing.assert_allclose(labels.from_sigma_px(sigma[1:], "released"), y[1:])


def test_png_values():
    # released dataset: 10 * x with x max 15 -> y = x / 15
    assert labels.stored_png_to_y(150.0, "released") == pytest.approx(1.0)
    # generator: 10 * sigma, y = sigma / 7
    assert labels.stored_png_to_y(70.0, "generator") == pytest.approx(1.0)
    assert labels.stored_png_to_sigma_px(35.0, "ours") == pytest.approx(3.5)
    assert labels.stored_png_to_sigma_px(31.0, "released") == pytest.approx(1.05)


def test_unknown_space():
    with pytest.raises(ValueError, match="released"):
        labels.to_sigma_px(0.5, "nope")


def test_every_label_space_option_is_checked_once_with_one_error_type(tmp_path):
    from dmenet.checkpoint import DefocusPredictor
    from dmenet.data.syndof_files import ReleasedSyndof
    from dmenet.errors import ConfigError
    from dmenet.evaluation.evaluator import Evaluator
    from dmenet.lightning_model import DMENet

    assert labels.check_label_space("released") == "released"
    for build in (
        lambda: labels.to_sigma_px(torch.zeros(1), "tf"),
        lambda: Evaluator("cuhk", label_space="tf", overwrite=True),
        lambda: DMENet(vgg_weights=None, label_space="tf"),
        lambda: ReleasedSyndof(tmp_path, "tf"),
        lambda: DefocusPredictor(torch.nn.Identity(), label_space="tf"),
    ):
        with pytest.raises(ConfigError, match="'tf': choose one of 'ours' .*'released' .*'generator'"):
            build()


def test_training_labels_are_converted_into_the_models_space():
    # data labels are ours (y = sigma / 7): sigma 0, 1, 3.5, 7 px
    label = torch.tensor([0.0, 1 / 7, 0.5, 1.0])
    assert labels.DATA_LABEL_SPACE == "ours"
    assert labels.training_label(label, "ours") is label  # nothing to do
    # released: y = (2 sigma + 1) / 15 (the inverse of sigma = max(0, (15 y - 1) / 2))
    released = labels.training_label(label, "released")
    assert torch.allclose(released, torch.tensor([1 / 15, 3 / 15, 8 / 15, 1.0]))
    assert torch.allclose(labels.to_sigma_px(released, "released"), label * 7)
    assert torch.allclose(labels.convert_y(released, "released", "ours"), label)
    assert torch.allclose(labels.training_label(label, "generator"), label)  # sigma / 7 too
    with pytest.raises(ValueError, match="label space"):
        labels.convert_y(label, "ours", "mine")
