"""Named weights: the published DMENet checkpoint by name, fetched, converted and cached on first use.

    dmenet infer photo.jpg                          # no --ckpt: the published weights, dmenet_bdcs
    dmenet infer photos/ --ckpt dmenet_bdcs --out maps/
    dmenet weights                                  # the names, their URLs, cached or not and where
    dmenet.load("dmenet_bdcs")

Every place that takes a checkpoint (``--ckpt`` of infer, magnify, depth, deblur and export,
:func:`dmenet.load`, ``torch.hub``, ``--model.init_from``) passes it through
:func:`resolve_checkpoint` before reading it (:func:`dmenet.checkpoint.load_checkpoint`): a name
of :data:`NAMED_WEIGHTS` becomes its cached, verified checkpoint file; anything else is a path.

On first use of a name its archive is downloaded (``torch.hub.download_url_to_file``, with a
progress bar), trying its URLs in order; the ``.npz`` is found by its name anywhere inside the
zip and converted by :func:`dmenet.official.convert`. The cache folder
(:func:`cache_dir`: ``$DMENET_HOME``, else ``dmenet/`` in the torch hub cache,
``torch.hub.get_dir()``, which follows ``$TORCH_HOME``) then holds

* ``NAME.ckpt``: the converted checkpoint;
* ``NAME.json``: its record: the size and SHA-256 of the checkpoint (checked on every load: a
  truncated or altered file is fetched again, never used), and the URL, size and SHA-256 of the
  downloaded file (printed when it is downloaded);
* ``.NAME.lock``: held while fetching, so that processes starting together (several GPUs)
  download once.

Everything is written under temporary names in the cache folder and moved into place when
complete: a failed or interrupted download leaves no partial file. ``DMENET_MIRROR`` replaces the
authors' hosts (``DMENET_MIRROR=https://example.org/dmenet`` fetches
``https://example.org/dmenet/DMENet_BDCS.zip``; several prefixes separated by spaces or commas
are tried in order). Offline, place a downloaded ``DMENet_BDCS.zip``, or the ``DMENet_BDCS.npz``
inside it, in the cache folder: it is converted on the next use, without the network.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmenet.errors import DMENetError

__all__ = [
    "ANNOUNCED",
    "DEFAULT_WEIGHTS",
    "HOME_ENV",
    "MIRROR_ENV",
    "NAMED_WEIGHTS",
    "NamedWeights",
    "WeightsError",
    "cache_dir",
    "cached_checkpoint",
    "describe_weights",
    "fetch_weights",
    "is_named",
    "main",
    "resolve_checkpoint",
    "weights_urls",
]

HOME_ENV = "DMENET_HOME"
"""The cache folder of named weights (default: ``dmenet/`` in ``torch.hub.get_dir()``)."""

MIRROR_ENV = "DMENET_MIRROR"
"""URL prefixes (separated by spaces or commas) that replace the authors' hosts."""


class WeightsError(DMENetError):
    """Named weights could not be fetched or converted; the message says from where and why."""


@dataclass(frozen=True)
class NamedWeights:
    """Published weights known by name.

    Attributes:
        name: what ``--ckpt`` and :func:`dmenet.load` accept.
        archive: the file that is downloaded (a zip).
        npz: the TensorLayer checkpoint inside it, found by this name anywhere in the zip.
        urls: the direct-download links, tried in order.
        origin: who made the weights, and where they are published.
        licence: the licence they come under.
    """

    name: str
    archive: str
    npz: str
    urls: tuple[str, ...]
    origin: str
    licence: str


NAMED_WEIGHTS: dict[str, NamedWeights] = {
    "dmenet_bdcs": NamedWeights(
        name="dmenet_bdcs",
        archive="DMENet_BDCS.zip",
        npz="DMENet_BDCS.npz",
        urls=(
            "https://www.dropbox.com/s/04lg03ogsto1fmw/DMENet_BDCS.zip?dl=1",
            "https://onedrive.live.com/download?resid=94530B7E5F49D254%21485"
            "&authkey=!AJjiWABi0E5Or_M",
        ),
        origin="DMENet_BDCS, the DMENet authors' retrained model (B, D, C, S; Lee et al., CVPR "
               "2019) from the official repository https://github.com/codeslake/DMENet",
        licence="AGPL-3.0, like the official code",
    ),
}
"""The named weights, by name."""

