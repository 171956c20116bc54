"""Every sweep parameter forms a command line that `dmenet fit` accepts and that sets it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from dmenet import sweeps
from dmenet.cli import main

SWEEP_DIR = Path(__file__).resolve().parents[1] / "configs" / "sweeps"
SWEEP_FILES = sorted(SWEEP_DIR.glob("*.yaml"))


def _lookup(config: dict, dotted: str):
    node = config
    for key in dotted.split("."):
        node = node[key]
    return node


def _print_config(argv: list[str], capsys) -> dict:
    assert argv[0] == "dmenet", "sweep commands run the dmenet entry point"
    with pytest.raises(SystemExit) as info:
        main([*argv[1:], "--print_config"])
    assert info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def _cases():
    for path in SWEEP_FILES:
        sweep = sweeps.load_sweep(path)
        for name in sweep["parameters"]:
            yield pytest.param(path, name, id=f"{path.stem}:{name}")


def test_sweep_files_exist():
    assert {p.stem for p in SWEEP_FILES} >= {"lambdas", "ablation"}


@pytest.mark.parametrize(("path", "name"), list(_cases()))
def test_sampled_values_reach_the_config(path, name, capsys, monkeypatch):
    monkeypatch.chdir(path.parents[2])  # sweep commands use paths relative to the repo root
    sweep = sweeps.load_sweep(path)
    assert "${args}" in sweep["command"]
    rng = random.Random(hash(name) % 1000)
    spec = sweep["parameters"][name]
    candidates = spec.get("values") or [sweeps.sample_value(spec, rng) for _ in range(2)]
    for value in candidates:
        point = sweeps.sample_parameters(sweep, rng)
        point[name] = value
        config = _print_config(sweeps.command_line(sweep, point), capsys)
        for key, expected in point.items():
            got = _lookup(config, key)
            if isinstance(expected, float):
                assert got == pytest.approx(expected, rel=1e-6), key
            else:
                assert got == expected, key


def test_log_uniform_sampling_stays_in_range():
    rng = random.Random(0)
    spec = {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-1}
    values = [sweeps.sample_value(spec, rng) for _ in range(200)]
    assert min(values) >= 1e-5 and max(values) <= 1e-1
    # log scale: about half the draws below the geometric mean
    below = sum(v < 1e-3 for v in values)
    assert 60 < below < 140


def test_grid_enumerates_every_point():
    sweep = sweeps.load_sweep(SWEEP_DIR / "ablation.yaml")
    points = sweeps.grid(sweep)
    expected = 1
    for spec in sweep["parameters"].values():
        expected *= len(spec["values"])
    assert len(points) == expected
    assert len({tuple(sorted(p.items())) for p in points}) == expected
