"""DMENet: the adversarial LightningModule of SPEC section 4.

Per training iteration (manual optimisation, one D step then one G step on the same streams;
a loader batch holds one iteration, or ``render_ahead`` of them, see the DataModule)::

    L_d = lambda_D * L_D                                          (updates D)
    L_g = L_B + lambda_aux * sum_k L_aux,k + lambda_C * L_C
              + lambda_S * L_S + lambda_adv * L_adv               (updates B and S)

Subnetworks are constructor arguments (anomalib style), each typed ``nn.Module | bool``:
``True`` builds the paper's part, ``False`` removes it (no parameters, no optimiser, no loss
term), an ``nn.Module`` replaces it. Ablations are therefore configs (configs/ablation/*.yaml),
not code branches. ``False`` is the one way to switch a part off: a lambda of 0 for a part that
is on (``lambda_adv`` or ``lambda_d`` with D, ``lambda_c`` with C, ``lambda_s`` with S) is a
:class:`~dmenet.errors.ConfigError` naming the switch; a switched-off part's lambdas are not
used. B cannot be switched off. ``lambda_aux = 0`` drops the auxiliary term L_aux (a term of
B, not a part), and the default B is then built without its auxiliary heads.

Validation logs ``val/<set>/<metric>`` for each validation set; a callback that monitors a
``val/`` metric no set logs (a CUHK-only run has no ``mse``) fails at the start of ``fit``.

Fine-tuning: ``init_from`` loads the weights of B (and of D and S when the file has them and
they are switched on) from a dmenet checkpoint or a ``dmenet convert-official`` file before
training; a resume (``--ckpt_path``) still restores everything from its checkpoint. The model
trains in the label space of those weights unless ``label_space`` says otherwise: the data's
labels are converted once (:func:`dmenet.labels.training_label`) before L_B, L_aux and L_C.

Step counting: ``trainer.global_step`` counts optimiser steps, i.e. two per iteration while D is
on (one per iteration without D or during B-only pre-training). ``max_steps`` and
``ModelCheckpoint(every_n_train_steps)`` count the same way and are checked at batch ends; see
docs/training.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from dmenet.errors import ConfigError, DMENetError
from dmenet.labels import check_label_space, training_label
from dmenet.losses import (
    REFERENCE_LD_SCALE,
    adversarial_loss,
    auxiliary_loss,
    blur_loss,
    discriminator_loss,
    sharpness_loss,
)
from dmenet.modules.blur_estimator import BlurEstimator
from dmenet.modules.content_loss import ContentLoss
from dmenet.modules.contracts import BlurEstimate
from dmenet.modules.domain_discriminator import DomainDiscriminator
from dmenet.modules.sharpness_calibrator import SharpnessCalibrator
from dmenet.modules.spec import PART_NAMES, build, describe, load_strictly
from dmenet.tiling import DEFAULT_OVERLAP_PX, DEFAULT_TILE_PX

__all__ = ["DMENet", "PART_NAMES"]

# the parts init_from loads (C is a frozen ImageNet VGG19, never trained, so never loaded)
INIT_FROM_PARTS: tuple[str, ...] = ("blur_estimator", "domain_discriminator", "sharpness_calibrator")

# run-time options, not model configuration: kept out of the checkpoint's hyper_parameters, because
# LightningCLI applies a checkpoint's hyper_parameters over the command line with --ckpt_path
# (`dmenet test --ckpt_path X --model.results_dir Y` must write to Y)
# (init_from too: a checkpoint already holds the weights it loaded, and rebuilding the model from
# that checkpoint must not need the file again)
RUNTIME_OPTIONS: tuple[str, ...] = (
    "results_dir", "overwrite_results", "log_images_every_n_steps", "init_from",
    "predict_tile_px", "predict_overlap_px",
)

# names of the logged loss terms (unweighted values; "train/L_g" and "train/L_d" are weighted sums)
_TERM_NAMES = {"blur": "L_B", "aux": "L_aux", "content": "L_C", "sharpness": "L_S", "adv": "L_adv"}


# the lambdas that weight each switchable part's loss terms
PART_LAMBDAS: dict[str, tuple[str, ...]] = {
    "domain_discriminator": ("lambda_adv", "lambda_d"),
    "content_loss": ("lambda_c",),
    "sharpness_calibrator": ("lambda_s",),
}


def _resolve_part(value: Any, role: str, default: Any) -> nn.Module | None:
    """``True`` -> default(), ``False`` -> None, module -> itself, dict spec (a checkpoint's
    description) -> built."""
    if isinstance(value, nn.Module):
        return value
    if isinstance(value, dict):
        return build(value, role)
    if value is True:
        return default()
    if value is False:
        return None
    raise DMENetError(f"{role}: expected an nn.Module, true or false, got {value!r}")


def _check_lambdas(parts: dict[str, Any], lambdas: dict[str, float]) -> None:
    """Every lambda ``>= 0``, and none ``0`` for a part that is on (``False`` switches it off)."""
    for option, value in lambdas.items():
        if not value >= 0:
            raise ConfigError(f"--model.{option} must be >= 0, got {value}")
    for part, options in PART_LAMBDAS.items():
        zero = [option for option in options if lambdas[option] == 0]
        if zero and parts[part] is not False:
            raise ConfigError(f"--model.{zero[0]} is 0 while --model.{part} is on; a part is "
                              f"switched off with --model.{part} false (and a lambda of a part "
                              "that is on must be > 0)")


def _as_list(x: Any) -> list:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]


class DMENet(L.LightningModule):
    """DMENet (CVPR 2019): B trained with D, C and S. See the module docstring for the losses.

    Args:
        blur_estimator: B; ``True`` builds the paper's VGG19 U-Net with ``vgg_weights``, or an
            ``nn.Module`` (B cannot be switched off).
        domain_discriminator, content_loss, sharpness_calibrator: D, C, S
            (``True`` = paper's part, ``False`` = off, or an ``nn.Module``).
        vgg_weights: ``"imagenet"``, a local torchvision VGG19 state_dict path, or ``None``; used
            for the default B and C. Stored as ``None`` in checkpoints (the weights are in them).
        lambda_adv, lambda_d, lambda_c, lambda_s, lambda_aux: loss weights (paper defaults),
            ``>= 0``; a part's lambdas are ``> 0`` while it is on (module docstring).
        reference_ld_scaling: multiply L_D by a further 1e-3 as the reference code does.
        lr, beta1, beta2: Adam, the same for the G (B + S) and D optimisers.
        lr_decay_factor, lr_decay_every_epochs: step decay, applied at epoch ends by hand.
        gradient_clip_norm: clip each optimiser's gradient norm (after AMP unscaling); None = off.
        pretrain_b_steps: the first N batches train B alone on L_B (+ L_aux): no D, C, S.
        results_dir: ``test`` writes ``<results_dir>/<set>/`` (metrics, tables, PR plots).
        log_images_every_n_steps: write an image | label | prediction PNG every N batches (0: off).
        label_space: the label space of ``y``: ``"ours"``, or ``"released"`` (the public
            weights'); ``None``: that of ``init_from``'s weights, else ``"ours"``. Training
            converts the labels into it; evaluation and inference read it.
        overwrite_results: let ``test`` replace an existing ``<results_dir>/<set>/`` report.
        init_from: a dmenet checkpoint (``dmenet fit``), a ``dmenet convert-official`` file or
            the name of published weights (``dmenet_bdcs``, fetched on first use), whose
            weights of B (and D, S when it has them and they are on) are loaded now, strictly,
            before training. Not a resume: use ``--ckpt_path`` for that.
        predict_tile_px, predict_overlap_px: ``dmenet predict`` runs photos larger than one
            tile in overlapping, blended tiles of this size (px), like ``dmenet infer``.
    """

    def __init__(
        self,
        blur_estimator: nn.Module | bool = True,
        domain_discriminator: nn.Module | bool = True,
        content_loss: nn.Module | bool = True,
        sharpness_calibrator: nn.Module | bool = True,
        vgg_weights: str | None = "imagenet",
        lambda_adv: float = 1e-3,
        lambda_d: float = 1.0,
        lambda_c: float = 1e-4,
        lambda_s: float = 2e-2,
        lambda_aux: float = 1.0,
        reference_ld_scaling: bool = False,
        lr: float = 1e-4,
        beta1: float = 0.9,
        beta2: float = 0.999,
        lr_decay_factor: float = 0.8,
        lr_decay_every_epochs: int = 20,
        gradient_clip_norm: float | None = None,
        pretrain_b_steps: int = 0,
        results_dir: str = "results",
        log_images_every_n_steps: int = 100,
        label_space: str | None = None,
        overwrite_results: bool = False,
        init_from: str | None = None,
        predict_tile_px: int = DEFAULT_TILE_PX,
        predict_overlap_px: int = DEFAULT_OVERLAP_PX,
    ) -> None:
        super().__init__()
        if label_space is not None:
            check_label_space(label_space, "--model.label_space")
        _check_lambdas(
            {"domain_discriminator": domain_discriminator, "content_loss": content_loss,
             "sharpness_calibrator": sharpness_calibrator},
            {"lambda_adv": lambda_adv, "lambda_d": lambda_d, "lambda_c": lambda_c,
             "lambda_s": lambda_s, "lambda_aux": lambda_aux})
        if blur_estimator is False:
            raise ConfigError("--model.blur_estimator false: B is the model and cannot be switched "
                              "off; give true (the paper's B), a registry name or a class_path")
        self.automatic_optimization = False
        self.save_hyperparameters(ignore=[*PART_NAMES, *RUNTIME_OPTIONS])
        self.results_dir = results_dir
        self.overwrite_results = overwrite_results
        self.log_images_every_n_steps = log_images_every_n_steps
        if not 4 <= predict_overlap_px < predict_tile_px:
            raise ConfigError("--model.predict_overlap_px must be at least 4 and smaller than"
                              f" --model.predict_tile_px (got {predict_overlap_px} and {predict_tile_px})")
        self.predict_tile_px, self.predict_overlap_px = int(predict_tile_px), int(predict_overlap_px)

        self.blur_estimator = _resolve_part(
            blur_estimator, "blur_estimator",
            lambda: BlurEstimator(weights=vgg_weights, aux_heads=lambda_aux > 0),
        )
        # a part switched off is not built, never run, not in the checkpoint
        self.domain_discriminator = _resolve_part(
            domain_discriminator, "domain_discriminator", DomainDiscriminator)
        self.content_loss = _resolve_part(
            content_loss, "content_loss", lambda: ContentLoss(weights=vgg_weights))
        self.sharpness_calibrator = _resolve_part(
            sharpness_calibrator, "sharpness_calibrator", SharpnessCalibrator)
        # checkpoints rebuild the parts from plain data (no pickled modules, no weight download)
        for name in PART_NAMES:
            part = getattr(self, name)
            self.hparams[name] = describe(part) if part is not None else False
        self.hparams["vgg_weights"] = None
        weights_space = self._init_from(init_from) if init_from else None
        self.hparams["label_space"] = label_space or weights_space or "ours"
        # batches trained so far (drives pretrain_b_steps and image logging; saved and resumed)
        self.register_buffer("train_iteration", torch.zeros((), dtype=torch.long))
        self._evaluators: dict[str, Any] = {}

    def _init_from(self, path: str) -> str:
        """Load B (and D, S when the file has them and they are on) from ``path``; returns the
        label space of the weights."""
        from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

        from dmenet.checkpoint import load_checkpoint
        from dmenet.weights import resolve_checkpoint

        ckpt = load_checkpoint(resolve_checkpoint(path))
        loaded = []
        for name in INIT_FROM_PARTS:
            part = getattr(self, name)
            if part is None or name not in ckpt.parts:
                if part is not None:
                    rank_zero_warn(f"init_from {path}: the file has no {name}; it starts untrained")
                continue
            load_strictly(part, ckpt.part_state(name), f"init_from {path}: {name}")
            if ckpt.parts[name] != describe(part):
                rank_zero_warn(f"init_from {path}: {name} was saved as {ckpt.parts[name]}, and is "
                               f"loaded into {describe(part)}")
            loaded.append(name)
        rank_zero_info(f"init_from {path}: loaded {', '.join(loaded)} "
                       f"(label space {ckpt.label_space!r})")
        return ckpt.label_space

    # ---------------------------------------------------------------- inference
    def forward(self, image: torch.Tensor) -> BlurEstimate:
        """``image (N, 3, H, W)`` in ``[0, 1]`` -> :class:`BlurEstimate` (``y`` = sigma / sigma_max)."""
        return self.blur_estimator(image)

    # ---------------------------------------------------------------- optimisers
    def generator_parameters(self) -> list[nn.Parameter]:
        """theta_B and theta_S: what L_g updates."""
        params = list(self.blur_estimator.parameters())
        if self.sharpness_calibrator is not None:
            params += list(self.sharpness_calibrator.parameters())
        return [p for p in params if p.requires_grad]

    def configure_optimizers(self):
        hp = self.hparams
        betas = (hp.beta1, hp.beta2)
        optimizers = [torch.optim.Adam(self.generator_parameters(), lr=hp.lr, betas=betas)]
        if self.domain_discriminator is not None:
            optimizers.append(
                torch.optim.Adam(self.domain_discriminator.parameters(), lr=hp.lr, betas=betas)
            )
        schedulers = [
            torch.optim.lr_scheduler.StepLR(
                opt, step_size=hp.lr_decay_every_epochs, gamma=hp.lr_decay_factor
            )
            for opt in optimizers
        ]
        return optimizers, schedulers

    def on_before_optimizer_step(self, optimizer) -> None:
        # called by the precision plugin after AMP unscaling, so the norm is the true one
        if self.hparams.gradient_clip_norm:
            self.clip_gradients(
                optimizer,
                gradient_clip_val=self.hparams.gradient_clip_norm,
                gradient_clip_algorithm="norm",
            )

    def on_train_epoch_end(self) -> None:
        # manual optimisation: Lightning steps no scheduler, we do it once per epoch
        for scheduler in _as_list(self.lr_schedulers()):
            scheduler.step()

    # ---------------------------------------------------------------- training
    def training_step(self, batch: dict[str, dict[str, torch.Tensor]] | list[dict[str, Any]],
                      batch_idx: int) -> None:
        """One training iteration per batch dict: ``batch`` is one, or a list of them (the
        DataModule's ``render_ahead``: several iterations rendered at once)."""
        for iteration in batch if isinstance(batch, list) else [batch]:
            self._training_iteration(iteration)

    def _training_iteration(self, batch: dict[str, dict[str, torch.Tensor]]) -> None:
        """The D step (L_d) and the G step (L_g) on one iteration's streams."""
        hp = self.hparams
        if "synthetic" not in batch:
            raise DMENetError("training batch has no 'synthetic' stream (needed for L_B)")
        optimizers = _as_list(self.optimizers())
        opt_g = optimizers[0]
        opt_d = optimizers[1] if len(optimizers) > 1 else None
        pretraining = int(self.train_iteration) < hp.pretrain_b_steps
        adversarial = self.domain_discriminator is not None and not pretraining
        calibrating = self.sharpness_calibrator is not None and not pretraining and "blur" in batch

        syn = batch["synthetic"]
        n = syn["image"].shape[0]
        # the data's labels in the model's label space: what L_B, L_aux and L_C compare with
        label = training_label(syn["label"], hp.label_space)
        out_syn = self.blur_estimator(syn["image"])
        # real streams seen by D: I_b ("blur") and I_r ("real"), each through B on its own
        real_outs: dict[str, BlurEstimate] = {}
        for stream in ("blur", "real"):
            if stream in batch and (adversarial or (stream == "blur" and calibrating)):
                real_outs[stream] = self.blur_estimator(batch[stream]["image"])
        adv_streams = [s for s in ("blur", "real") if s in real_outs] if adversarial else []
        logs: dict[str, torch.Tensor] = {}

        # ---- D step: L_d = lambda_D * L_D on detached features
        if opt_d is not None and adv_streams:
            with self.toggled_optimizer(opt_d):
                logits_syn = self.domain_discriminator(out_syn.feature.detach())
                logits_real = [
                    self.domain_discriminator(real_outs[s].feature.detach()) for s in adv_streams
                ]
                l_D = discriminator_loss(logits_syn, logits_real)
                scale = hp.lambda_d * (REFERENCE_LD_SCALE if hp.reference_ld_scaling else 1.0)
                l_d = scale * l_D
                opt_d.zero_grad()
                self.manual_backward(l_d)
                opt_d.step()
            logs["train/L_D"] = l_D.detach()
            logs["train/L_d"] = l_d.detach()
            # D accuracy on this batch: how well the domains are told apart (for monitoring)
            with torch.no_grad():
                correct = [(logits_syn > 0).float().mean()] + [
                    (z < 0).float().mean() for z in logits_real
                ]
                logs["train/D_accuracy"] = torch.stack(correct).mean()

        # ---- G step: L_g updates B and S
        with self.toggled_optimizer(opt_g):
            terms: dict[str, torch.Tensor] = {}
            weights: dict[str, float] = {}
            terms["blur"], weights["blur"] = blur_loss(out_syn.y, label), 1.0
            if hp.lambda_aux > 0 and out_syn.aux:  # a given B may have heads; lambda 0: no term
                terms["aux"], weights["aux"] = auxiliary_loss(out_syn.aux, label), hp.lambda_aux
            if self.content_loss is not None and not pretraining:
                terms["content"] = self.content_loss(out_syn.y, label)
                weights["content"] = hp.lambda_c
            if calibrating:
                logits_s = self.sharpness_calibrator(real_outs["blur"].y)
                terms["sharpness"] = sharpness_loss(logits_s, batch["blur"]["sharp_mask"])
                weights["sharpness"] = hp.lambda_s
            if adv_streams:
                logits_adv = [self.domain_discriminator(real_outs[s].feature) for s in adv_streams]
                terms["adv"], weights["adv"] = adversarial_loss(logits_adv), hp.lambda_adv
            l_g = sum(weights[k] * terms[k] for k in terms)
            opt_g.zero_grad()
            self.manual_backward(l_g)
            opt_g.step()
        for key, value in terms.items():
            logs[f"train/{_TERM_NAMES[key]}"] = value.detach()
        logs["train/L_g"] = l_g.detach()

        self.train_iteration += 1
        # both counters in metrics.csv: its ``step`` column counts loader batches (Lightning's
        # logging counter), checkpoints and max_steps count optimiser steps
        logs["progress/iteration"] = float(self.train_iteration)
        logs["progress/optimizer_steps"] = float(self.global_step)
        self.log_dict(logs, batch_size=n, prog_bar=False)
        self.log("loss", l_g.detach(), batch_size=n, prog_bar=True, logger=False)
        every = self.log_images_every_n_steps
        if every and int(self.train_iteration) % every == 0:
            self._write_training_picture(syn, out_syn)

    def _write_training_picture(self, syn: dict[str, torch.Tensor], out: BlurEstimate) -> None:
        """Panel of the first synthetic sample (input | prediction | colour-mapped | label ...)
        as a PNG under ``<log_dir>/train_images`` and as an image in the logger (W&B, TensorBoard)."""
        from dmenet.visualize import defocus_panel, log_panels

        label = training_label(syn["label"][0], self.hparams.label_space)  # the prediction's space
        space = self.hparams.label_space
        panel = defocus_panel(syn["image"][0], out.y[0], label, prediction_space=space, label_space=space)
        from dmenet.runs import run_dir

        base = run_dir(self.trainer) if self._trainer else Path(self.results_dir)
        log_panels(
            self.logger, "train/panel", [panel], int(self.train_iteration),
            out_dir=base / "train_images",
        )

    # ---------------------------------------------------------------- evaluation
    def _make_evaluator(self, set_name: str, out_dir: Path | None):
        from dmenet.evaluation.evaluator import Evaluator

        if out_dir is None:  # validation: metrics are logged, no report is written
            return Evaluator(set_name, None, label_space=self.hparams.label_space, overwrite=True)
        return Evaluator(
            set_name,
            out_dir,
            label_space=self.hparams.label_space,
            overwrite=self.overwrite_results,
        )

    def _evaluate(self, batch: dict[str, Any], stage: str) -> dict[str, float]:
        set_name = batch["set"][0] if "set" in batch else stage
        if set_name not in self._evaluators:
            out_dir = Path(self.results_dir) / set_name if stage == "test" else None
            self._evaluators[set_name] = self._make_evaluator(set_name, out_dir)
        y = self(batch["image"]).y
        return self._evaluators[set_name].update(y, batch)

    def on_validation_epoch_start(self) -> None:
        self._evaluators = {}

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0):
        return self._evaluate(batch, "val")

    def _log_evaluators(self) -> dict[str, dict[str, float]]:
        results = {name: ev.compute() for name, ev in self._evaluators.items()}
        for set_name, metrics in results.items():
            for key, value in metrics.items():
                self.log(f"val/{set_name}/{key}", float(value), add_dataloader_idx=False)
        return results

    def on_fit_start(self) -> None:
        self._check_monitored_metrics()

    def _check_monitored_metrics(self) -> None:
        """Fail before training when a callback monitors a ``val/`` metric no validation set
        will log (e.g. ``val/cuhk/mse``: CUHK has masks, no dense labels), not after an epoch."""
        trainer = self.trainer
        callbacks = [*trainer.checkpoint_callbacks, *trainer.early_stopping_callbacks]
        monitors = sorted({m for cb in callbacks if (m := getattr(cb, "monitor", None))})
        monitors = [m for m in monitors if m.startswith("val/")]
        if not monitors or not trainer.enable_validation or trainer.datamodule is None:
            return
        from dmenet.evaluation.evaluator import metric_names

        loaders = trainer.datamodule.val_dataloader()
        logged = set()
        for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
            item = loader.dataset[0]
            set_name = str(item.get("set", "val"))
            logged |= {f"val/{set_name}/{key}" for key in metric_names(set_name, item)}
        for monitor in monitors:
            if monitor not in logged:
                raise ConfigError(
                    f"a callback monitors {monitor!r}, which validation does not log; "
                    f"it logs {', '.join(sorted(logged)) or 'nothing'} (set the callback's "
                    "monitor to one of these, or choose --data.val_sets that have it)"
                )

    def on_validation_epoch_end(self) -> None:
        self._log_evaluators()
        self._evaluators = {}

    def on_test_epoch_start(self) -> None:
        self._evaluators = {}

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0):
        return self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        results = {name: ev.compute() for name, ev in self._evaluators.items()}
        for set_name, metrics in results.items():
            for key, value in metrics.items():
                self.log(f"test/{set_name}/{key}", float(value), add_dataloader_idx=False)
            # the scalars went through self.log above (console table, every logger): once only
            self._evaluators[set_name].write(
                Path(self.results_dir) / set_name, self.logger, log_scalars=False
            )
        self._evaluators = {}

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0):
        """Defocus maps of photos of any size: large ones run in overlapping, blended tiles
        (``dmenet.tiling``, equal to whole-photo inference within 1e-3), so memory
        stays bounded, exactly as ``dmenet infer`` does."""
        from dmenet.checkpoint import DefocusPredictor
        from dmenet.tiling import predict_image

        # the predictor type of dmenet infer / dmenet.load: B plus what its y means (a plain
        # wrapper made per call, so B is not registered twice in this module's state_dict)
        predictor = DefocusPredictor(self.blur_estimator, self.hparams.label_space)
        tile, overlap = self.predict_tile_px, self.predict_overlap_px
        y = torch.cat(
            [predict_image(predictor, image, tile, overlap) for image in batch["image"]], dim=0,
        )
        return {"y": y, "sigma_px": predictor.sigma_px(y), "name": batch.get("name")}
