"""RGB-D sources for SYNDOF (SPEC section 2): each a Dataset yielding
``{"image": (3, H, W) float32 in [0, 1], "depth_mm": (1, H, W) float32, "name": str}``.

Depth is returned as read (converted to mm): invalid values (NaN for missing disparity, +inf
for SYNTHIA's 65535 "far", Sintel's 1e11 sky x 1000) stay in the map; the renderer applies the
one invalid-depth rule (:func:`dmenet.data.thin_lens.clean_depth_mm`).

Sources: :class:`SintelRGBD` (``.dpt``), :class:`SynthiaRGBD` (16-bit PNG, cm),
:class:`MiddleburyRGBD` (``disp0.pfm`` + ``calib.txt``), :class:`FolderRGBD`
(``image/NAME.png|jpg`` + ``depth/NAME.npy|png|pfm|dpt`` in mm x ``depth_scale_to_mm``),
:class:`EmbeddedRGBD` (scikit-image's Middlebury motorcycle + procedural scenes; no download).
:func:`make_rgbd_source` parses the CLI's ``KIND:PATH``; :func:`drop_near_duplicates` keeps
only dissimilar consecutive frames (the paper kept 2,006 dissimilar video frames).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from dmenet.data.io import is_image_file, load_npy, read_image, read_raw
from dmenet.errors import DataError

__all__ = [
    "DPT_TAG",
    "read_dpt",
    "write_dpt",
    "read_pfm",
    "write_pfm",
    "read_middlebury_calib",
    "disparity_to_depth_mm",
    "RGBDSource",
    "SintelRGBD",
    "SynthiaRGBD",
    "MiddleburyRGBD",
    "FolderRGBD",
    "EmbeddedRGBD",
    "RGBD_KINDS",
    "make_rgbd_source",
    "perceptual_hash",
    "drop_near_duplicates",
]

DPT_TAG = 202021.25
"""First float32 of a Sintel ``.dpt`` file."""

SINTEL_TO_MM = 1000.0  # the reference multiplies Sintel depth by 1000
SYNTHIA_CM_TO_MM = 10.0
SYNTHIA_FAR = 65535

# scikit-image's stereo_motorcycle (Middlebury 2014, x4 downsampled): SPEC section 2
MOTORCYCLE_CALIB = {"f_px": 994.978, "baseline_mm": 193.001, "doffs_px": 31.086}


# ---------------------------------------------------------------------------------------------
# file formats


def read_dpt(path: str | Path) -> np.ndarray:
    """Sintel ``.dpt``: float32 tag, int32 width, int32 height, then float32 depths. ``(H, W)``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    raw = path.read_bytes()
    if len(raw) < 12:
        raise DataError(f"{path}: too short for a Sintel .dpt file ({len(raw)} bytes)")
    tag = np.frombuffer(raw, dtype="<f4", count=1)[0]
    if abs(float(tag) - DPT_TAG) > 1e-3:
        raise DataError(f"{path}: not a Sintel .dpt file (tag {tag}, expected {DPT_TAG})")
    width, height = (int(v) for v in np.frombuffer(raw, dtype="<i4", count=2, offset=4))
    if width <= 0 or height <= 0 or width * height > 100_000_000:
        raise DataError(f"{path}: implausible size {width}x{height}")
    if len(raw) < 12 + 4 * width * height:
        raise DataError(f"{path}: truncated ({len(raw)} bytes for {width}x{height} depths)")
    data = np.frombuffer(raw, dtype="<f4", count=width * height, offset=12)
    return data.reshape(height, width).astype(np.float32)


def write_dpt(path: str | Path, depth: np.ndarray) -> None:
    """Write a ``(H, W)`` float map as a Sintel ``.dpt`` file."""
    depth = np.asarray(depth, dtype="<f4")
    h, w = depth.shape
    with open(path, "wb") as fh:
        fh.write(np.array([DPT_TAG], dtype="<f4").tobytes())
        fh.write(np.array([w, h], dtype="<i4").tobytes())
        fh.write(depth.tobytes())