DEFAULT_WEIGHTS = "dmenet_bdcs"
"""What ``dmenet infer`` (and magnify, depth, deblur) use when no ``--ckpt`` is given."""

ANNOUNCED: set[str] = set()
"""The names whose origin and licence this process has printed (each is printed once)."""

_CHUNK = 1 << 20


def is_named(checkpoint: object) -> bool:
    """Whether ``checkpoint`` is the name of published weights (rather than a path)."""
    return isinstance(checkpoint, str) and checkpoint in NAMED_WEIGHTS


def resolve_checkpoint(checkpoint: str | os.PathLike) -> Path:
    """The file to read for ``checkpoint``: a name's cached checkpoint (fetched and converted on
    first use, verified on every use), or the path as given.

    Raises:
        WeightsError: a name whose weights cannot be fetched, read or converted (one line).
    """
    if is_named(checkpoint):
        return fetch_weights(str(checkpoint))
    return Path(checkpoint).expanduser()


def cache_dir() -> Path:
    """The folder of cached named weights: ``$DMENET_HOME``, else ``torch.hub.get_dir()/dmenet``
    (``$TORCH_HOME/hub/dmenet``; ``~/.cache/torch/hub/dmenet`` by default)."""
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser()
    import torch.hub

    return Path(torch.hub.get_dir()) / "dmenet"


def cached_checkpoint(name: str) -> Path:
    """Where the converted checkpoint of ``name`` is (or will be) cached."""
    return cache_dir() / f"{_weights(name).name}.ckpt"


def weights_urls(name: str) -> list[str]:
    """The URLs ``name`` is fetched from, in order: ``$DMENET_MIRROR``'s prefixes + the archive's
    name when it is set, else the authors' links."""
    weights = _weights(name)
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if not mirror:
        return list(weights.urls)
    prefixes = [prefix for prefix in re.split(r"[\s,]+", mirror) if prefix]
    return [f"{prefix.rstrip('/')}/{weights.archive}" for prefix in prefixes]


def describe_weights(name: str) -> dict[str, Any]:
    """What outputs record about named weights: name, origin, licence, cached file, source."""
    weights = _weights(name)
    record = _read_record(cache_dir() / f"{name}.json") or {}
    return {"name": name, "origin": weights.origin, "licence": weights.licence,
            "file": str(cached_checkpoint(name)), "source": record.get("source")}


def fetch_weights(name: str) -> Path:
    """The cached checkpoint of ``name``, after fetching and converting it if it is not cached
    or does not match its record. Prints the weights' origin and licence once per process."""
    weights = _weights(name)
    folder = cache_dir()
    ckpt = folder / f"{name}.ckpt"
    if _check_cache(ckpt) != "ok":
        from filelock import FileLock

        try:
            folder.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(folder / f".{name}.lock"))
        except OSError as exc:
            raise WeightsError(f"{folder}: cannot create the cache folder of {name} ({exc}); "
                               f"set {HOME_ENV} to a writable folder") from exc
        with lock:  # another process may have fetched it while this one waited
            state = _check_cache(ckpt)
            if state != "ok":
                if state != "missing":
                    print(f"dmenet: {ckpt}: {state}; fetching it again", file=sys.stderr)
                _install(weights, folder)
    if name not in ANNOUNCED:
        ANNOUNCED.add(name)
        print(f"dmenet: {name}: {weights.origin}; licence {weights.licence}; "
              f"maps are sigma in px", file=sys.stderr)
    return ckpt


