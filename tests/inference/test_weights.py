"""Named weights (``dmenet_bdcs``): fetched, converted, cached and verified, with no internet.

A local HTTP server (``http.server`` in a thread on 127.0.0.1) serves ``DMENet_BDCS.zip``
holding, in a subfolder, a ``DMENet_BDCS.npz`` in the published TensorLayer layout with random
weights (tests/inference/official_npz.py), and broken variants of it. ``DMENET_MIRROR`` points
at the server and ``DMENET_HOME`` at a temporary folder in every test (tests/conftest.py points
them at a refusing port and an empty folder for all other tests).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import json
import os
import shutil
import socket
import threading
import types
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import dmenet
from dmenet import weights
from dmenet.checkpoint import load_checkpoint
from dmenet.cli import main as dmenet_cli
from dmenet.weights import resolve_checkpoint
from tests.inference.conftest import smooth_rgb
from tests.inference.official_npz import DEC, calibrated_arrays

NAME = "dmenet_bdcs"
ARCHIVE, NPZ = "DMENet_BDCS.zip", "DMENet_BDCS.npz"
CACHED = {f"{NAME}.ckpt", f"{NAME}.json", f".{NAME}.lock"}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET of a served path: the file; ``/cut/...``: the full Content-Length, then half the
    bytes and a closed connection (an interrupted download); anything else: 404."""

    def do_GET(self) -> None:  # noqa: N802  (http.server's name)
        self.server.requests.append(self.path)
        path = self.server.files.get(self.path)
        if path is None:
            self.send_error(404, "File not found")
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2] if self.path.startswith("/cut/") else data)
        self.close_connection = True

    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.fixture(scope="session")
def official(tmp_path_factory) -> types.SimpleNamespace:
    """The archives the server serves (files on disk) and one array to recognise the weights."""
    folder = tmp_path_factory.mktemp("official")
    arrays = calibrated_arrays()
    npz = folder / NPZ
    np.savez(npz, **arrays)  # what tl.files.save_npz_dict writes
    head = arrays[f"{DEC}uf/c3/kernel:0"].copy()  # B's last conv, (kh, kw, in, out)
    del arrays
    good = folder / "good.zip"
    with zipfile.ZipFile(good, "w", zipfile.ZIP_STORED) as zf:  # the inner layout is unknown
        zf.writestr("DMENet_BDCS/README.txt", "weights\n")
        zf.write(npz, f"DMENet_BDCS/checkpoint/{NPZ}")
    no_npz = folder / "no_npz.zip"
    with zipfile.ZipFile(no_npz, "w") as zf:
        zf.writestr("DMENet_BDCS/README.txt", "weights\n")
        zf.writestr("DMENet_BDCS/DMENet_BDCS.npz.txt", "not it\n")
    wrong = folder / "wrong_layout.npz"
    np.savez(wrong, **{"encoder/conv1_1/W:0": np.zeros((3, 3, 3, 64), np.float32)})
    wrong_layout = folder / "wrong_layout.zip"
    with zipfile.ZipFile(wrong_layout, "w") as zf:
        zf.write(wrong, NPZ)
    not_zip = folder / "not_zip.zip"
    not_zip.write_text("<html>This link has expired</html>\n")
    return types.SimpleNamespace(npz=npz, zip=good, head=head, no_npz=no_npz,
                                 wrong_layout=wrong_layout, not_zip=not_zip)


@pytest.fixture(scope="session")
def server(official):
    """The local mirror: ``server.url + "/good"`` etc. are ``DMENET_MIRROR`` prefixes;
    ``server.requests`` lists every path requested."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.requests = []
    srv.files = {f"/{prefix}/{ARCHIVE}": path for prefix, path in (
        ("good", official.zip), ("cut", official.zip), ("no_npz", official.no_npz),
        ("wrong_layout", official.wrong_layout), ("not_zip", official.not_zip))}
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture()
def refused_url() -> str:
    """A local URL where nothing listens: the connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(autouse=True, scope="session")
