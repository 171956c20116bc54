"""dmenet.modules.spec: parts record their arguments, describe themselves and are rebuilt."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dmenet.errors import DMENetError
from dmenet.modules import DomainDiscriminator, SharpnessCalibrator
from dmenet.modules.spec import Part, build, describe


class Base(Part):
    def __init__(self, width: int = 3, weights: str | None = "imagenet", **extra) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 1)


class Child(Base):
    def __init__(self, depth: int = 2, where: Path = Path("a/b"), sizes=(1, 2)) -> None:
        super().__init__(width=depth + 1, flag=True)


def test_part_records_the_outermost_arguments_as_plain_data():
    assert Base(5).init_args == {"width": 5, "weights": "imagenet"}
    assert Base(extra_option=1).init_args == {"width": 3, "weights": "imagenet", "extra_option": 1}
    child = Child(depth=4)
    # the subclass's own arguments, not those it passed to Base; Path -> str, tuple -> list
    assert child.init_args == {"depth": 4, "where": "a/b", "sizes": [1, 2]}
    assert child.conv.out_channels == 5


def test_describe_stores_no_weights_to_download():
    spec = describe(Base(4, weights="imagenet"))
    assert spec == {"class_path": "tests.modules.test_spec.Base",
                    "init_args": {"width": 4, "weights": None}}
    with pytest.raises(DMENetError, match="does not record .* derive it from dmenet.modules.spec.Part"):
        describe(nn.Conv2d(1, 1, 1))


def test_build_with_weights_is_on_meta_and_assigns_them_strictly(monkeypatch):
    torch.manual_seed(0)
    s = SharpnessCalibrator(channels=(4, 2))
    state = s.state_dict()

    devices = []
    original = nn.Conv2d.reset_parameters

    def watched(conv):  # the random initialisation runs on meta tensors only (costs nothing)
        devices.append(conv.weight.device.type)
        original(conv)

    monkeypatch.setattr(nn.Conv2d, "reset_parameters", watched)
    rebuilt = build(describe(s), "S", state)
    assert devices == ["meta"] * 3
    assert rebuilt.init_args == {"channels": [4, 2]}
    for key, value in rebuilt.state_dict().items():
        assert value.device.type == "cpu" and torch.equal(value, state[key]), key
    assert all(p.requires_grad for p in rebuilt.parameters())
    y = torch.rand(1, 1, 5, 5)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(y), s.eval()(y))


def test_build_errors_name_the_problem():
    spec = describe(DomainDiscriminator(channels=(4,)))
    state = DomainDiscriminator(channels=(4,)).state_dict()
    del state["layers.0.bn.running_var"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(DMENetError, match=r"D: .*1 missing: layers\.0\.bn\.running_var; 1 unexpected: extra"):
        build(spec, "D", state)
    with pytest.raises(DMENetError, match="has no argument"):
        build({"class_path": spec["class_path"], "init_args": {"nope": 1}}, "D")
    with pytest.raises(DMENetError, match="cannot import"):
        build({"class_path": "dmenet.modules.nope.Missing"}, "D")
    with pytest.raises(DMENetError, match="not a torch.nn.Module"):
        build({"class_path": "pathlib.Path"}, "D")
    with pytest.raises(DMENetError, match="expected"):
        build("DomainDiscriminator", "D")  # type: ignore[arg-type]