def read_pfm(path: str | Path) -> np.ndarray:
    """Portable float map (``Pf`` grey or ``PF`` colour: first channel). ``(H, W)`` float32,
    top row first (PFM stores rows bottom to top)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    raw = path.read_bytes()
    parts = raw.split(b"\n", 3)
    try:
        kind = parts[0].strip()
        width, height = (int(v) for v in parts[1].split())
        scale = float(parts[2].strip())
        payload = parts[3]
    except (IndexError, ValueError) as exc:
        raise DataError(f"{path}: not a PFM file (bad header)") from exc
    if kind not in (b"Pf", b"PF"):
        raise DataError(f"{path}: not a PFM file (magic {kind[:8]!r})")
    channels = 3 if kind == b"PF" else 1
    dtype = "<f4" if scale < 0 else ">f4"
    count = width * height * channels
    if len(payload) < 4 * count:
        raise DataError(f"{path}: truncated PFM ({len(payload)} bytes for {width}x{height})")
    data = np.frombuffer(payload, dtype=dtype, count=count).reshape(height, width, channels)
    return np.ascontiguousarray(data[::-1, :, 0]).astype(np.float32)


def write_pfm(path: str | Path, array: np.ndarray) -> None:
    """Write a ``(H, W)`` float map as a little-endian grey PFM."""
    array = np.asarray(array, dtype="<f4")
    h, w = array.shape
    with open(path, "wb") as fh:
        fh.write(f"Pf\n{w} {h}\n-1.0\n".encode())
        fh.write(np.ascontiguousarray(array[::-1]).tobytes())


def read_middlebury_calib(path: str | Path) -> dict[str, float]:
    """``calib.txt`` -> ``{"f_px", "baseline_mm", "doffs_px"}`` (f = cam0's first entry)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    text = path.read_text(errors="replace")
    values: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    try:
        f_px = float(re.split(r"[\s;\[\]]+", values["cam0"].strip("[] "))[0])
        baseline = float(values["baseline"])
        doffs = float(values.get("doffs", "0"))
    except (KeyError, ValueError, IndexError) as exc:
        raise DataError(f"{path}: not a Middlebury calib.txt (need cam0, baseline, doffs)") from exc
    return {"f_px": f_px, "baseline_mm": baseline, "doffs_px": doffs}


def disparity_to_depth_mm(disp_px: np.ndarray, f_px: float, baseline_mm: float,
                          doffs_px: float) -> np.ndarray:
    """``depth_mm = baseline * f / (disp + doffs)``; invalid disparities (non-finite, or
    ``disp + doffs <= 0``) become NaN."""
    disp = np.asarray(disp_px, dtype=np.float64) + doffs_px
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = baseline_mm * f_px / disp
    depth[~np.isfinite(disp) | (disp <= 0)] = np.nan
    return depth.astype(np.float32)


def _read_depth_png(path: Path) -> np.ndarray:
    raw = read_raw(path)
    if raw.ndim == 3:
        raw = raw[:, :, 0]  # SYNDOF/SYNTHIA depth PNGs hold equal channels
    return raw


# ---------------------------------------------------------------------------------------------
# datasets


def _sample(image: np.ndarray | torch.Tensor, depth_mm: np.ndarray | torch.Tensor, name: str,
            where: str) -> dict:
    img = image if torch.is_tensor(image) else torch.from_numpy(
        np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1)))
    depth = depth_mm if torch.is_tensor(depth_mm) else torch.from_numpy(
        np.ascontiguousarray(depth_mm, dtype=np.float32))
    if depth.dim() == 2:
        depth = depth[None]
    if img.shape[-2:] != depth.shape[-2:]:
        raise DataError(f"{where}: image is {tuple(img.shape[-2:])} but depth is "
                        f"{tuple(depth.shape[-2:])} (height, width)")
    return {"image": img.float(), "depth_mm": depth.float(), "name": name}


