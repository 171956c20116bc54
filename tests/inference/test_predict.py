"""``dmenet predict --config configs/predict.yaml``: LightningCLI writes what infer writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from dmenet.checkpoint import load_predictor
from dmenet.cli import main as dmenet
from dmenet.data.io import read_image_tensor
from dmenet.data.photos import ImagePathsDataset, expand_paths
from dmenet.inference.writer import OUTPUT_SUFFIXES


@pytest.fixture(scope="module")
def tiny_lightning_ckpt(tmp_path_factory):
    """A Lightning checkpoint of DMENet whose B is the tiny stand-in (D, C, S off)."""
    import lightning as L

    from dmenet.lightning_model import DMENet
    from tests.inference.conftest import calibrate_batchnorm
    from tests.inference.tiny_b import TinyB

    torch.manual_seed(0)
    model = DMENet(blur_estimator=calibrate_batchnorm(TinyB()), domain_discriminator=False,
                   content_loss=False, sharpness_calibrator=False, vgg_weights=None)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu",
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(model)
    path = tmp_path_factory.mktemp("tinyckpt") / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_predict_config_writes_infer_outputs(repo_root, tiny_lightning_ckpt, photo_folder, tmp_path):
    out = tmp_path / "pred"
    parts = tmp_path / "parts.yaml"  # the model parts this checkpoint was trained with
    parts.write_text(yaml.safe_dump({"model": {
        "blur_estimator": {"class_path": "tests.inference.tiny_b.TinyB"},
        "domain_discriminator": False, "content_loss": False, "sharpness_calibrator": False,
    }}))
    rc = dmenet(["predict", "--config", str(parts), "--config", str(repo_root / "configs" / "predict.yaml"),
                 "--ckpt_path", str(tiny_lightning_ckpt),
                 f"--data.predict_paths=[{photo_folder / 'a.jpg'}, {photo_folder / 'grey16.png'}]",
                 f"--trainer.default_root_dir={tmp_path / 'root'}",
                 f"--trainer.callbacks.init_args.output_dir={out}",
                 "--trainer.accelerator=cpu"])
    assert rc == 0
    predictor = load_predictor(tiny_lightning_ckpt)
    for name, file in (("a", "a.jpg"), ("grey16", "grey16.png")):
        for suffix in OUTPUT_SUFFIXES.values():
            assert (out / f"{name}{suffix}").is_file()
        with torch.no_grad():
            image = read_image_tensor(photo_folder / file)[None]
            expected = predictor.sigma_px(predictor(image))[0, 0].numpy()
        got = np.load(out / f"{name}_sigma_px.npy")
        assert np.abs(got - expected).max() < 1e-4


def test_dataset_reads_files_folders_globs(photo_folder, tmp_path):
    sub = photo_folder / "sub"
    sub.mkdir()
    (sub / "a.png").write_bytes((photo_folder / "b.png").read_bytes())
    names = [n for _, n in expand_paths([str(photo_folder)], recursive=True)]
    assert "sub/a" in names and "a" in names  # same stem, different folders: both kept
    items = expand_paths([str(photo_folder / "*.png"), str(photo_folder / "b.png")])
    assert [n for _, n in items] == ["b", "grey16", "rgba"]  # duplicates dropped
    dataset = ImagePathsDataset([str(photo_folder)])
    item = dataset[[n for _, n in dataset.items].index("grey16")]
    assert item["image"].shape == (3, 40, 56) and item["set"] == "predict"
    assert torch.equal(item["image"][0], item["image"][1])  # grey -> 3 equal channels
    from dmenet.errors import DataError

    with pytest.raises(DataError, match="no such file"):
        expand_paths([str(tmp_path / "nope")])
    with pytest.raises(DataError, match="matches no image"):
        expand_paths([str(tmp_path / "*.jpg")])


def test_predict_step_tiles_large_photos_like_infer():
    """DMENet.predict_step (dmenet predict) tiles big photos; equal to whole-photo inference."""
    from dmenet.lightning_model import DMENet
    from tests.inference.tiny_b import TinyB

    model = DMENet(blur_estimator=TinyB(), domain_discriminator=False, content_loss=False,
                   sharpness_calibrator=False, predict_tile_px=96,
                   predict_overlap_px=48).eval()  # forces 2 x 3 tiles
    image = torch.rand(1, 3, 150, 170)
    with torch.no_grad():
        whole = model(image).y
        out = model.predict_step({"image": image, "name": ["x"]}, 0)
    assert out["y"].shape == (1, 1, 150, 170)
    assert torch.allclose(out["y"], whole, atol=1e-3)


def test_predict_tiles_are_declared_and_checked():
    from dmenet.errors import ConfigError
    from dmenet.lightning_model import DMENet
    from tests.inference.tiny_b import TinyB

    with pytest.raises(ConfigError, match="predict_overlap_px"):
        DMENet(blur_estimator=TinyB(), domain_discriminator=False, content_loss=False,
               sharpness_calibrator=False, predict_tile_px=64, predict_overlap_px=64)
