"""The loss terms of SPEC section 4 against values worked out by hand, and their weighting.

BCE with logits x: target 1 costs ln(1 + e^-x), target 0 costs ln(1 + e^x). With x = ln 3:
target 1 -> ln(4/3), target 0 -> ln 4; with x = 0 either target costs ln 2; with x = -ln 3:
target 1 -> ln 4, target 0 -> ln(4/3). Every expected number below is built from these.
"""

from __future__ import annotations

import math

import pytest
import torch

from dmenet.losses import (
    REFERENCE_LD_SCALE,
    adversarial_loss,
    auxiliary_loss,
    blur_loss,
    discriminator_loss,
    sharpness_loss,
)

LN2, LN3, LN4, LN4_3 = math.log(2), math.log(3), math.log(4), math.log(4 / 3)


def _map(*rows: list[float]) -> torch.Tensor:
    """A ``(1, 1, H, W)`` map from its rows."""
    return torch.tensor(rows, dtype=torch.float32)[None, None]


LABEL = _map([0.2, 0.4], [0.6, 0.8])  # y, (1, 1, 2, 2)


def test_blur_loss_is_the_mean_squared_error():
    # (0.2^2 + 0.4^2 + 0.6^2 + 0.8^2) / 4 = (0.04 + 0.16 + 0.36 + 0.64) / 4
    assert float(blur_loss(torch.zeros(1, 1, 2, 2), LABEL)) == pytest.approx(0.3)
    # errors 0.1, -0.1, 0.3, 0: (0.01 + 0.01 + 0.09) / 4
    pred = _map([0.3, 0.3], [0.9, 0.8])
    assert float(blur_loss(pred, LABEL)) == pytest.approx(0.0275)


def test_auxiliary_loss_sums_every_scale_against_the_nearest_resized_label():
    label = _map([0.2, 0.2, 0.4, 0.4], [0.2, 0.2, 0.4, 0.4], [0.6, 0.6, 0.8, 0.8], [0.6, 0.6, 0.8, 0.8])
    coarse = torch.zeros(1, 1, 1, 1)  # nearest 4x4 -> 1x1 keeps the top-left 0.2: 0.04
    middle = torch.full((1, 1, 2, 2), 0.5)  # label at 2x2 is LABEL: (0.09 + 0.01 + 0.01 + 0.09) / 4
    full = label.clone()  # the full-resolution prediction counts too: 0
    assert float(auxiliary_loss([coarse, middle, full], label)) == pytest.approx(0.04 + 0.05)
    assert float(auxiliary_loss([coarse], label)) == pytest.approx(0.04)
    assert float(auxiliary_loss([], label)) == 0.0


def test_sharpness_loss_is_bce_against_the_mask_one_is_sharp():
    logits = _map([0.0, LN3], [LN3, -LN3])
    mask = _map([1.0, 1.0], [0.0, 0.0])  # 1 = sharp: sharp pixels want a large logit
    # ln 2 (x = 0), ln(4/3) (x = ln 3, sharp), ln 4 (x = ln 3, blurred), ln(4/3) (x = -ln 3, blurred)
    expected = (LN2 + LN4_3 + LN4 + LN4_3) / 4
    assert float(sharpness_loss(logits, mask)) == pytest.approx(expected)
    assert float(sharpness_loss(logits, mask.bool())) == pytest.approx(expected)  # any mask dtype


def test_discriminator_loss_synthetic_is_one_real_is_zero_and_synthetic_counts_per_real_stream():
    syn = torch.full((1, 1, 2, 2), LN3)  # target 1: ln(4/3)
    cuhk = torch.full((1, 1, 2, 2), LN3)  # target 0: ln 4
    flickr = torch.full((1, 1, 2, 2), -LN3)  # target 0: ln(4/3)
    # the reference: 0.5 * [2 BCE(syn, 1) + BCE(cuhk, 0) + BCE(flickr, 0)]
    two_streams = 0.5 * (2 * LN4_3 + LN4 + LN4_3)
    assert float(discriminator_loss(syn, [cuhk, flickr])) == pytest.approx(two_streams)
    # one real stream: 0.5 * [BCE(syn, 1) + BCE(cuhk, 0)]
    assert float(discriminator_loss(syn, [cuhk])) == pytest.approx(0.5 * (LN4_3 + LN4))
    # logits of 0 everywhere: every BCE is ln 2, so 0.5 * (2 + 2) ln 2
    zeros = torch.zeros(1, 1, 2, 2)
    assert float(discriminator_loss(zeros, [zeros, zeros])) == pytest.approx(2 * LN2)
    with pytest.raises(ValueError, match="at least one real stream"):
        discriminator_loss(syn, [])