# ------------------------------------------------------------------------------ the cache
def _weights(name: str) -> NamedWeights:
    try:
        return NAMED_WEIGHTS[name]
    except KeyError:
        raise WeightsError(f"{name!r}: no such named weights (known: "
                           f"{', '.join(NAMED_WEIGHTS)})") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _check_cache(ckpt: Path) -> str:
    """``"ok"``, ``"missing"``, or why the cached ``ckpt`` cannot be used."""
    if not ckpt.is_file():
        return "missing"
    record = _read_record(ckpt.with_suffix(".json"))
    expected = (record or {}).get("checkpoint") or {}
    if not expected.get("sha256"):
        return f"no record of its SHA-256 beside it ({ckpt.with_suffix('.json').name})"
    size = ckpt.stat().st_size
    if size != expected.get("bytes"):
        return f"{size} bytes, its record says {expected.get('bytes')} (truncated or altered)"
    if _sha256(ckpt) != expected["sha256"]:
        return "its SHA-256 differs from its record (altered)"
    return "ok"


def _install(weights: NamedWeights, folder: Path) -> None:
    """Convert a placed or downloaded archive into ``folder/NAME.ckpt`` and its record; every
    file is written in a temporary folder inside ``folder`` and moved into place when complete."""
    work = Path(tempfile.mkdtemp(prefix=f".{weights.name}-", dir=folder))
    try:
        placed = [path for path in (folder / weights.npz, folder / weights.archive) if path.is_file()]
        if placed:  # put there by hand: used as it is, never replaced by a download
            try:
                ckpt = _convert(weights, placed[0], str(placed[0]), work)
            except WeightsError as exc:
                raise WeightsError(f"{exc} (a file placed in the cache by hand: replace or "
                                   "remove it)") from exc
            source = {"file": str(placed[0]), "bytes": placed[0].stat().st_size,
                      "sha256": _sha256(placed[0])}
        else:
            ckpt, source = _download_and_convert(weights, folder, work)
        record = {
            "name": weights.name,
            "checkpoint": {"file": f"{weights.name}.ckpt", "bytes": ckpt.stat().st_size,
                           "sha256": _sha256(ckpt)},
            "source": source,
            "origin": weights.origin,
            "licence": weights.licence,
            "converted_by": "dmenet convert-official",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        record_tmp = work / f"{weights.name}.json"
        record_tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(ckpt, folder / f"{weights.name}.ckpt")
        os.replace(record_tmp, folder / f"{weights.name}.json")
    except OSError as exc:
        raise WeightsError(f"{folder}: cannot write the cache of {weights.name} ({exc}); "
                           f"set {HOME_ENV} to a writable folder") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"dmenet: {weights.name}: converted and cached as {folder / weights.name}.ckpt",
          file=sys.stderr)


def _download_and_convert(weights: NamedWeights, folder: Path, work: Path) -> tuple[Path, dict]:
    """Try each URL in order until one gives a convertible archive: ``(checkpoint, source)``."""
    import torch.hub

    failures = []
    for url in weights_urls(weights.name):
        target = work / weights.archive
        print(f"dmenet: {weights.name}: downloading {url}", file=sys.stderr)
        try:
            torch.hub.download_url_to_file(url, str(target), progress=True)
        except (http.client.HTTPException, OSError, ValueError) as exc:
            failures.append(f"{url}: {_download_failure(exc)}")
            continue
        digest, size = _sha256(target), target.stat().st_size
        print(f"dmenet: {weights.name}: downloaded {weights.archive} ({size / 1e6:.1f} MB), "
              f"SHA-256 {digest}", file=sys.stderr)
        try:
            ckpt = _convert(weights, target, url, work)
        except WeightsError as exc:
            failures.append(str(exc))
            continue
        finally:
            target.unlink(missing_ok=True)
        return ckpt, {"url": url, "file": weights.archive, "bytes": size, "sha256": digest}
    raise WeightsError(
        f"{weights.name}: could not fetch the weights: {'; '.join(failures)}. Without the "
        f"network, download {weights.archive} from one of these URLs by hand and place it, or "
        f"the {weights.npz} inside it, in {folder} (it is converted on the next use)"
    )


