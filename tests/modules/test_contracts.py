"""Every registered B, D, C and S keeps the contract of dmenet/modules/contracts.py.

Parametrised over the registries, so a newly registered part is tested without a new test:
shapes, dtypes, finite values, where gradients flow (C frozen), and that naming it by its
registry name on the command line or in a config gives the same ``--print_config`` as its
class path, which parses back to itself. A registered part must build offline with
``weights=None`` (when it takes ``weights``) or with its defaults. Inputs are 32 x 32.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import itertools

import pytest
import torch
import yaml

from dmenet.modules.contracts import BlurEstimate
from dmenet.registry import PART_REGISTRIES

N, H, W = 2, 32, 32
PARTS = [(kind, name) for kind, registry in PART_REGISTRIES.items() for name in registry.names()]


def _build(kind: str, name: str, request) -> torch.nn.Module:
    registry = PART_REGISTRIES[kind]
    if kind == "blur_estimator":  # the shipped Bs are built once per session (conftest.py)
        for fixture in ("paper_b", "light_b"):
            shared = request.getfixturevalue(fixture)
            if type(shared) is registry.get(name):
                return shared
    params = inspect.signature(registry.get(name)).parameters
    return registry.create(name, **({"weights": None} if "weights" in params else {}))


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: p.grad for n, p in module.named_parameters()}


def _finite_and_nonzero(grads: dict[str, torch.Tensor | None]) -> list[str]:
    """Names of parameters whose gradient is missing, zero or not finite."""
    return [
        n for n, g in grads.items() if g is None or not torch.isfinite(g).all() or not g.abs().sum() > 0
    ]


def check_blur_estimator(part: torch.nn.Module) -> None:
    image = torch.rand(N, 3, H, W, requires_grad=True)
    out = part(image)
    assert isinstance(out, BlurEstimate)
    assert out.y.shape == (N, 1, H, W) and out.y.dtype == torch.float32
    assert torch.isfinite(out.y).all() and 0 <= float(out.y.min()) and float(out.y.max()) <= 1
    assert out.feature.shape == (N, 64, H, W) and torch.isfinite(out.feature).all()
    for aux in out.aux:
        assert aux.shape[:2] == (N, 1) and aux.dtype == torch.float32 and torch.isfinite(aux).all()
    loss = out.y.mean() + out.feature.mean() + sum(a.mean() for a in out.aux)
    loss.backward()
    assert _finite_and_nonzero(_grads(part)) == []  # every parameter of B is trained
    assert image.grad is not None and torch.isfinite(image.grad).all()


def check_domain_discriminator(part: torch.nn.Module) -> None:
    feature = torch.rand(N, 64, H, W, requires_grad=True)
    logits = part(feature)
    assert logits.shape == (N, 1, 1, 1) and logits.dtype == torch.float32  # ceil(32 / 32)
    assert torch.isfinite(logits).all()
    logits.mean().backward()
    assert _finite_and_nonzero(_grads(part)) == []
    assert feature.grad is not None and feature.grad.abs().sum() > 0  # L_adv reaches B


def check_content_loss(part: torch.nn.Module) -> None:
    assert not any(p.requires_grad for p in part.parameters())  # frozen
    part.train()
    assert not any(m.training for m in part.modules())  # and stays in eval mode
    label = torch.rand(N, 1, H, W)
    assert float(part(label.clone(), label)) == 0.0
    pred = torch.rand(N, 1, H, W, requires_grad=True)
    loss = part(pred, label)
    assert loss.ndim == 0 and loss.dtype == torch.float32 and float(loss) > 0
    loss.backward()
    assert all(g is None for g in _grads(part).values())  # nothing flows into C ...
    assert pred.grad is not None and pred.grad.abs().sum() > 0  # ... everything through it


def check_sharpness_calibrator(part: torch.nn.Module) -> None:
    y = torch.rand(N, 1, H, W, requires_grad=True)
    logits = part(y)
    assert logits.shape == (N, 1, H, W) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    logits.mean().backward()
    assert _finite_and_nonzero(_grads(part)) == []
    assert y.grad is not None and y.grad.abs().sum() > 0  # L_S reaches B


CHECKS = {
    "blur_estimator": check_blur_estimator,
    "domain_discriminator": check_domain_discriminator,
    "content_loss": check_content_loss,
    "sharpness_calibrator": check_sharpness_calibrator,
}


def test_every_part_registry_has_a_contract_check():
    assert set(CHECKS) == set(PART_REGISTRIES)
    assert all(len(registry) for registry in PART_REGISTRIES.values())


@pytest.mark.parametrize(("kind", "name"), PARTS, ids=[f"{k}-{n}" for k, n in PARTS])
def test_part_keeps_its_contract(kind, name, request):
    part = _build(kind, name, request)
    assert isinstance(part, torch.nn.Module)
    part.train()
    part.zero_grad(set_to_none=True)
    try:
        CHECKS[kind](part)
    finally:
        part.zero_grad(set_to_none=True)  # shared parts leave no gradients behind


# ------------------------------------------------------------------ naming parts in configs


def _print_config(args: list[str]) -> str:
    from dmenet.lightning_cli import DMENetCLI

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as info:
        DMENetCLI(args=["fit", *args, "--print_config"])
    assert info.value.code == 0
    return out.getvalue()


def _name_sets() -> list[dict[str, str]]:
    """Enough ``{kind: name}`` choices that every registered name is in one of them."""
    names = {kind: registry.names() for kind, registry in PART_REGISTRIES.items()}
    rounds = max(len(v) for v in names.values())
    cycles = {kind: itertools.cycle(v) for kind, v in names.items()}
    return [{kind: next(cycles[kind]) for kind in names} for _ in range(rounds)]


@pytest.mark.parametrize("choice", _name_sets(), ids=lambda c: c["blur_estimator"])
def test_registry_names_print_config_round_trip(choice, tmp_path):
    # the command line: --model.<part> NAME
    by_flag = _print_config([a for kind, name in choice.items() for a in (f"--model.{kind}", name)])
    model = yaml.safe_load(by_flag)["model"]
    for kind, name in choice.items():
        assert model[kind]["class_path"] == PART_REGISTRIES[kind].class_path(name)
    # a config file: `part: NAME` and `part: {class_path: NAME}`
    names = tmp_path / "names.yaml"
    spec = {kind: ({"class_path": name} if i % 2 else name) for i, (kind, name) in enumerate(choice.items())}
    names.write_text(yaml.safe_dump({"model": spec}))
    assert _print_config(["--config", str(names)]) == by_flag
    # the printed config (full class paths) parses back to itself
    printed = tmp_path / "printed.yaml"
    printed.write_text(by_flag)
    assert _print_config(["--config", str(printed)]) == by_flag


def test_a_mistyped_name_lists_the_known_ones():
    from dmenet.errors import ConfigError
    from dmenet.lightning_cli import resolve_argv_part_names

    with pytest.raises(ConfigError, match="'light_resnet81'. Did you mean 'light_resnet18'.*dmenet_vgg19"):
        resolve_argv_part_names(["--model.blur_estimator", "light_resnet81"])
    # class paths, class names and booleans pass through untouched
    args = ["--model.blur_estimator=LightBlurEstimator", "--model.content_loss", "false",
            "--model.domain_discriminator.class_path", "my.module.D"]
    assert resolve_argv_part_names(args) == args
