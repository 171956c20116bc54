import pytest
import torch

from dmenet.registry import ALL_REGISTRIES, Registry, list_parts


def test_register_list_create():
    reg = Registry("widget")

    @reg.register("lin")
    class Lin(torch.nn.Linear):
        pass

    assert reg.names() == ["lin"] and "lin" in reg and len(reg) == 1
    part = reg.create("lin", in_features=2, out_features=3)
    assert isinstance(part, Lin) and part.out_features == 3
    assert reg.class_path("lin").endswith("Lin")


def test_typo_lists_known_names():
    reg = Registry("widget")
    reg.register("alpha")(dict)
    reg.register("beta")(list)
    with pytest.raises(KeyError) as info:
        reg.get("alpah")
    message = str(info.value)
    assert "alpha" in message and "beta" in message and "Did you mean 'alpha'" in message


def test_duplicate_registration_is_refused():
    reg = Registry("widget")
    reg.register("a")(dict)
    with pytest.raises(KeyError, match="already registered"):
        reg.register("a")(list)


def test_every_registry_is_filled():
    parts = list_parts()
    assert set(parts) == set(ALL_REGISTRIES)
    for kind, names in parts.items():
        assert names, f"no {kind} registered"


def test_every_classical_estimator_has_bs_interface():
    from dmenet.registry import CLASSICAL_ESTIMATORS, load_all

    load_all()
    image = torch.rand(1, 3, 40, 48)
    for name in CLASSICAL_ESTIMATORS.names():
        out = CLASSICAL_ESTIMATORS.create(name)(image)
        assert out.y.shape == (1, 1, 40, 48), name
        assert 0 <= float(out.y.min()) and float(out.y.max()) <= 1 and torch.isfinite(out.y).all()


PLUGIN_REGISTRY = Registry("plugin_widget", locations=("_dmenet_registry_plugin",))


def test_a_registry_imports_its_locations_on_first_lookup(tmp_path, monkeypatch):
    import sys

    (tmp_path / "_dmenet_registry_plugin.py").write_text(
        f"from {__name__} import PLUGIN_REGISTRY\n\nPLUGIN_REGISTRY.register('plugged')(dict)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "_dmenet_registry_plugin", raising=False)
    assert PLUGIN_REGISTRY._entries == {}  # nothing imported yet
    assert "plugged" in PLUGIN_REGISTRY and PLUGIN_REGISTRY.get("plugged") is dict
    assert PLUGIN_REGISTRY.names() == ["plugged"] and "_dmenet_registry_plugin" in sys.modules


def test_part_registries_are_the_four_lightning_module_arguments():
    from dmenet.lightning_model import PART_NAMES
    from dmenet.registry import PART_REGISTRIES

    assert tuple(PART_REGISTRIES) == PART_NAMES