def test_adversarial_loss_wants_real_features_called_synthetic_summed_over_streams():
    cuhk = torch.full((1, 1, 2, 2), LN3)  # target 1: ln(4/3)
    flickr = _map([0.0, 0.0], [-LN3, -LN3])  # target 1: (ln 2 + ln 2 + ln 4 + ln 4) / 4
    assert float(adversarial_loss([cuhk])) == pytest.approx(LN4_3)
    expected = LN4_3 + (2 * LN2 + 2 * LN4) / 4
    assert float(adversarial_loss([cuhk, flickr])) == pytest.approx(expected)
    with pytest.raises(ValueError, match="at least one real stream"):
        adversarial_loss([])


def test_losses_are_differentiable_scalars():
    pred = torch.zeros(1, 1, 2, 2, requires_grad=True)
    loss = blur_loss(pred, LABEL) + adversarial_loss([pred]) + sharpness_loss(pred, LABEL > 0.5)
    assert loss.ndim == 0
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()


# --------------------------------------------------------------- the weighting in DMENet

# distinct weights, so that exchanging any two of them changes L_g
LAMBDAS = {"lambda_aux": 0.2, "lambda_c": 3.0, "lambda_s": 0.05, "lambda_adv": 0.7, "lambda_d": 1.7}
TERM_WEIGHTS = {"L_B": 1.0, "L_aux": 0.2, "L_C": 3.0, "L_S": 0.05, "L_adv": 0.7}


def test_logged_totals_are_the_lambda_weighted_sums_and_the_reference_scale_reaches_d(tmp_path):
    """L_g and L_d are the lambda-weighted sums of the logged terms; with the reference's
    extra factor on L_D, D's gradient itself (not only the logged L_d) is REFERENCE_LD_SCALE
    (the reference's 1e-3) times the unscaled one, for the same weights and batch (Adam then
    makes nearly the same step, as in the reference)."""
    import lightning as L

    from dmenet.lightning_model import DMENet
    from dmenet.modules import LightBlurEstimator
    from tests.helpers.tiny_data import TinyDataModule, cpu_trainer

    class DGradients(L.Callback):
        def __init__(self) -> None:
            self.grads: list[torch.Tensor] = []

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            d_params = list(pl_module.domain_discriminator.parameters())
            if optimizer.param_groups[0]["params"][0] is d_params[0]:  # D's optimiser
                self.grads.append(torch.cat([p.grad.flatten() for p in d_params]))

    grads = {}
    for reference_ld_scaling in (False, True):
        L.seed_everything(0)
        model = DMENet(
            blur_estimator=LightBlurEstimator(weights=None),
            vgg_weights=None,
            reference_ld_scaling=reference_ld_scaling,
            log_images_every_n_steps=0,
            **LAMBDAS,
        )
        recorder = DGradients()
        trainer = cpu_trainer(tmp_path / str(reference_ld_scaling), max_steps=2,
                              callbacks=[recorder])
        trainer.fit(model, TinyDataModule(size=64, n_batches=1))
        logged = {
            k.removeprefix("train/"): float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith("train/")
        }
        assert set(TERM_WEIGHTS) | {"L_g", "L_D", "L_d"} <= set(logged)
        # the check below can tell lambda_C from lambda_S only if L_C and L_S differ
        assert abs(logged["L_C"] - logged["L_S"]) > 0.1 * max(logged["L_C"], logged["L_S"])
        expected_g = sum(weight * logged[term] for term, weight in TERM_WEIGHTS.items())
        assert logged["L_g"] == pytest.approx(expected_g, rel=1e-5)
        scale = 1.7 * (1e-3 if reference_ld_scaling else 1.0)
        assert logged["L_d"] == pytest.approx(scale * logged["L_D"], rel=1e-5)
        assert len(recorder.grads) == 1  # one D step
        grads[reference_ld_scaling] = recorder.grads[0]
        del model, trainer  # one model in memory at a time
    assert REFERENCE_LD_SCALE == pytest.approx(1e-3)
    expected = REFERENCE_LD_SCALE * grads[False]
    largest = float(expected.abs().max())
    assert largest > 0
    # float32 backward: elements that nearly cancel differ by rounding, so the tolerance is
    # relative to the largest gradient
    torch.testing.assert_close(grads[True], expected, rtol=1e-4, atol=1e-5 * largest)


