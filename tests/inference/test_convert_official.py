"""``dmenet convert-official`` on files in the published layout, and fine-tuning from them.

The layout is ../shared/data/official/dmenet_bdcs_npz_layout.json (listed from the real
TensorFlow 1.15 + TensorLayer 1.11.1 graph) when present, and ``reference_layout()`` (written in
tests/inference/official_npz.py from the reference's model.py, not from the converter) always;
the two are checked to be the same. The converted model is compared with a re-implementation of
the reference's forward pass on the same arrays, and with a stored output (regression).
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import json
import warnings

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dmenet.checkpoint import load_checkpoint, load_predictor
from dmenet.cli import main as dmenet
from dmenet.errors import DataError
from dmenet.official import build_converted, official_shapes, official_to_ours
from tests.inference.official_npz import (
    DEC,
    REFERENCE_OUTPUT,
    S,
    calibrated_arrays,
    converted_outputs,
    reference_b,
    reference_d,
    reference_layout,
    reference_s,
    regression_input,
    to_old_naming,
)

N_ARRAYS = {"blur_estimator": 249, "sharpness_calibrator": 47, "domain_discriminator": 17, "unused": 8}


def _layout_file(shared_data) -> dict[str, tuple[int, ...]]:
    data = json.loads((shared_data / "official" / "dmenet_bdcs_npz_layout.json").read_text())
    return {name: tuple(shape) for name, shape in data["arrays"]}


@pytest.fixture(scope="module")
def arrays(request) -> dict[str, np.ndarray]:
    """Calibrated random arrays of the layout file's names and shapes (or of reference_layout()
    without ../shared: the same arrays, since the layouts are equal and filled in name order)."""
    try:
        layout = _layout_file(request.getfixturevalue("shared_data"))
    except pytest.skip.Exception:
        layout = reference_layout()
    return calibrated_arrays(layout)


@pytest.fixture(scope="module")
def converted(arrays, tmp_path_factory):
    """(npz path, converted checkpoint path, stderr of the command)."""
    folder = tmp_path_factory.mktemp("official")
    npz, out = folder / "DMENet_BDCS.npz", folder / "official.ckpt"
    np.savez(npz, **arrays)  # what tl.files.save_npz_dict writes
    err = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the published layout converts with no warning
        with contextlib.redirect_stderr(err):
            assert dmenet(["convert-official", str(npz), "--out", str(out)]) == 0
    return npz, out, err.getvalue()


# ------------------------------------------------------------------ the layout
def test_layout_file_is_the_converters_and_the_tests(shared_data):
    published = _layout_file(shared_data)
    assert len(published) == 321
    ours = {name: shape for part in official_shapes().values() for name, shape in part.items()}
    assert ours == published  # every name and shape, no more, no less
    assert reference_layout() == published
    for part, n in N_ARRAYS.items():
        assert len(official_shapes()[part]) == n
    assert not any("gamma" in name or "W_conv2d" in name for name in published)


def test_every_array_is_used_exactly_once(arrays):
    states, used = official_to_ours(arrays)
    assert {part: len(names) for part, names in used.items()} == N_ARRAYS
    assert sorted(n for names in used.values() for n in names) == sorted(arrays)
    parts = build_converted(states)  # strict: every tensor of our parts is set
    assert set(parts) == {"blur_estimator", "sharpness_calibrator", "domain_discriminator"}


def test_old_tensorlayer_naming_converts_the_same(arrays):
    new, _ = official_to_ours(arrays)
    old_arrays = to_old_naming(arrays)
    assert sum(k.endswith("/W_conv2d:0") for k in old_arrays) == 16 + 1 + 1 + 44 + 10 + 5  # convs
    old, used = official_to_ours(old_arrays)
    assert {part: len(names) for part, names in used.items()} == N_ARRAYS
    for part in new:
        assert new[part].keys() == old[part].keys()
        assert all(torch.equal(new[part][k], old[part][k]) for k in new[part]), part


@pytest.mark.parametrize("change,message", [
    ("drop", r"1 arrays of blur_estimator are missing: main_net/defocus_net/decoder/u2/c2/kernel:0"),
    ("drop_s", r"arrays of sharpness_calibrator are missing: main_net/binary_net/l2/b1/beta:0"),
    ("reshape", r"misshaped arrays: main_net/defocus_net/decoder/u2/c2/kernel:0 \(3, 3, 128, 10\) "
                r"\(expected \(3, 3, 128, 128\)\)"),
    ("unknown", r"1 arrays are not part of the reference's model: main_net/defocus_net/decoder/u9/c1"),
    ("gamma", r"not part of the reference's model: discriminator/feature/h0/b1/gamma:0"),
    ("twice", r"both namings: main_net/defocus_net/decoder/u2/c2/"),
])
def test_bad_arrays_are_named(change, message):
    # shapes only matter here: zero arrays of the generated layout
    arrays = {name: np.zeros(shape, np.float32) for name, shape in reference_layout().items()}
    key = f"{DEC}u2/c2/kernel:0"
    if change == "drop":
        del arrays[key]
    elif change == "drop_s":
        del arrays[f"{S}l2/b1/beta:0"]
    elif change == "reshape":
        arrays[key] = arrays[key][..., :10]
    elif change == "unknown":
        arrays[f"{DEC}u9/c1/kernel:0"] = np.zeros((3, 3, 1, 1), np.float32)
    elif change == "gamma":
        arrays["discriminator/feature/h0/b1/gamma:0"] = np.ones(64, np.float32)
    else:
        arrays[f"{DEC}u2/c2/W_conv2d:0"] = arrays[key]
    with pytest.raises(DataError, match=message):
        official_to_ours(arrays)


def test_a_file_without_s_and_d_converts_b():
    arrays = {name: np.zeros(shape, np.float32) for name, shape in reference_layout().items()
              if name.startswith("main_net/defocus_net/")}
    states, used = official_to_ours(arrays)
    assert set(states) == {"blur_estimator"} and len(used["blur_estimator"]) == 249


# ------------------------------------------------------------------ the converted model
def test_converted_file_matches_the_reference_forward_pass(arrays, converted):
    _, out, err = converted
    assert "313 of 321 arrays converted (blur_estimator 249, sharpness_calibrator 47, " \
           "domain_discriminator 17)" in err
    assert "skipped 8 arrays of the encoder's classification head" in err
    ckpt = load_checkpoint(out)  # weights_only=True
    assert ckpt.kind == "weights" and ckpt.label_space == "released"
    assert ckpt.record["converted"]["sharpness_calibrator"] == {"arrays": 47, "scope": "main_net/binary_net/"}
    assert len(ckpt.record["converted"]["skipped"]["arrays"]) == 8
    assert ckpt.parts["blur_estimator"]["init_args"]["padding_mode"] == "replicate"

    image = regression_input()
    ref_y, ref_aux, ref_feature, ref_first = reference_b(arrays, image)
    assert float(ref_y.std()) > 1e-2  # a meaningful comparison
    exact = load_predictor(out, fast=False)
    b = exact.blur_estimator
    s, d = ckpt.build("sharpness_calibrator").eval(), ckpt.build("domain_discriminator").eval()
    with torch.no_grad():
        first = b.encoder[:2](b.normalize(image))  # conv1_1 + ReLU on our normalised input
        assert torch.allclose(first.double(), ref_first, atol=1e-4 * float(ref_first.abs().max()))
        estimate = b(image)
        # float32 through ~50 random layers: measured 7e-5 from the float64 reference
        assert torch.allclose(estimate.y.double(), ref_y, atol=2e-4)
        for ours, ref in zip(estimate.aux, ref_aux):
            assert ours.shape == ref.shape and torch.allclose(ours.double(), ref, atol=2e-4)
        assert torch.allclose(load_predictor(out)(image).double(), ref_y, atol=2e-4)  # as infer runs it
        ref_s = reference_s(arrays, ref_y)
        assert float(ref_s.std()) > 1e-2
        assert torch.allclose(s(ref_y.float()).double(), ref_s, atol=1e-4 * float(ref_s.abs().max()))
        ref_d = reference_d(arrays, ref_feature)
        assert ref_d.shape == (1, 1, 1, 2)  # ceil(32 / 32) x ceil(48 / 32)
        assert torch.allclose(d(ref_feature.float()).double(), ref_d, rtol=1e-4, atol=1e-4)
    # sigma in pixels through the released label space: max(0, (15 y - 1) / 2)
    assert torch.allclose(exact.sigma_px(ref_y.float()), ((15 * ref_y.float() - 1) / 2).clamp(min=0))


def test_converted_output_matches_the_stored_reference(converted):
    """Regression: our converted model on a fixed input, float64, to 1e-5."""
    stored = dict(np.load(REFERENCE_OUTPUT))
    ckpt = load_checkpoint(converted[1])
    parts = {name: ckpt.build(name) for name in ckpt.parts}
    now = converted_outputs(parts)
    assert now.keys() == stored.keys()
    assert np.array_equal(now["image"], stored["image"])
    for key in now:
        assert now[key].shape == stored[key].shape, key
        assert np.abs(now[key] - stored[key]).max() < 1e-5, key


def test_converted_weights_load_into_the_default_model_strictly(converted):
    from dmenet.lightning_model import DMENet

    ckpt = load_checkpoint(converted[1])
    model = DMENet(vgg_weights=None, content_loss=False)
    for name in ("blur_estimator", "domain_discriminator", "sharpness_calibrator"):
        getattr(model, name).load_state_dict(ckpt.part_state(name), strict=True)
        assert ckpt.parts[name] == model.hparams[name]  # the default parts, described alike


def test_refuses_to_overwrite(converted, tmp_path, capsys):
    out = tmp_path / "x.ckpt"
    out.write_bytes(b"keep")
    assert dmenet(["convert-official", str(converted[0]), "--out", str(out)]) == 2
    assert out.read_bytes() == b"keep"
    assert "--overwrite" in capsys.readouterr().err


def test_pickled_npz_is_refused(tmp_path, capsys):
    path = tmp_path / "pickled.npz"
    np.savez(path, params=np.array([{"a": 1}], dtype=object))
    assert dmenet(["convert-official", str(path), "--out", str(tmp_path / "o.ckpt")]) == 2
    assert "pickled" in capsys.readouterr().err


# ------------------------------------------------------------------ fine-tuning from it
FINE_TUNE_CONFIG = """
seed_everything: 0
trainer:
  accelerator: cpu
  max_epochs: 1
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
  limit_val_batches: 0
