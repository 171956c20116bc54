"""DMENet LightningModule: the two alternating updates, the ablation configs, the optimisers."""

from __future__ import annotations

import contextvars
import copy
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.cli import LightningCLI

from dmenet.lightning_model import DMENet
from dmenet.modules import BlurEstimator, LightBlurEstimator
from tests.helpers.tiny_data import TinyDataModule, cpu_trainer

REPO = Path(__file__).resolve().parents[1]
ABLATIONS = REPO / "configs" / "ablation"


_trainer = cpu_trainer


@pytest.fixture(scope="module")
def bdcs_template() -> DMENet:
    """B, D, C and S with random weights, built once (the light B: which parameters each step
    changes does not depend on which B it is; the ablation configs below train the VGG19 B);
    tests train deep copies."""
    return DMENet(blur_estimator=LightBlurEstimator(weights=None), vgg_weights=None,
                  log_images_every_n_steps=0)


def _names(model: torch.nn.Module, prefix: str) -> set[str]:
    return {f"{prefix}.{n}" for n, _ in model.named_parameters()}


class _StepRecorder(L.Callback):
    """Snapshots every parameter before each optimiser step and at the end of each batch."""

    def __init__(self) -> None:
        self.snapshots: list[dict[str, torch.Tensor]] = []
        self.optimizer_params: list[set[int]] = []

    def _snap(self, pl_module) -> None:
        self.snapshots.append({n: p.detach().clone() for n, p in pl_module.named_parameters()})

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self._snap(pl_module)
        self.optimizer_params.append({id(p) for g in optimizer.param_groups for p in g["params"]})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._snap(pl_module)


def _changed(before: dict, after: dict) -> set[str]:
    return {n for n in before if not torch.equal(before[n], after[n])}


def test_d_step_changes_only_d_and_g_step_only_b_and_s(bdcs_template, tmp_path):
    model = copy.deepcopy(bdcs_template)
    rec = _StepRecorder()
    trainer = _trainer(tmp_path, max_steps=2, callbacks=[rec])
    trainer.fit(model, TinyDataModule(size=64, n_batches=1))
    assert trainer.global_step == 2  # one D step + one G step for the batch
    before_d, before_g, after = rec.snapshots
    d_names = _names(model.domain_discriminator, "domain_discriminator")
    b_names = _names(model.blur_estimator, "blur_estimator")
    s_names = _names(model.sharpness_calibrator, "sharpness_calibrator")
    c_names = _names(model.content_loss, "content_loss")
    # D step first, on D's parameters only
    changed_d = _changed(before_d, before_g)
    assert changed_d and changed_d <= d_names
    assert rec.optimizer_params[0] == {id(p) for p in model.domain_discriminator.parameters()}
    # then the G step: B and S, never C or D
    changed_g = _changed(before_g, after)
    assert changed_g <= b_names | s_names
    assert changed_g & b_names and changed_g & s_names
    assert not changed_g & (c_names | d_names)
    assert not _changed(before_d, after) & c_names
    # the trained and the frozen parts keep their requires_grad flags after the toggles
    assert all(p.requires_grad for p in model.blur_estimator.parameters())
    assert not any(p.requires_grad for p in model.content_loss.parameters())


def test_optimisers_hold_the_right_parameters(bdcs_template):
    model = copy.deepcopy(bdcs_template)
    (opt_g, opt_d), scheds = model.configure_optimizers()
    ids = lambda opt: {id(p) for g in opt.param_groups for p in g["params"]}  # noqa: E731
    assert ids(opt_g) == {id(p) for p in model.blur_estimator.parameters()} | {
        id(p) for p in model.sharpness_calibrator.parameters()
    }
    assert ids(opt_d) == {id(p) for p in model.domain_discriminator.parameters()}
    for opt in (opt_g, opt_d):
        assert isinstance(opt, torch.optim.Adam)
        assert opt.defaults["lr"] == 1e-4 and opt.defaults["betas"] == (0.9, 0.999)
    assert [s.step_size for s in scheds] == [20, 20] and [s.gamma for s in scheds] == [0.8, 0.8]


def test_paper_defaults():
    import inspect

    sig = inspect.signature(DMENet)
    defaults = {k: v.default for k, v in sig.parameters.items()}
    assert defaults["lambda_adv"] == 1e-3 and defaults["lambda_d"] == 1.0
    assert defaults["lambda_c"] == 1e-4 and defaults["lambda_s"] == 2e-2
    assert defaults["lambda_aux"] == 1.0 and defaults["lr"] == 1e-4 and defaults["beta1"] == 0.9
    assert defaults["lr_decay_factor"] == 0.8 and defaults["lr_decay_every_epochs"] == 20


