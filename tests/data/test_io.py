import cv2
import numpy as np
import pytest
import torch

from dmenet.data import io
from dmenet.errors import DataError, OutputExistsError


def test_16bit_rgb_png_keeps_precision(tmp_path):
    rgb16 = np.zeros((4, 5, 3), np.uint16)
    rgb16[..., 0] = 1000  # a value an 8-bit reader would lose
    rgb16[..., 2] = 65535
    cv2.imwrite(str(tmp_path / "a.png"), rgb16[..., ::-1])  # OpenCV writes BGR
    image = io.read_image(tmp_path / "a.png")
    assert image.shape == (4, 5, 3) and image.dtype == np.float32
    assert image[0, 0, 0] == pytest.approx(1000 / 65535)
    assert image[0, 0, 2] == pytest.approx(1.0)
    # the raw label reader keeps the integer values
    assert io.read_gray(tmp_path / "a.png").dtype == np.uint16


def test_grey_and_rgba_become_rgb(tmp_path):
    cv2.imwrite(str(tmp_path / "g.png"), np.full((3, 3), 128, np.uint8))
    cv2.imwrite(str(tmp_path / "a.png"), np.dstack([np.full((3, 3), v, np.uint8) for v in (10, 20, 30, 255)]))
    grey = io.read_image(tmp_path / "g.png")
    assert grey.shape == (3, 3, 3) and np.allclose(grey, 128 / 255)
    rgba = io.read_image(tmp_path / "a.png")
    assert rgba.shape == (3, 3, 3)
    assert np.allclose(rgba[0, 0], np.array([30, 20, 10]) / 255)  # BGRA file -> RGB


@pytest.mark.parametrize("name, array", [
    ("rgb8.png", np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)),
    ("grey16.png", (np.arange(20, dtype=np.uint16) * 3000).reshape(4, 5)),
    ("rgba8.png", np.arange(4 * 5 * 4, dtype=np.uint8).reshape(4, 5, 4)),
    ("float.tiff", np.linspace(0, 1, 60, dtype=np.float32).reshape(4, 5, 3)),
])
def test_read_photo_write_photo_keep_the_format(tmp_path, name, array):
    """A photo read with read_photo and written back unchanged with write_photo is the same
    file content: bit depth, grey or colour, alpha and channel order kept."""
    cv2.imwrite(str(tmp_path / name), array)
    colour, layout = io.read_photo(tmp_path / name)
    assert colour.dtype == torch.float32 and colour.shape[0] == (1 if array.ndim == 2 else 3)
    assert 0 <= float(colour.min()) and float(colour.max()) <= 1
    if array.ndim == 3:  # RGB order, like read_image
        assert np.allclose(colour.permute(1, 2, 0).numpy(), io.read_image(tmp_path / name))
    io.write_photo(tmp_path / f"out_{name}", colour, layout)
    again = io.read_raw(tmp_path / f"out_{name}")
    assert again.dtype == array.dtype and np.array_equal(again, array)


def test_bad_files_name_the_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        io.read_image(tmp_path / "missing.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match="empty.png: the file is empty"):
        io.read_image(tmp_path / "empty.png")
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="junk.jpg: not a readable image"):
        io.read_image(tmp_path / "junk.jpg")


def test_write_png16_roundtrip(tmp_path):
    values = np.array([[0.0, 10.4], [70.6, 65535.0]])
    io.write_png16(tmp_path / "l.png", values, channels=3)
    raw = io.read_raw(tmp_path / "l.png")
    assert raw.dtype == np.uint16 and raw.shape == (2, 2, 3)
    assert io.read_gray(tmp_path / "l.png").tolist() == [[0, 10], [71, 65535]]


def test_outputs_are_not_overwritten(tmp_path):
    out = tmp_path / "out"
    io.check_output_dir(out, overwrite=False)  # creates it
    (out / "x").write_text("work")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        io.check_output_dir(out, overwrite=False)
    assert io.check_output_dir(out, overwrite=True) == out
    with pytest.raises(OutputExistsError):
        io.check_output_file(out / "x", overwrite=False)


# ------------------------------------------------------------------ atomic outputs


def _no_space(path):
    import errno
    import os

    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_atomic_outputs_appear_together_only_when_all_are_written(tmp_path):
    out = tmp_path / "new" / "sub"
    paths = [out / "a.npy", out / "b.png", out / "c.json"]
    with io.atomic_outputs(*paths) as temporaries:
        assert [t.parent for t in temporaries] == [out] * 3  # same folder: a rename, not a copy
        assert [t.suffix for t in temporaries] == [".npy", ".png", ".json"]
        np.save(temporaries[0], np.arange(3))  # numpy keeps a name that ends in .npy
        io.write_png16(temporaries[1], np.full((4, 5), 7000.0))  # nested: its own temporary
        temporaries[2].write_text("{}")
        assert not any(p.exists() for p in paths)  # nothing under an output's name yet
    assert np.array_equal(np.load(paths[0]), np.arange(3))
    assert io.read_gray(paths[1]).max() == 7000 and paths[2].read_text() == "{}"
    assert sorted(p.name for p in out.iterdir()) == ["a.npy", "b.png", "c.json"]


def test_a_full_disk_mid_write_leaves_no_file_and_says_which_folder(tmp_path):
    from dmenet.errors import OutputWriteError

    out = tmp_path / "maps"
    with pytest.raises(OutputWriteError) as info:
        with io.atomic_outputs(out / "x_sigma_px.npy", out / "x.png") as (npy, png):
            np.save(npy, np.zeros((8, 8), np.float32))  # complete
            png.write_bytes(b"\x89PNG half")  # then the disk fills up mid-write
            raise _no_space(png)
    assert str(info.value) == (f"{out}: no space left on the device; x.png was not written "
                               "(free some space or write elsewhere)")
    assert info.value.errno == 28 and "\n" not in str(info.value)
    assert not tmp_path.joinpath("maps").exists()  # the folder it made is gone again
    assert list(tmp_path.iterdir()) == []


def test_an_interrupt_or_another_error_leaves_no_file(tmp_path):
    from dmenet.errors import OutputWriteError

    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(KeyboardInterrupt):
        with io.atomic_outputs(tmp_path / "a.json") as (temporary,):
            temporary.write_text("{half")
            raise KeyboardInterrupt
    with pytest.raises(OutputWriteError, match=r"b.json: could not be written \(Permission denied\)"):
        with io.atomic_outputs(tmp_path / "b.json") as (temporary,):
            import errno

            raise PermissionError(errno.EACCES, "Permission denied", str(temporary))
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]  # folders it did not make stay
    # an existing output is replaced only by a complete file
    (tmp_path / "keep.txt").write_text("old")
    with pytest.raises(OutputWriteError):
        with io.atomic_outputs(tmp_path / "keep.txt") as (temporary,):
            temporary.write_text("new, half")
            raise _no_space(temporary)
    assert (tmp_path / "keep.txt").read_text() == "old"