class RGBDSource(Dataset):
    """Base: a list of items and ``load(i)``; refuses an empty source with a clear error."""

    kind = "rgbd"

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root) if root is not None else None
        if self.root is not None and not self.root.exists():
            raise DataError(f"{self.root}: no such folder ({self.kind} source)")
        self.items: list = []

    def _require_items(self, what: str) -> None:
        if not self.items:
            raise DataError(f"{self.root}: no {what} found (empty {self.kind} source)")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.load(index)

    def load(self, index: int) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def name(self, index: int) -> str:
        return str(index)


class SintelRGBD(RGBDSource):
    """MPI Sintel + depth: ``ROOT/{clean|final}/SCENE/frame_NNNN.png`` beside
    ``ROOT/depth/SCENE/frame_NNNN.dpt`` (``ROOT`` = ``training``; its parent works too).
    Depth x 1000 -> mm; the 1e11 sky stays (invalid, see the module docstring)."""

    kind = "sintel"

    def __init__(self, root: str | Path, pass_: str = "clean") -> None:
        super().__init__(root)
        if pass_ not in ("clean", "final", "albedo"):
            raise ValueError(f"unknown Sintel pass {pass_!r}; choose clean or final")
        base = self.root
        if not (base / "depth").is_dir() and (base / "training" / "depth").is_dir():
            base = base / "training"
        self.base, self.pass_ = base, pass_
        for dpt in sorted((base / "depth").glob("*/*.dpt")):
            image = base / pass_ / dpt.parent.name / (dpt.stem + ".png")
            if image.is_file():
                self.items.append((image, dpt))
        self._require_items(f"Sintel frames ({pass_}/SCENE/*.png with depth/SCENE/*.dpt)")

    def name(self, index: int) -> str:
        image, _ = self.items[index]
        return f"{image.parent.name}_{image.stem}"

    def load(self, index: int) -> dict:
        image, dpt = self.items[index]
        return _sample(read_image(image), read_dpt(dpt) * SINTEL_TO_MM, self.name(index), str(dpt))


class SynthiaRGBD(RGBDSource):
    """SYNTHIA: ``.../RGB/<cam>/NNNNNN.png`` with ``.../Depth/<cam>/NNNNNN.png`` (16-bit,
    centimetres; 65535 = far -> +inf, invalid)."""

    kind = "synthia"

    def __init__(self, root: str | Path) -> None:
        super().__init__(root)
        for image in sorted(self.root.rglob("*.png")):
            parts = image.parts
            if "RGB" not in parts:
                continue
            i = len(parts) - 1 - parts[::-1].index("RGB")
            depth = Path(*parts[:i], "Depth", *parts[i + 1:])
            if depth.is_file():
                self.items.append((image, depth))
        self._require_items("SYNTHIA frames (RGB/**/*.png with Depth/**/*.png)")

    def name(self, index: int) -> str:
        image, _ = self.items[index]
        rel = image.relative_to(self.root).with_suffix("")
        return "_".join(p for p in rel.parts if p != "RGB")

    def load(self, index: int) -> dict:
        image, depth_path = self.items[index]
        raw = _read_depth_png(depth_path)
        if raw.dtype != np.uint16:
            raise DataError(f"{depth_path}: SYNTHIA depth must be a 16-bit PNG, got {raw.dtype}")
        depth = raw.astype(np.float32) * SYNTHIA_CM_TO_MM
        depth[raw == SYNTHIA_FAR] = np.inf
        return _sample(read_image(image), depth, self.name(index), str(depth_path))