def _no_proxy():
    """The local server is reached directly, whatever proxy the machine has."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("no_proxy", "127.0.0.1,localhost")
        patch.setenv("NO_PROXY", "127.0.0.1,localhost")
        yield


@pytest.fixture(scope="module")
def fetched(server, tmp_path_factory) -> types.SimpleNamespace:
    """The first use of the name, in a fresh cache, with a mirror list whose first entry 404s:
    the cache folder, what it printed, and the requests it made."""
    home = tmp_path_factory.mktemp("home")
    before = len(server.requests)
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(weights.HOME_ENV, str(home))
        patch.setenv(weights.MIRROR_ENV, f"{server.url}/missing, {server.url}/good")
        patch.setattr(weights, "ANNOUNCED", set())  # as in a fresh process
        with contextlib.redirect_stderr(err):
            first = resolve_checkpoint(NAME)
            second = resolve_checkpoint(NAME)
    return types.SimpleNamespace(home=home, path=first, again=second, stderr=err.getvalue(),
                                 requests=server.requests[before:])


@pytest.fixture()
def cached(fetched, server, monkeypatch) -> types.SimpleNamespace:
    """The environment of a later use: the filled cache, the mirror still there."""
    monkeypatch.setenv(weights.HOME_ENV, str(fetched.home))
    monkeypatch.setenv(weights.MIRROR_ENV, f"{server.url}/good")
    return fetched


@pytest.fixture()
def photo(tmp_path) -> Path:
    path = tmp_path / "photo.jpg"
    cv2.imwrite(str(path), (smooth_rgb(32, 48, seed=5)[:, :, ::-1] * 255).round().astype(np.uint8))
    return path


def _lines(text: str, word: str) -> list[str]:
    return [line for line in text.splitlines() if word in line]


# ------------------------------------------------------------------ first and later uses
def test_first_use_downloads_converts_and_caches(fetched, official, server):
    assert fetched.path == fetched.home / f"{NAME}.ckpt" == fetched.again
    assert set(os.listdir(fetched.home)) == CACHED  # nothing temporary left behind
    record = json.loads((fetched.home / f"{NAME}.json").read_text())
    assert record["source"]["url"] == f"{server.url}/good/{ARCHIVE}"
    assert record["source"]["sha256"] == _sha256(official.zip)  # the downloaded file's
    assert record["checkpoint"]["sha256"] == _sha256(fetched.path)
    assert record["checkpoint"]["bytes"] == fetched.path.stat().st_size
    assert "AGPL-3.0" in record["licence"] and "codeslake/DMENet" in record["origin"]
    # printed: the download's SHA-256, and the origin and licence once for the two uses
    assert _lines(fetched.stderr, f"SHA-256 {_sha256(official.zip)}")
    assert len(_lines(fetched.stderr, "licence AGPL-3.0")) == 1
    assert "codeslake/DMENet" in _lines(fetched.stderr, "licence AGPL-3.0")[0]
    # the converted weights of this npz: B's last conv, and the released label space
    ckpt = load_checkpoint(fetched.path)
    assert ckpt.label_space == "released"
    assert set(ckpt.parts) == {"blur_estimator", "sharpness_calibrator", "domain_discriminator"}
    torch.testing.assert_close(ckpt.part_state("blur_estimator")["head.2.weight"],
                               torch.from_numpy(official.head).permute(3, 2, 0, 1))


def test_a_404_on_the_first_mirror_falls_through_to_the_next(fetched, server):
    assert fetched.requests == [f"/missing/{ARCHIVE}", f"/good/{ARCHIVE}"]  # then never again
    assert _lines(fetched.stderr, f"downloading {server.url}/missing/{ARCHIVE}")


def test_a_later_use_is_served_from_the_cache(cached, server, capsys):
    before = len(server.requests)
    assert resolve_checkpoint(NAME) == cached.path
    assert dmenet_cli(["weights"]) == 0
    assert len(server.requests) == before
    out = capsys.readouterr().out
    assert f"cached:  {cached.path}" in out and f"{server.url}/good/{ARCHIVE}" in out
    assert "AGPL-3.0" in out


def test_infer_without_ckpt_uses_the_published_weights(cached, server, photo, tmp_path, capsys):
    before = len(server.requests)
    out = tmp_path / "maps"
    assert dmenet_cli(["infer", str(photo), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert len(_lines(err, "no --ckpt given")) == 1 and NAME in _lines(err, "no --ckpt given")[0]
    meta = json.loads((out / "photo_defocus.json").read_text())
    assert meta["checkpoint"] == NAME
    assert meta["weights"]["file"] == str(cached.path)
    assert "AGPL-3.0" in meta["weights"]["licence"]
    assert meta["weights"]["source"]["url"] == f"{server.url}/good/{ARCHIVE}"
    assert meta["label_space"] == "released"
    sigma = np.load(out / "photo_sigma_px.npy")
    assert sigma.shape == (32, 48) and np.isfinite(sigma).all() and float(sigma.std()) > 1e-4
    # the same map by name, explicitly
    assert dmenet_cli(["infer", str(photo), "--ckpt", NAME, "--out", str(tmp_path / "again")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "again" / "photo_sigma_px.npy"), sigma)
    assert len(server.requests) == before


def test_load_and_torch_hub_give_the_same_map(cached, server, photo, repo_root):
    before = len(server.requests)
    by_load = dmenet.load(NAME, device="cpu").predict(photo)
    hub = torch.hub.load(str(repo_root), NAME, source="local", device="cpu")
    np.testing.assert_array_equal(hub.predict(photo), by_load)
    assert float(by_load.std()) > 1e-4
    assert hub.describe["checkpoint"] == NAME
    assert len(server.requests) == before


def test_magnify_depth_and_init_from_accept_the_name(cached, photo, tmp_path):
    from dmenet.lightning_model import DMENet

    out = tmp_path / "bokeh.png"
    assert dmenet_cli(["magnify", str(photo), "--ckpt", NAME, "--factor", "2", "--out", str(out)]) == 0
    assert json.loads((tmp_path / "bokeh_magnify.json").read_text())["checkpoint"] == NAME
    assert dmenet_cli(["depth", str(photo), "--out", str(tmp_path / "depth.png")]) == 0  # default
    assert json.loads((tmp_path / "depth.json").read_text())["checkpoint"] == NAME
    # what `dmenet fit --model.init_from dmenet_bdcs` builds
    model = DMENet(init_from=NAME, content_loss=False, vgg_weights=None)
    assert model.hparams.label_space == "released"
    state = load_checkpoint(cached.path).part_state("sharpness_calibrator")
    torch.testing.assert_close(model.sharpness_calibrator.state_dict()["logit.weight"],
                               state["logit.weight"])


# ------------------------------------------------------------------ a damaged cache
def test_a_damaged_cache_is_detected_and_fetched_again(fetched, server, tmp_path, monkeypatch,
                                                       capsys):
    home = tmp_path / "home"
    shutil.copytree(fetched.home, home)
    ckpt = home / f"{NAME}.ckpt"
    monkeypatch.setenv(weights.HOME_ENV, str(home))
    monkeypatch.setenv(weights.MIRROR_ENV, f"{server.url}/good")
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) - 1000])  # truncated
    assert dmenet_cli(["weights"]) == 0
    assert "truncated" in capsys.readouterr().out
    altered = bytearray(data)
    altered[len(data) // 2] ^= 0xFF  # same size, one byte changed
    ckpt.write_bytes(bytes(altered))
    before = len(server.requests)
    assert resolve_checkpoint(NAME) == ckpt
    assert server.requests[before:] == [f"/good/{ARCHIVE}"]
    assert _lines(capsys.readouterr().err, "SHA-256 differs from its record")
    record = json.loads((home / f"{NAME}.json").read_text())
    assert record["checkpoint"]["sha256"] == _sha256(ckpt) != hashlib.sha256(altered).hexdigest()
    assert set(os.listdir(home)) == CACHED


# ------------------------------------------------------------------ failures: one line, no file
def _one_error_line(err: str) -> str:
    errors = _lines(err, "error:")
    assert len(errors) == 1, err
    return errors[0]


def test_no_network_is_one_line_and_leaves_no_file(refused_url, photo, tmp_path, monkeypatch, capsys):
    home, out = tmp_path / "home", tmp_path / "maps"
    monkeypatch.setenv(weights.HOME_ENV, str(home))
    monkeypatch.setenv(weights.MIRROR_ENV, refused_url)
    assert dmenet_cli(["infer", str(photo), "--out", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"{refused_url}/{ARCHIVE}" in line and "Connection refused" in line
    assert str(home) in line and ARCHIVE in line and NPZ in line and "by hand" in line
    assert set(os.listdir(home)) <= {f".{NAME}.lock"} and not out.exists()


def test_the_authors_urls_are_the_default(monkeypatch):
    monkeypatch.delenv(weights.MIRROR_ENV)
    urls = weights.weights_urls(NAME)
    assert urls[0].startswith("https://www.dropbox.com/") and "onedrive" in urls[1]
    monkeypatch.setenv(weights.MIRROR_ENV, "https://a.example/x/ , https://b.example")
    assert weights.weights_urls(NAME) == [f"https://a.example/x/{ARCHIVE}", f"https://b.example/{ARCHIVE}"]


@pytest.mark.parametrize("prefix,message", [
    ("cut", "not a readable zip file"),  # urllib does not notice the short body; zipfile does
    ("not_zip", "not a readable zip file"),
    ("no_npz", f"the zip holds no {NPZ} (it has: DMENet_BDCS/README.txt"),
    ("wrong_layout", f"{NPZ} in {{url}}/wrong_layout/{ARCHIVE}: "),
])
def test_a_bad_download_is_one_line_naming_it_and_leaves_no_file(server, tmp_path, monkeypatch,
                                                                capsys, prefix, message):
    home = tmp_path / "home"
    monkeypatch.setenv(weights.HOME_ENV, str(home))
    monkeypatch.setenv(weights.MIRROR_ENV, f"{server.url}/{prefix}")
    assert dmenet_cli(["weights", "--fetch", NAME]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"{server.url}/{prefix}/{ARCHIVE}" in line and message.format(url=server.url) in line
    assert set(os.listdir(home)) <= {f".{NAME}.lock"}


# ------------------------------------------------------------------ placed by hand
@pytest.mark.parametrize("placed", ["zip", "npz"])
def test_a_file_placed_by_hand_is_used_without_the_network(official, refused_url, tmp_path,
                                                           monkeypatch, placed):
    home = tmp_path / "home"
    home.mkdir()
    source = official.zip if placed == "zip" else official.npz
    shutil.copy(source, home / (ARCHIVE if placed == "zip" else NPZ))
    monkeypatch.setenv(weights.HOME_ENV, str(home))
    monkeypatch.setenv(weights.MIRROR_ENV, refused_url)  # any download would fail
    ckpt = resolve_checkpoint(NAME)
    record = json.loads((home / f"{NAME}.json").read_text())
    assert record["source"]["sha256"] == _sha256(source)
    assert record["checkpoint"]["sha256"] == _sha256(ckpt)
    torch.testing.assert_close(load_checkpoint(ckpt).part_state("blur_estimator")["head.2.weight"],
                               torch.from_numpy(official.head).permute(3, 2, 0, 1))


# ------------------------------------------------------------------ the console command
def test_dmenet_infer_photo_from_a_fresh_cache(server, photo, tmp_path, monkeypatch, capsys):
    """``dmenet infer photo.jpg`` with an empty cache: downloads, converts, caches, writes the
    maps into the current folder (the console script itself: tests/test_cli.py)."""
    home = tmp_path / "home"
    monkeypatch.setenv(weights.HOME_ENV, str(home))
    monkeypatch.setenv(weights.MIRROR_ENV, f"{server.url}/good")
    monkeypatch.setattr(weights, "ANNOUNCED", set())  # as in a fresh process
    monkeypatch.chdir(tmp_path)
    assert dmenet_cli(["infer", str(photo)]) == 0
    err = capsys.readouterr().err
    assert (tmp_path / "photo_sigma_px.npy").is_file()
    assert json.loads((tmp_path / "photo_defocus.json").read_text())["checkpoint"] == NAME
    assert set(os.listdir(home)) == CACHED
    assert _lines(err, "SHA-256") and _lines(err, "licence AGPL-3.0")

