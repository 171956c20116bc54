"""W&B sweep configs: sampling and the command line an agent would run, without W&B servers.

``wandb agent`` fills ``${args}`` with ``--<parameter>=<value>`` for every parameter of the
sweep. These helpers do the same locally so tests (and users, with ``dmenet-sweep-dryrun``-style
scripts) can check that every sampled point forms a command line ``dmenet fit`` accepts.
"""

from __future__ import annotations

import math
import random
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml


def load_sweep(path: str | Path) -> dict[str, Any]:
    with open(path) as f:
        return yaml.safe_load(f)


def sample_value(spec: dict[str, Any], rng: random.Random) -> Any:
    """Draw one value of a W&B parameter spec (values, value, uniform, log_uniform_values, ...)."""
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return rng.choice(spec["values"])
    distribution = spec.get("distribution")
    if distribution is None:
        distribution = "int_uniform" if isinstance(spec.get("min"), int) and isinstance(spec.get("max"), int) else "uniform"
    lo, hi = spec["min"], spec["max"]
    if distribution == "uniform":
        return rng.uniform(lo, hi)
    if distribution == "int_uniform":
        return rng.randint(lo, hi)
    if distribution == "log_uniform_values":
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    if distribution == "log_uniform":  # W&B: min/max are natural-log exponents
        return math.exp(rng.uniform(lo, hi))
    if distribution == "q_log_uniform_values":
        q = spec.get("q", 1)
        return round(math.exp(rng.uniform(math.log(lo), math.log(hi))) / q) * q
    raise ValueError(f"unsupported distribution {distribution!r}")


def sample_parameters(sweep: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    return {name: sample_value(spec, rng) for name, spec in sweep["parameters"].items()}


def grid(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """Every point of a grid sweep (parameters with ``values`` or ``value``)."""
    points: list[dict[str, Any]] = [{}]
    for name, spec in sweep["parameters"].items():
        values = spec["values"] if "values" in spec else [spec["value"]]
        points = [{**p, name: v} for p in points for v in values]
    return points


def format_value(value: Any) -> str:
    # W&B writes Python's str(); booleans as True/False, which jsonargparse accepts
    return str(value)


def command_line(sweep: dict[str, Any], values: dict[str, Any]) -> list[str]:
    """The argv ``wandb agent`` would run for ``values`` (``${env}`` and ``${interpreter}`` resolved)."""
    args = [f"--{name}={format_value(value)}" for name, value in values.items()]
    argv: list[str] = []
    for token in sweep["command"]:
        if token == "${env}":
            continue  # /usr/bin/env: no effect on the arguments
        if token == "${interpreter}":
            argv.append(sys.executable)
        elif token == "${program}":
            argv.append(sweep["program"])
        elif token == "${args}":
            argv.extend(args)
        elif token == "${args_no_hyphens}":
            argv.extend(a[2:] for a in args)
        else:
            argv.append(token)
    return argv


def main(argv: list[str] | None = None) -> int:
    """Print a few sampled command lines of a sweep file (a dry run of ``wandb agent``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m dmenet.sweeps", description=main.__doc__)
    parser.add_argument("sweep", help="a W&B sweep YAML, e.g. configs/sweeps/lambdas.yaml")
    parser.add_argument("-n", type=int, default=3, help="how many points to print")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sweep = load_sweep(args.sweep)
    if sweep.get("method") == "grid":
        points = grid(sweep)[: args.n]
    else:
        rng = random.Random(args.seed)
        points = [sample_parameters(sweep, rng) for _ in range(args.n)]
    for point in points:
        print(shlex.join(command_line(sweep, point)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