class MiddleburyRGBD(RGBDSource):
    """Middlebury 2014 scenes: ``SCENE/im0.png`` + ``SCENE/disp0.pfm`` + ``SCENE/calib.txt``
    (``root`` is one scene or a folder of scenes). Without ``disp0.pfm``, a ``depth_cm16.png``
    (the SYNDOF reference's 16-bit depth in cm) is used. Invalid disparities -> NaN."""

    kind = "middlebury"

    def __init__(self, root: str | Path) -> None:
        super().__init__(root)
        scenes = [self.root] + sorted(p for p in self.root.iterdir() if p.is_dir()) \
            if self.root.is_dir() else []
        for scene in scenes:
            if not (scene / "im0.png").is_file():
                continue
            if (scene / "disp0.pfm").is_file() and (scene / "calib.txt").is_file():
                self.items.append((scene, "disp"))
            elif (scene / "depth_cm16.png").is_file():
                self.items.append((scene, "cm16"))
        self._require_items("Middlebury scenes (im0.png + disp0.pfm + calib.txt)")

    def name(self, index: int) -> str:
        return self.items[index][0].name

    def load(self, index: int) -> dict:
        scene, kind = self.items[index]
        image = read_image(scene / "im0.png")
        if kind == "disp":
            calib = read_middlebury_calib(scene / "calib.txt")
            depth = disparity_to_depth_mm(read_pfm(scene / "disp0.pfm"), **calib)
        else:
            raw = _read_depth_png(scene / "depth_cm16.png").astype(np.float32)
            depth = np.where(raw > 0, raw * SYNTHIA_CM_TO_MM, np.nan).astype(np.float32)
        return _sample(image, depth, self.name(index), str(scene))


DEPTH_EXTENSIONS = (".npy", ".png", ".pfm", ".dpt", ".tif", ".tiff", ".exr")