def test_lr_decays_by_hand_at_epoch_ends(tmp_path):
    model = DMENet(
        blur_estimator=LightBlurEstimator(weights=None),
        content_loss=False,
        sharpness_calibrator=False,
        lr_decay_every_epochs=1,
        log_images_every_n_steps=0,
    )
    trainer = _trainer(tmp_path, max_epochs=2)
    trainer.fit(model, TinyDataModule(size=64, n_batches=1))
    assert trainer.global_step == 4
    for opt in trainer.optimizers:
        assert opt.param_groups[0]["lr"] == pytest.approx(1e-4 * 0.8**2)


def test_pretraining_trains_b_alone_first(tmp_path):
    model = DMENet(
        blur_estimator=LightBlurEstimator(weights=None),
        content_loss=False,
        pretrain_b_steps=1,
        log_images_every_n_steps=0,
    )
    rec = _StepRecorder()
    trainer = _trainer(tmp_path, callbacks=[rec])
    trainer.fit(model, TinyDataModule(size=64, n_batches=2))
    # batch 1: G step only (B pre-training), batch 2: D step + G step
    assert trainer.global_step == 3 and int(model.train_iteration) == 2
    d_names = _names(model.domain_discriminator, "domain_discriminator")
    s_names = _names(model.sharpness_calibrator, "sharpness_calibrator")
    first_batch = _changed(rec.snapshots[0], rec.snapshots[1])
    assert first_batch and not first_batch & (d_names | s_names)  # L_B (+ L_aux) only
    assert _changed(rec.snapshots[2], rec.snapshots[3]) <= d_names  # then D trains