# ------------------------------------------------------ switching a part off: False, only


def _model(**kwargs):
    from dmenet.lightning_model import DMENet
    from dmenet.modules import LightBlurEstimator

    return DMENet(
        blur_estimator=LightBlurEstimator(weights=None, aux_heads=False),
        vgg_weights=None,
        log_images_every_n_steps=0,
        **kwargs,
    )


def _fit_one_batch(tmp_path, model):
    from tests.helpers.tiny_data import TinyDataModule, cpu_trainer

    trainer = cpu_trainer(tmp_path, max_steps=2)
    trainer.fit(model, TinyDataModule(size=64, n_batches=1))
    logged = {k.removeprefix("train/") for k in trainer.callback_metrics if k.startswith("train/")}
    return trainer, logged


def test_content_loss_false_never_builds_or_runs_vgg19(tmp_path, monkeypatch):
    from dmenet.modules import content_loss, vgg

    built = []
    original = vgg.vgg19_features
    monkeypatch.setattr(content_loss, "vgg19_features", lambda *a, **k: built.append(1) or original(*a, **k))
    model = _model(content_loss=False)
    trainer, logged = _fit_one_batch(tmp_path, model)
    assert built == [] and model.content_loss is None
    assert model.hparams.content_loss is False  # the checkpoint rebuilds no C either
    assert "L_C" not in logged and {"L_B", "L_S", "L_adv", "L_D"} <= logged
    # C on builds it (and training_step then runs it): the spy above is live
    assert _model(content_loss=True).content_loss is not None and built == [1]


def test_parts_switched_off_leave_b_alone_with_one_optimiser(tmp_path):
    model = _model(domain_discriminator=False, content_loss=False, sharpness_calibrator=False,
                   lambda_adv=0.0, lambda_s=0.0)  # an off part's lambdas are not used
    trainer, logged = _fit_one_batch(tmp_path, model)
    assert model.sharpness_calibrator is None and model.domain_discriminator is None
    assert len(trainer.optimizers) == 1 and trainer.global_step == 1  # G step only
    assert logged == {"L_B", "L_g"}


@pytest.mark.parametrize("part, option", [
    ("domain_discriminator", "lambda_adv"), ("domain_discriminator", "lambda_d"),
    ("content_loss", "lambda_c"), ("sharpness_calibrator", "lambda_s"),
])
def test_a_lambda_of_zero_for_a_part_that_is_on_is_a_config_error(part, option, monkeypatch):
    from dmenet.errors import ConfigError
    from dmenet.modules import content_loss

    # refused before any part is built (no VGG19 for C)
    monkeypatch.setattr(content_loss, "vgg19_features", lambda *a, **k: pytest.fail("C was built"))
    with pytest.raises(ConfigError, match=f"--model.{option} is 0 while --model.{part} is on; "
                                          f"a part is switched off with --model.{part} false"):
        _model(**{option: 0.0, "content_loss": part == "content_loss"})


def test_b_cannot_be_switched_off():
    from dmenet.errors import ConfigError
    from dmenet.lightning_model import DMENet

    with pytest.raises(ConfigError, match="--model.blur_estimator false: B is the model"):
        DMENet(blur_estimator=False, vgg_weights=None)


def test_negative_lambda_is_a_config_error():
    from dmenet.errors import ConfigError
    from dmenet.lightning_model import DMENet

    with pytest.raises(ConfigError, match="--model.lambda_s must be >= 0"):
        DMENet(vgg_weights=None, lambda_s=-1.0)