def read_depth_file(path: str | Path) -> np.ndarray:
    """A depth map file as float32 ``(H, W)`` in the file's own unit."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        array = load_npy(path)
        array = np.squeeze(array)
        if array.ndim != 2:
            raise DataError(f"{path}: a depth map must be 2-D, got shape {array.shape}")
        return array.astype(np.float32)
    if suffix == ".pfm":
        return read_pfm(path)
    if suffix == ".dpt":
        return read_dpt(path)
    return _read_depth_png(path).astype(np.float32)


class FolderRGBD(RGBDSource):
    """A generic folder: ``image/NAME.png|jpg`` + ``depth/NAME.npy|png|pfm|dpt``; depth in mm
    after multiplying by ``depth_scale_to_mm`` (e.g. 10 for centimetres)."""

    kind = "folder"

    def __init__(self, root: str | Path, depth_scale_to_mm: float = 1.0) -> None:
        super().__init__(root)
        if not depth_scale_to_mm > 0:
            raise DataError(f"depth_scale_to_mm must be > 0, got {depth_scale_to_mm}")
        self.depth_scale_to_mm = float(depth_scale_to_mm)
        image_dir, depth_dir = self.root / "image", self.root / "depth"
        if not image_dir.is_dir() or not depth_dir.is_dir():
            raise DataError(f"{self.root}: a folder source needs image/ and depth/ subfolders")
        depths = {p.stem: p for p in sorted(depth_dir.iterdir())
                  if p.suffix.lower() in DEPTH_EXTENSIONS}
        for image in sorted(image_dir.iterdir()):
            if is_image_file(image) and image.stem in depths:
                self.items.append((image, depths[image.stem]))
        self._require_items("image/NAME + depth/NAME pairs")

    def name(self, index: int) -> str:
        return self.items[index][0].stem

    def load(self, index: int) -> dict:
        image, depth = self.items[index]
        return _sample(read_image(image), read_depth_file(depth) * self.depth_scale_to_mm,
                       self.name(index), str(depth))


class EmbeddedRGBD(RGBDSource):
    """Needs no download: scikit-image's Middlebury 2014 motorcycle (its own size, depth from
    the shipped disparity and calibration) plus ``num_scenes`` procedural scenes of
    ``size = (H, W)`` (:func:`dmenet.data.procedural.make_scene`, seeds ``seed + i``)."""

    kind = "embedded"

    def __init__(self, num_scenes: int = 16, size: tuple[int, int] = (240, 320), seed: int = 0,
                 include_motorcycle: bool = True) -> None:
        super().__init__(None)
        if num_scenes < 0:
            raise DataError(f"num_scenes must be >= 0, got {num_scenes}")
        self.size, self.seed = tuple(size), int(seed)
        if include_motorcycle:
            self.items.append("motorcycle")
        self.items += [f"scene_{seed + i:05d}" for i in range(num_scenes)]
        if not self.items:
            raise DataError("embedded source: no scenes (num_scenes=0 without the motorcycle)")

    def name(self, index: int) -> str:
        return self.items[index]

    def load(self, index: int) -> dict:
        item = self.items[index]
        if item == "motorcycle":
            from skimage import data

            left, _, disp = data.stereo_motorcycle()
            depth = disparity_to_depth_mm(disp, **MOTORCYCLE_CALIB)
            return _sample(left.astype(np.float32) / 255.0, depth, item, "stereo_motorcycle")
        from dmenet.data.procedural import make_scene

        image, depth = make_scene(self.size, seed=int(item.split("_")[1]))
        return _sample(image, depth, item, item)


RGBD_KINDS: tuple[str, ...] = ("sintel", "synthia", "middlebury", "folder", "embedded")


def make_rgbd_source(spec: str, **options) -> RGBDSource:
    """``"KIND:PATH"`` -> a source. ``embedded`` takes no path, or ``embedded:N`` for N
    procedural scenes. ``options`` go to the constructor (``depth_scale_to_mm``, ``pass_``,
    ``size``, ``seed``)."""
    kind, _, path = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in RGBD_KINDS:
        raise DataError(f"unknown source kind {kind!r} in {spec!r}; choose one of "
                        f"{', '.join(RGBD_KINDS)} (as KIND:PATH)")
    if kind == "embedded":
        if path:
            try:
                options.setdefault("num_scenes", int(path))
            except ValueError as exc:
                raise DataError(f"embedded source takes a number of scenes, got {path!r}") from exc
        options.pop("depth_scale_to_mm", None)
        options.pop("pass_", None)
        return EmbeddedRGBD(**options)
    if not path:
        raise DataError(f"source {spec!r} needs a path: {kind}:PATH")
    options.pop("size", None)
    options.pop("seed", None)
    if kind == "sintel":
        return SintelRGBD(path, pass_=options.get("pass_", "clean"))
    if kind == "synthia":
        return SynthiaRGBD(path)
    if kind == "middlebury":
        return MiddleburyRGBD(path)
    return FolderRGBD(path, depth_scale_to_mm=options.get("depth_scale_to_mm", 1.0))


# ---------------------------------------------------------------------------------------------
# near-duplicate filtering


def _gray_small(image: torch.Tensor, side: int) -> np.ndarray:
    import cv2

    rgb = image.permute(1, 2, 0).numpy()
    gray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return cv2.resize(gray, (side, side), interpolation=cv2.INTER_AREA)


def perceptual_hash(image: torch.Tensor) -> np.ndarray:
    """64-bit DCT perceptual hash of a ``(3, H, W)`` image (bool ``(64,)``)."""
    import cv2

    dct = cv2.dct(_gray_small(image, 32).astype(np.float32))[:8, :8].flatten()
    return dct > np.median(dct[1:])


def drop_near_duplicates(source: Dataset, method: str = "phash", threshold: float | None = None,
                         ) -> Subset:
    """Keep a frame only if it differs enough from the last KEPT frame (consecutive frames of
    a video are near-duplicates). ``method="phash"``: Hamming distance of 64-bit hashes must
    exceed ``threshold`` (default 10 bits); ``"ssim"``: SSIM on 64x64 grey must be below
    ``threshold`` (default 0.8). Returns a ``Subset`` of ``source``."""
    if method not in ("phash", "ssim"):
        raise ValueError(f"unknown near-duplicate method {method!r}; choose phash or ssim")
    keep: list[int] = []
    last = None
    for i in range(len(source)):
        image = source[i]["image"]
        if method == "phash":
            feature = perceptual_hash(image)
            limit = 10 if threshold is None else threshold
            dup = last is not None and int(np.count_nonzero(feature != last)) <= limit
        else:
            from skimage.metrics import structural_similarity

            feature = _gray_small(image, 64)
            limit = 0.8 if threshold is None else threshold
            dup = last is not None and structural_similarity(
                feature, last, data_range=1.0) >= limit
        if not dup:
            keep.append(i)
            last = feature
    return Subset(source, keep)
