"""Reader of the released SYNDOF files (dmenet/data/syndof_files.py) on tiny generated files."""

from __future__ import annotations

import numpy as np
import pytest

from dmenet.data.io import write_png16
from dmenet.data.syndof_files import ReleasedSyndof
from dmenet.errors import ConfigError, DataError
from dmenet.labels import SIGMA_MAX_PX, to_sigma_px
from tests.data.test_real import H, W, _write, make_syndof


class TestReleasedSyndof:
    @pytest.mark.parametrize("space", ["released", "generator", "ours"])
    def test_label_spaces(self, tmp_path, space):
        ds = ReleasedSyndof(make_syndof(tmp_path), label_space=space)
        item = ds[0]
        sigma = float(to_sigma_px(np.float32(3.5 / {"released": 15, "generator": 7,
                                                     "ours": SIGMA_MAX_PX}[space]), space))
        assert item["sigma_px"][0, -1, 0].item() == pytest.approx(sigma, rel=1e-5)
        assert item["label"][0, -1, 0].item() == pytest.approx(sigma / SIGMA_MAX_PX, rel=1e-5)
        assert 0 <= item["label"].min() and item["label"].max() <= 1

    def test_released_values(self, tmp_path):
        item = ReleasedSyndof(make_syndof(tmp_path, value=15.0), "released")[0]
        assert item["sigma_px"][0, -1, 0].item() == pytest.approx(7.0)  # (15 - 1) / 2
        assert item["sigma_px"][0, 0, 0].item() == pytest.approx(0.0)
        gen = ReleasedSyndof(make_syndof(tmp_path / "g", value=3.5), "generator")[0]
        assert gen["sigma_px"][0, -1, 0].item() == pytest.approx(3.5)

    def test_test_layout(self, tmp_path):
        ds = ReleasedSyndof(make_syndof(tmp_path, label_dir="gt"), "generator")
        assert len(ds) == 3 and ds[0]["set"] == "syndof"

    def test_bad_input(self, tmp_path):
        root = make_syndof(tmp_path)
        with pytest.raises(ConfigError, match="label_space 'x'.*released"):
            ReleasedSyndof(root, "x")
        write_png16(root / "blur_map" / "00001.png", np.zeros((H, W + 1)), channels=3)
        with pytest.raises(DataError, match="00001.png: size"):
            ReleasedSyndof(root, "released")[1]
        (root / "blur_map" / "00002.png").unlink()
        with pytest.raises(DataError, match="00002.png: no label"):
            ReleasedSyndof(root, "released")
        with pytest.raises(DataError, match="SYNDOF root does not exist"):
            ReleasedSyndof(tmp_path / "none", "released")

    def test_8bit_label_warns(self, tmp_path):
        root = make_syndof(tmp_path, n=1)
        _write(root / "blur_map" / "00000.png", np.full((H, W), 20, np.uint8))
        with pytest.warns(UserWarning, match="8-bit label"):
            ReleasedSyndof(root, "generator")[0]