model:
  vgg_weights: null
  log_images_every_n_steps: 0
data:
  class_path: tests.helpers.tiny_data.TinyDataModule
  init_args:
    n_batches: 1
"""


@pytest.mark.slow
@pytest.mark.parametrize("ablation", ["bd", "bdcs"])
def test_fit_init_from_a_converted_file(converted, tmp_path, repo_root, ablation):
    """``dmenet fit --model.init_from``: B (and D, S) start from the converted weights, the run
    trains in their label space, and its first L_B is the converted model's L_B on that batch."""
    from lightning.pytorch.cli import LightningCLI

    from dmenet.lightning_model import DMENet
    from tests.helpers.tiny_data import TinyDataModule

    base = tmp_path / "base.yaml"
    base.write_text(FINE_TUNE_CONFIG)
    ckpt = load_checkpoint(converted[1])
    # in a copied contextvars context, as dmenet.cli runs it (jsonargparse keeps the parser, and
    # through it the run's model, in a context variable: ~0.5 GB for the rest of the session)
    cli = contextvars.copy_context().run(
        LightningCLI, DMENet, L.LightningDataModule, subclass_mode_data=True, save_config_callback=None,
        args=["fit", "--config", str(base), "--config", str(repo_root / f"configs/ablation/{ablation}.yaml"),
              "--trainer.default_root_dir", str(tmp_path), "--model.init_from", str(converted[1])],
    )
    model = cli.model
    assert model.hparams.label_space == "released"  # the weights' label space
    assert "init_from" not in model.hparams  # a run-time option: the checkpoint has the weights
    assert (model.sharpness_calibrator is not None) == (ablation == "bdcs")
    assert model.domain_discriminator is not None
    assert cli.trainer.global_step == 2  # one D step, one G step

    # the first step's L_B: the converted B in train mode on the same batch, against the label
    # in the released space, y = (2 sigma + 1) / 15 with sigma = 7 y_ours
    batch = next(iter(TinyDataModule(n_batches=1).train_dataloader()))["synthetic"]
    b = ckpt.build("blur_estimator").train()
    with torch.no_grad():
        y = b(batch["image"]).y
    expected = F.mse_loss(y, (2 * 7 * batch["label"] + 1) / 15)
    logged = cli.trainer.callback_metrics["train/L_B"]
    assert torch.allclose(logged, expected, rtol=1e-5, atol=1e-7), (float(logged), float(expected))
    # and training moved the weights away from the converted ones
    trained = model.blur_estimator.state_dict()
    assert not torch.equal(trained["decoder3.0.conv.weight"], ckpt.part_state("blur_estimator")["decoder3.0.conv.weight"])