def _download_failure(exc: BaseException) -> str:
    """Why a download failed, in a few words (``HTTP Error 404: Not Found``, ``[Errno 111]
    Connection refused``, ``the connection closed early ...``)."""
    import urllib.error

    if isinstance(exc, urllib.error.HTTPError):
        return str(exc)
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    if isinstance(exc, http.client.IncompleteRead):
        return f"the connection closed after {len(exc.partial)} bytes (download cut short)"
    return f"{type(exc).__name__}: {exc}"


def _convert(weights: NamedWeights, archive: Path, label: str, work: Path) -> Path:
    """``archive`` (the zip, or the npz itself) -> ``work/NAME.ckpt``; errors name ``label``."""
    from dmenet.official import convert

    npz, where = archive, label
    if archive.suffix.lower() == ".zip":
        npz, member = _extract_npz(archive, weights.npz, label, work)
        where = f"{member} in {label}"
    out = work / f"{weights.name}.ckpt"
    try:
        convert(npz, out, overwrite=True)
    except DMENetError as exc:  # the converter names the file it read: name where it came from
        raise WeightsError(str(exc).replace(str(npz), where)) from exc
    finally:
        if npz != archive:
            npz.unlink(missing_ok=True)
    return out


def _extract_npz(archive: Path, npz_name: str, label: str, work: Path) -> tuple[Path, str]:
    """Copy the member called ``npz_name`` (in any folder of the zip) to ``work``."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
            found = [n for n in names
                     if n.rsplit("/", 1)[-1] == npz_name and not n.startswith("__MACOSX/")]
            if not found:
                listed = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
                raise WeightsError(f"{label}: the zip holds no {npz_name} (it has: {listed or 'nothing'})")
            target = work / npz_name
            with zf.open(found[0]) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise WeightsError(f"{label}: not a readable zip file ({exc}; an incomplete download, "
                           "or a web page instead of the file?)") from exc
    return target, found[0]


# ------------------------------------------------------------------------------ dmenet weights
def main(argv: Sequence[str] | None = None) -> int:
    """``dmenet weights``: the named weights, their URLs, and whether and where they are cached."""
    parser = argparse.ArgumentParser(
        prog="dmenet weights",
        description="The published weights by name (--ckpt NAME, dmenet.load(NAME)): where they "
        "come from, their licence, their URLs, and whether and where they are cached.",
        epilog=f"Cache: ${HOME_ENV}, else dmenet/ in the torch hub cache ($TORCH_HOME/hub). "
        f"${MIRROR_ENV}=URL_PREFIX fetches URL_PREFIX/<archive> instead of the authors' hosts "
        "(several prefixes separated by spaces or commas are tried in order).",
    )
    parser.add_argument("--fetch", metavar="NAME", choices=sorted(NAMED_WEIGHTS),
                        help="download and convert NAME now (e.g. before going offline)")
    args = parser.parse_args(argv)
    if args.fetch:
        fetch_weights(args.fetch)
    for name, weights in NAMED_WEIGHTS.items():
        ckpt = cached_checkpoint(name)
        state = _check_cache(ckpt)
        default = " (the default when no --ckpt is given)" if name == DEFAULT_WEIGHTS else ""
        print(f"{name}{default}")
        print(f"  origin:  {weights.origin}")
        print(f"  licence: {weights.licence}")
        for i, url in enumerate(weights_urls(name)):
            print(f"  {'url:' if i == 0 else '':<9}{url}")
        if state == "ok":
            source = (_read_record(ckpt.with_suffix(".json")) or {}).get("source") or {}
            print(f"  cached:  {ckpt} (from {source.get('url') or source.get('file')}, "
                  f"SHA-256 {source.get('sha256')})")
        elif state == "missing":
            print(f"  cached:  no; fetched on first use into {ckpt.parent} (or place "
                  f"{weights.archive} or {weights.npz} there)")
        else:
            print(f"  cached:  {ckpt}: {state}; fetched again on the next use")
    return 0


if __name__ == "__main__":
    sys.exit(main())
