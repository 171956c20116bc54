"""A full disk mid-write: every tool leaves no partial output and says so in one line.

The disk "fills up" inside the image encoder's write (``cv2.imencode``'s buffer writes half its
bytes, then fails with ENOSPC), or inside the ONNX writer for ``dmenet export``. Every output
folder must then hold no file at all (no truncated output, no temporary), the command must end
with exit status 2 and one line naming the folder, and a second run (disk free again) must work
without ``--overwrite``.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import cv2
import pytest

from dmenet.cli import main as dmenet
from tests.inference.conftest import photo_folder, tiny_ckpt  # noqa: F401  (fixtures)


def _no_space(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


class _HalfWrittenBuffer:
    """What ``cv2.imencode`` returns, but its ``tofile`` fills the disk halfway through."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def tofile(self, path: str) -> None:
        Path(path).write_bytes(self.data[: len(self.data) // 2])
        raise _no_space(path)


@pytest.fixture()
def full_disk(monkeypatch):
    """Image writes fail with ENOSPC after writing half; ``.off()`` frees the disk again."""
    real = cv2.imencode

    def imencode(ext, image, *args):
        ok, buffer = real(ext, image, *args)
        return ok, _HalfWrittenBuffer(buffer.tobytes())

    monkeypatch.setattr(cv2, "imencode", imencode)

    class Switch:
        @staticmethod
        def off() -> None:
            monkeypatch.setattr(cv2, "imencode", real)

    return Switch


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _one_line_naming(err: str, tool: str, folder: Path) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.fullmatch(rf"dmenet {tool}: error: {re.escape(str(folder))}: no space left on the "
                        r"device; \S+ was not written \(free some space or write elsewhere\)",
                        lines[0]), lines[0]


@pytest.mark.parametrize("tool", ["infer", "magnify", "depth", "deblur"])
def test_a_full_disk_leaves_no_partial_output(tool, tiny_ckpt, photo_folder, tmp_path,  # noqa: F811
                                              full_disk, capsys):
    out = tmp_path / "out"
    photo = str(photo_folder / "b.png")
    args = {
        "infer": [photo, "--out", str(out)],  # the .npy is complete before the PNG fails
        "magnify": [photo, "--out", str(out / "b_magnified.png"), "--factor", "2"],
        "depth": [photo, "--out", str(out / "b_depth.png"), "--focus-mm", "2000"],
        "deblur": [photo, "--out", str(out)],
    }[tool]
    command = [tool, *args, "--ckpt", str(tiny_ckpt), "--device", "cpu"]
    assert dmenet(command) == 2
    _one_line_naming(capsys.readouterr().err, tool, out)
    assert not out.exists() or _files(out) == []
    full_disk.off()
    assert dmenet(command) == 0  # nothing was left that a new run would refuse to overwrite
    assert _files(out) and not [f for f in _files(out) if Path(f).name.startswith(".")]


def test_syndof_export_keeps_whole_samples_only(tmp_path, full_disk, capsys):
    out = tmp_path / "syndof"
    command = ["syndof", "export", "--source", "embedded:1", "--size", "32", "40", "--num", "1",
               "--out", str(out), "--max-layers", "4"]
    assert dmenet(command) == 2
    _one_line_naming(capsys.readouterr().err, "syndof", out / "image")
    assert _files(out) == []
    full_disk.off()
    assert dmenet([*command, "--overwrite"]) == 0  # the empty subfolders are its own
    assert len(_files(out)) == 6  # one sample: image, four maps, camera


def test_onnx_export_leaves_no_partial_model(tiny_ckpt, tmp_path, monkeypatch, capsys):  # noqa: F811
    import torch

    class HalfSavedProgram:
        def save(self, path, **kwargs) -> None:
            Path(path).write_bytes(b"\x08\x07half a model")
            raise _no_space(path)

    # the writer is what is under test: the exporter itself is replaced by a stand-in
    monkeypatch.setattr(torch.export, "export", lambda *args, **kwargs: None)
    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: HalfSavedProgram())
    out = tmp_path / "onnx"
    assert dmenet(["export", "--ckpt", str(tiny_ckpt), "--out", str(out / "b.onnx")]) == 2
    _one_line_naming(capsys.readouterr().err, "export", out)
    assert _files(out) == []
