"""A GPU asked for on a machine without one: one line saying so and how to run on the CPU.

The machine's GPUs are hidden (``torch.cuda.is_available`` and MPS report none), so these run
the same on a machine with a GPU.
"""

from __future__ import annotations

import functools

import pytest
import torch

from dmenet.cli import main as dmenet
from tests.inference.conftest import photo_folder, tiny_ckpt  # noqa: F401  (fixtures)


@pytest.fixture()
def no_gpu(monkeypatch):
    # functools.wraps: torch._dynamo reads these functions' __wrapped__ when it is imported
    for module in (torch.cuda, torch.backends.mps):
        monkeypatch.setattr(module, "is_available",
                            functools.wraps(module.is_available)(lambda: False))


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_the_paper_config_on_a_machine_without_gpu(no_gpu, repo_root, tmp_path, monkeypatch, capsys):
    # configs/dmenet.yaml says accelerator: gpu; Lightning alone ends in a traceback
    monkeypatch.chdir(tmp_path)
    assert dmenet(["fit", "--config", str(repo_root / "configs" / "dmenet.yaml")]) == 2
    assert _one_line(capsys) == (
        "dmenet fit: error: --trainer.accelerator gpu: this machine has no CUDA or Apple MPS GPU; "
        "run on the CPU with --trainer.accelerator cpu")
    assert list(tmp_path.iterdir()) == []  # refused before anything was built or written
    assert dmenet(["validate", "--config", str(repo_root / "configs" / "quickstart.yaml"),
                   "--trainer.accelerator", "cuda"]) == 2
    assert _one_line(capsys).endswith("--trainer.accelerator cuda: this machine has no CUDA GPU; "
                                      "run on the CPU with --trainer.accelerator cpu")


@pytest.mark.parametrize("tool", ["infer", "magnify", "depth", "deblur", "syndof"])
def test_device_cuda_in_the_tools(tool, no_gpu, tiny_ckpt, photo_folder, tmp_path, capsys):  # noqa: F811
    photo, out = str(photo_folder / "b.png"), tmp_path / "out"
    args = {
        "infer": ["infer", photo, "--out", str(out), "--ckpt", str(tiny_ckpt)],
        "magnify": ["magnify", photo, "--out", str(out / "m.png"), "--factor", "2",
                    "--ckpt", str(tiny_ckpt)],
        "depth": ["depth", photo, "--out", str(out / "d.png"), "--ckpt", str(tiny_ckpt)],
        "deblur": ["deblur", photo, "--out", str(out), "--ckpt", str(tiny_ckpt)],
        "syndof": ["syndof", "export", "--source", "embedded:1", "--out", str(out)],
    }[tool]
    assert dmenet([*args, "--device", "cuda"]) == 2
    assert _one_line(capsys) == (f"dmenet {tool}: error: --device cuda: this machine has no CUDA "
                                 "GPU; run on the CPU with --device cpu")
    assert not out.exists() or not any(out.rglob("*.*"))