def test_gradient_clipping_after_unscaling(tmp_path, monkeypatch):
    norms: list[float] = []
    original = DMENet.clip_gradients

    def spy(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        original(self, optimizer, gradient_clip_val, gradient_clip_algorithm)
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norms.append(
            float(
                torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
            )
        )

    monkeypatch.setattr(DMENet, "clip_gradients", spy)
    model = DMENet(
        blur_estimator=LightBlurEstimator(weights=None),
        content_loss=False,
        gradient_clip_norm=1e-3,
        log_images_every_n_steps=0,
    )
    trainer = _trainer(tmp_path, max_steps=2)
    trainer.fit(model, TinyDataModule(size=64, n_batches=1))
    assert len(norms) == 2  # once per optimiser step (D, then G)
    assert all(n <= 1e-3 * (1 + 1e-4) for n in norms)


def test_training_pictures_are_written(tmp_path):
    model = DMENet(
        blur_estimator=LightBlurEstimator(weights=None),
        domain_discriminator=False,
        content_loss=False,
        sharpness_calibrator=False,
        log_images_every_n_steps=1,
    )
    trainer = _trainer(tmp_path)
    trainer.fit(model, TinyDataModule(size=64, n_batches=2))
    pictures = sorted((tmp_path / "train_images").glob("*.png"))
    assert [p.name for p in pictures] == ["iter_0000001.png", "iter_0000002.png"]
    from PIL import Image

    # photo | label | prediction | error tiles, upscaled 4x to 256 px (+ 2 px gaps), a 64 px
    # colour bar, under a 22 px title bar (dmenet.visualize.defocus_panel)
    assert Image.open(pictures[0]).size == (4 * (4 * 64 + 2) + 64, 22 + 4 * 64)


def test_predict_step_returns_y_sigma_and_names(bdcs_template):
    model = copy.deepcopy(bdcs_template).eval()
    batch = next(iter(TinyDataModule(eval_height=35, eval_width=41).predict_dataloader()))
    with torch.no_grad():
        out = model.predict_step(batch, 0)
    assert out["y"].shape == (1, 1, 35, 41)
    assert torch.allclose(out["sigma_px"], out["y"] * 7.0)
    assert out["name"] == ["photos_000"]


def test_streams_may_be_absent(tmp_path):
    """Only the synthetic stream: L_B and L_aux only, D and S are skipped (nothing to compare)."""
    model = DMENet(
        blur_estimator=LightBlurEstimator(weights=None),
        content_loss=False,
        log_images_every_n_steps=0,
    )
    trainer = _trainer(tmp_path)
    trainer.fit(model, TinyDataModule(size=64, n_batches=1, streams=("synthetic",)))
    assert trainer.global_step == 1
    assert set(k for k in trainer.callback_metrics if k.startswith("train/")) == {
        "train/L_B",
        "train/L_aux",
        "train/L_g",
    }


# ------------------------------------------------------------------------------ ablation configs

BASE_CONFIG = """
seed_everything: 0
trainer:
  accelerator: cpu
  max_epochs: 1
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  enable_checkpointing: false
  limit_val_batches: 0
model:
  vgg_weights: null
  log_images_every_n_steps: 0
data:
  class_path: tests.helpers.tiny_data.TinyDataModule
  init_args:
    n_batches: 2
"""

# ablation -> (D, C, S, aux, logged loss terms)
EXPECTED = {
    "b": (False, False, False, True, {"L_B", "L_aux", "L_g"}),
    "bd": (True, False, False, True, {"L_B", "L_aux", "L_adv", "L_g", "L_D", "L_d"}),
    "bdc": (True, True, False, True, {"L_B", "L_aux", "L_C", "L_adv", "L_g", "L_D", "L_d"}),
    "bdcs": (True, True, True, True, {"L_B", "L_aux", "L_C", "L_S", "L_adv", "L_g", "L_D", "L_d"}),
    "bdcs_noaux": (True, True, True, False, {"L_B", "L_C", "L_S", "L_adv", "L_g", "L_D", "L_d"}),
}


@pytest.fixture()
def base_config(tmp_path) -> Path:
    path = tmp_path / "base.yaml"
    path.write_text(BASE_CONFIG)
    return path


def run_cli(args: list[str]) -> LightningCLI:
    # in a copied contextvars context, as dmenet.cli runs it: jsonargparse would otherwise keep
    # every run's model alive for the rest of the session (about 450 MB each)
    return contextvars.copy_context().run(
        LightningCLI, DMENet, L.LightningDataModule, subclass_mode_data=True, args=args,
        save_config_callback=None,
    )


@pytest.mark.slow
@pytest.mark.parametrize("ablation", sorted(EXPECTED))
def test_every_ablation_config_trains_two_steps(ablation, base_config, tmp_path):
    cli = run_cli(
        [
            "fit",
            "--config",
            str(base_config),
            "--config",
            str(ABLATIONS / f"{ablation}.yaml"),
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    model, trainer = cli.model, cli.trainer
    has_d, has_c, has_s, has_aux, terms = EXPECTED[ablation]
    assert (model.domain_discriminator is not None) == has_d
    assert (model.content_loss is not None) == has_c
    assert (model.sharpness_calibrator is not None) == has_s
    assert (model.blur_estimator.aux_heads is not None) == has_aux
    # exactly the expected parameter groups: B always, D/S only when on, nothing else trainable
    prefixes = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert prefixes == {"blur_estimator"} | {
        name
        for name, on in (
            ("domain_discriminator", has_d),
            ("content_loss", has_c),
            ("sharpness_calibrator", has_s),
        )
        if on
    }
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == prefixes - {"content_loss"}
    # one optimiser (G) without D, two (G, D) with it; C in none of them
    assert len(trainer.optimizers) == (2 if has_d else 1)
    optimised = {id(p) for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]}
    assert optimised == {
        id(p) for n, p in model.named_parameters() if not n.startswith("content_loss")
    }
    # two batches trained, every loss term logged on its own and finite
    assert int(model.train_iteration) == 2
    assert trainer.global_step == (4 if has_d else 2)
    # both counters are logged: batches and optimiser steps (two per batch with D)
    assert float(trainer.callback_metrics["progress/iteration"]) == 2
    assert float(trainer.callback_metrics["progress/optimizer_steps"]) == trainer.global_step
    logged = {k.removeprefix("train/") for k in trainer.callback_metrics if k.startswith("train/")}
    assert logged - {"D_accuracy"} == terms
    for key, value in trainer.callback_metrics.items():
        assert math.isfinite(float(value)), key
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_ablation_configs_compose_later_wins(base_config, tmp_path):
    cli = run_cli(
        [
            "fit",
            "--config",
            str(base_config),
            "--config",
            str(ABLATIONS / "bdcs_noaux.yaml"),
            "--config",
            str(ABLATIONS / "b.yaml"),
            "--trainer.max_epochs",
            "0",
        ]
    )
    model = cli.model
    assert model.domain_discriminator is None and model.content_loss is None
    assert model.sharpness_calibrator is None and model.hparams.lambda_aux == 1.0
    assert isinstance(model.blur_estimator, BlurEstimator)


def test_reference_ld_scaling_and_alternative_b_from_a_config(base_config, tmp_path):
    light = tmp_path / "light.yaml"
    light.write_text(
        "model:\n  blur_estimator:\n    class_path: dmenet.modules.light_blur_estimator.LightBlurEstimator\n"
        "    init_args:\n      weights: null\n"
    )
    cli = run_cli(
        [
            "fit",
            "--config",
            str(base_config),
            "--config",
            str(light),
            "--config",
            str(ABLATIONS / "bd.yaml"),
            "--model.reference_ld_scaling",
            "true",
            "--model.lambda_d",
            "2.0",
            "--data.init_args.size",
            "64",
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    model, metrics = cli.model, cli.trainer.callback_metrics
    assert isinstance(model.blur_estimator, LightBlurEstimator)
    assert model.hparams.blur_estimator["class_path"].endswith("LightBlurEstimator")
    assert float(metrics["train/L_d"]) == pytest.approx(
        2.0 * 1e-3 * float(metrics["train/L_D"]), rel=1e-5
    )


def test_mixed_precision_with_clipping_trains(tmp_path):
    """bf16 autocast (the CPU's mixed precision) through both manual updates, clipping on."""
    model = DMENet(
        blur_estimator=LightBlurEstimator(weights=None),
        content_loss=False,
        gradient_clip_norm=1.0,
        log_images_every_n_steps=0,
    )
    trainer = _trainer(tmp_path, precision="bf16-mixed")
    trainer.fit(model, TinyDataModule(size=64, n_batches=2))
    assert trainer.global_step == 4
    assert all(math.isfinite(float(v)) for v in trainer.callback_metrics.values())
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ------------------------------------------------------------------ init_from
def _tiny_bds(**kwargs) -> DMENet:
    from dmenet.modules import DomainDiscriminator, SharpnessCalibrator
    from tests.inference.tiny_b import TinyB

    return DMENet(blur_estimator=TinyB(), domain_discriminator=DomainDiscriminator(in_channels=8),
                  content_loss=False, sharpness_calibrator=SharpnessCalibrator(channels=(4,)),
                  log_images_every_n_steps=0, **kwargs)


def test_init_from_loads_b_d_s_and_a_resume_stays_a_resume(tmp_path):
    from dmenet.errors import DMENetError

    torch.manual_seed(1)
    source = _tiny_bds()
    trainer = _trainer(tmp_path / "a")
    trainer.strategy.connect(source)  # a Lightning checkpoint of the model as it is
    ckpt = tmp_path / "source.ckpt"
    trainer.save_checkpoint(ckpt)

    torch.manual_seed(2)
    model = _tiny_bds(init_from=str(ckpt))
    assert model.hparams.label_space == "ours" and "init_from" not in model.hparams
    for key, value in source.state_dict().items():
        if not key.startswith("train_iteration"):
            assert torch.equal(model.state_dict()[key], value), key
    assert int(model.train_iteration) == 0  # weights only: a fine-tune starts its own counters

    # with --ckpt_path as well, the run resumes from that checkpoint, not from init_from
    torch.manual_seed(3)
    other = _tiny_bds()
    t2 = _trainer(tmp_path / "b")
    t2.fit(other, TinyDataModule(n_batches=1, seed=5))
    resume_ckpt = tmp_path / "other.ckpt"
    t2.save_checkpoint(resume_ckpt)
    resumed = _tiny_bds(init_from=str(ckpt))
    t3 = _trainer(tmp_path / "c", max_epochs=1)
    t3.fit(resumed, TinyDataModule(n_batches=1), ckpt_path=str(resume_ckpt))
    assert int(resumed.train_iteration) == 1  # restored counter, no further batch (1 epoch done)
    for key, value in other.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key

    # a part whose weights do not fit is named; a part the file lacks starts untrained
    from tests.inference.tiny_b import TinyB

    with pytest.raises(DMENetError, match=r"init_from .*blur_estimator.*misshaped"):
        DMENet(blur_estimator=TinyB(width=4), domain_discriminator=False, content_loss=False,
               sharpness_calibrator=False, init_from=str(ckpt))
    b_only = tmp_path / "b_only.ckpt"
    from dmenet.checkpoint import save_checkpoint

    save_checkpoint(b_only, {"blur_estimator": source.blur_estimator}, label_space="released")
    with pytest.warns(UserWarning, match="has no domain_discriminator"):
        fine = _tiny_bds(init_from=str(b_only))
    assert fine.hparams.label_space == "released"
    assert _tiny_bds(init_from=str(b_only), label_space="ours").hparams.label_space == "ours"
