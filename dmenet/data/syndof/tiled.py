"""The tiled renderer: the per-layer loop's algorithm (exact fill before every front layer)
restricted to where each step changes something, executed on the CPU with compiled loops.

The frame, extended beyond the image by the blur reach (border rule), is cut into
``TILE_PX x TILE_PX`` tiles. A layer is blurred only on the tiles within its kernel radius of
its own pixels, separably, with the Gaussian's significant taps only
(:func:`~.kernels.significant_kernel1d`), by OpenCV over runs of consecutive tiles; ``Acc`` /
``A`` are kept tiled and composited and un-premultiplied only on the tiles that changed; the
fill region is searched only on the tiles at the frontier of the union and solved exactly on
its own pixels, by Cholesky in the envelope of the reverse Cuthill-McKee order (SuperLU for
wide regions). The per-pixel steps between the filters (the vertical pass's rows, compositing,
un-premultiply, the fill's system) are numba-compiled loops (cached on disk; the first render
of a process pays 1-2 s to load them, ~7 s to compile them where no cache exists): the
formulas of :mod:`.composite` and :mod:`.fill`, one pixel at a time. Equal to the loop up to
float rounding (tested on dense-layer scenes); CPU tensors only.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from .composite import MASK_EPS
from .fill import FILL_REACH, laplace_factor
from .kernels import (
    border_index,
    disc_kernel2d,
    gaussian_kernel1d,
    kernel_radius,
    significant_kernel1d,
)

__all__ = ["TILE_PX", "TileCompositor"]

TILE_PX = 16
"""Tile side (px) (measured fastest of 16 / 32 / 64 at 1 MP)."""


def _mask_reach_px(sigma_px: float, radius: int, aperture: str, radius_px: int | None) -> int:
    """How far (px, Chebyshev) from a layer its blurred mask can reach ``MASK_EPS``: at
    distance ``d`` every kernel offset has ``|dx| >= d`` or ``|dy| >= d``, so the blurred
    mask is at most twice the 1-D kernel's tail beyond ``d`` (kept below half of MASK_EPS, a
    margin for float rounding)."""
    if aperture == "disc" or radius == 0:
        return radius
    k = gaussian_kernel1d(sigma_px, radius_px)
    tail = 2.0 * np.cumsum(k[::-1])[::-1][radius:]  # tail[d] = mass at |u| >= d
    far = np.nonzero(2.0 * tail < 0.5 * MASK_EPS)[0]
    return int(far[0]) - 1 if far.size else radius


# Loops over tiles that touch every value once (NumPy semantics, compiled by numba; each
# replaces 3-6 passes of torch ops over the same data). Layouts as in :class:`TileCompositor`.


def _k_vertical_rows(hout, hin, tile_k, vrow, out):
    """``out[j] = `` the horizontal pass's row ``vrow[j]`` (scratch row: tile ``vrow // T``,
    local row ``vrow % T``), read from the filtered runs ``hout (J, T, C)`` (tile ``k``'s
    column ``x`` at run row ``hin[k * T + x]``; ``tile_k``: a tile's ``k``, -1 = zero)."""
    t, nc = hout.shape[1], hout.shape[2]
    for j in range(vrow.shape[0]):
        tile, y = vrow[j] // t, vrow[j] % t
        k = tile_k[tile]
        for x in range(t):
            if k < 0:
                for c in range(nc):
                    out[j, x, c] = 0.0
            else:
                m = hin[k * t + x]
                for c in range(nc):
                    out[j, x, c] = hout[m, y, c]


def _k_composite(state, tiles, vout, vin, eps):
    """Composite the blurred layer ``vout[vin[k * T + y], x]`` (RGBA) over tile ``tiles[k]``
    of ``state (tiles, T * T, 4)``: ``S = (1 - m) S + rgbm`` where ``m >= eps``."""
    t = vout.shape[1]
    one = np.float32(1.0)
    for k in range(tiles.shape[0]):
        s = state[tiles[k]]
        for y in range(t):
            src = vout[vin[k * t + y]]
            for x in range(t):
                a = src[x, 3]
                if a >= eps:
                    w = one - a
                    q = y * t + x
                    for c in range(4):
                        s[q, c] = s[q, c] * w + src[x, c]


def _k_unpremultiply(state, tiles):
    """``colour = Acc / A``, ``A -> 1`` where ``A > 0``, on the tiles ``tiles`` of ``state``."""
    one = np.float32(1.0)
    for k in range(tiles.shape[0]):
        s = state[tiles[k]]
        for q in range(s.shape[0]):
            a = s[q, 3]
            if a > 0:
                for c in range(3):
                    s[q, c] = s[q, c] / a
                s[q, 3] = one


def _k_fill_system(ys, xs, index, lid_img, layer, state, p, t, gw, nb, deg, b):
    """The Laplace system of the fill before layer ``layer`` on the unknown pixels ``ys, xs``
    (image coordinates; ``index (H, W)`` all -1, restored): per unknown its in-image
    neighbour count ``deg``, its unknown neighbours ``nb (n, 4)`` (-1: none) and ``b (n, 4)``
    the sum of its known neighbours' ``(colour * u, u)``, ``u`` = in U (layers < ``layer``),
    read from the tiled ``state (tiles * T * T, 4)`` (the image at ``(p, p)``)."""
    h, w = index.shape
    n = ys.shape[0]
    for j in range(n):
        index[ys[j], xs[j]] = j
    tt = t * t
    for j in range(n):
        y0, x0 = ys[j], xs[j]
        cnt = 0
        for q in range(4):
            y = y0 + (q == 1) - (q == 0)
            x = x0 + (q == 3) - (q == 2)
            nb[j, q] = -1
            if y < 0 or y >= h or x < 0 or x >= w:
                continue
            cnt += 1
            m = index[y, x]
            if m >= 0:
                nb[j, q] = m
            elif lid_img[y, x] < layer:
                yy, xx = y + p, x + p
                s = ((yy // t) * gw + xx // t) * tt + (yy % t) * t + xx % t
                for c in range(3):
                    b[j, c] += state[s, c]
                b[j, 3] += 1.0
        deg[j] = cnt
    for j in range(n):
        index[ys[j], xs[j]] = -1


def _k_envelope_order(nb, perm, nbp, first):
    """``nbp``: the neighbours ``nb (n, 4)`` renumbered by the ordering ``perm`` (new ->
    old), in the new order; ``first[i]``: the first column of row ``i``'s envelope. Returns
    the sum over rows of the squared envelope width (~ the factorisation's work)."""
    n = perm.shape[0]
    inv = np.empty(n, np.int64)
    for i in range(n):
        inv[perm[i]] = i
    size = 0
    for i in range(n):
        f = i
        for q in range(nb.shape[1]):
            m = nb[perm[i], q]
            nbp[i, q] = -1 if m < 0 else inv[m]
            if m >= 0 and inv[m] < f:
                f = inv[m]
        first[i] = f
        size += (i - f + 1) * (i - f + 1)
    return size


def _k_envelope_solve(nbp, deg, first, b):
    """Solve the Laplace system (``deg`` on the diagonal, -1 for each neighbour in ``nbp``;
    symmetric positive definite) by Cholesky in the envelope ``first`` (fill-in stays
    inside it), for every column of ``b (n, C)`` float64, in place."""
    n = deg.shape[0]
    off = np.empty(n + 1, np.int64)
    off[0] = 0
    for i in range(n):
        off[i + 1] = off[i] + i - first[i] + 1
    lo = np.zeros(off[n])  # row i of L: columns first[i] .. i at lo[off[i] - first[i] + j]
    for i in range(n):
        fi = first[i]
        base = off[i] - fi
        lo[base + i] = deg[i]
        for q in range(nbp.shape[1]):
            j = nbp[i, q]
            if j >= 0 and j < i:
                lo[base + j] = -1.0
        for j in range(fi, i):
            fj = first[j]
            bj = off[j] - fj
            acc = lo[base + j]
            for k in range(max(fi, fj), j):
                acc -= lo[base + k] * lo[bj + k]
            lo[base + j] = acc / lo[bj + j]
        acc = lo[base + i]
        for k in range(fi, i):
            acc -= lo[base + k] * lo[base + k]
        lo[base + i] = np.sqrt(acc)
    nc = b.shape[1]
    for i in range(n):  # L y = b
        base = off[i] - first[i]
        for k in range(first[i], i):
            v = lo[base + k]
            for c in range(nc):
                b[i, c] -= v * b[k, c]
        for c in range(nc):
            b[i, c] /= lo[base + i]
    for i in range(n - 1, -1, -1):  # L^T x = y
        base = off[i] - first[i]
        for c in range(nc):
            b[i, c] /= lo[base + i]
        for k in range(first[i], i):
            v = lo[base + k]
            for c in range(nc):
                b[k, c] -= v * b[i, c]


ENVELOPE_MAX_WORK = 2000
"""The fill's Cholesky in the envelope of the reverse Cuthill-McKee order is used while the
mean squared envelope width per unknown is at most this (measured: it then beats SuperLU,
2-3x on the thin bands of 1 MP scenes, mean width 7-20); wider regions (240 px crops with
many near layers, scattered pixels of a noisy depth) use SuperLU."""


def _laplace_solve_envelope(deg: np.ndarray, nb: np.ndarray, b: np.ndarray,
                            kern) -> np.ndarray | None:
    """The exact solution ``(n, C)`` of the Laplace system of ``deg (n,)``, ``nb (n, 4)``
    (:func:`_k_fill_system`) by envelope Cholesky in reverse Cuthill-McKee order (the
    compiled ``kern``); None when the envelope is too wide (:data:`ENVELOPE_MAX_WORK`)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    n = deg.size
    valid = nb >= 0
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(valid.sum(1), out=indptr[1:])
    graph = csr_matrix((np.ones(int(indptr[-1]), dtype=np.int8), nb[valid], indptr),
                       shape=(n, n))
    perm = reverse_cuthill_mckee(graph, symmetric_mode=True).astype(np.int64)
    nbp, first = np.empty_like(nb), np.empty(n, dtype=np.int64)
    if kern["envelope_order"](nb, perm, nbp, first) > ENVELOPE_MAX_WORK * n:
        return None
    bp = np.ascontiguousarray(b[perm])
    kern["envelope_solve"](nbp, deg[perm].astype(np.float64), first, bp)
    x = np.empty_like(bp)
    x[perm] = bp
    return x


@lru_cache(maxsize=1)
def _kernels():
    """The ``_k_*`` loops compiled by numba (cached on disk)."""
    import numba

    jit = numba.njit(cache=True, nogil=True)
    return {"vertical_rows": jit(_k_vertical_rows), "composite": jit(_k_composite),
            "unpremultiply": jit(_k_unpremultiply), "fill_system": jit(_k_fill_system),
            "envelope_order": jit(_k_envelope_order),
            # reassociating the envelope's dot products (SIMD) changes only rounding
            "envelope_solve": numba.njit(cache=True, nogil=True,
                                         fastmath={"reassoc", "contract"})(_k_envelope_solve)}


def _dilate_tiles(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``(gh, gw)`` bool dilated by ``dy`` tiles vertically and ``dx`` horizontally."""
    if dy == 0 and dx == 0:
        return t
    x = t[None, None].to(torch.float32)
    return F.max_pool2d(x, (2 * dy + 1, 2 * dx + 1), 1, (dy, dx))[0, 0] > 0


class TileCompositor:
    """:func:`~.loop.composite_loop`'s algorithm restricted to where each step changes
    something, for one sample on the CPU: ``TileCompositor(image (1,3,H,W) float32,
    layer_id (1,1,H,W), sigmas, aperture, radius_px, border).run(start) -> (1,3,H,W)``.

    The frame, extended beyond the image by the blur reach (border rule), is cut into
    ``T x T`` tiles. A layer is blurred only on the tiles within its kernel radius of its own
    pixels (from the extent of its pixels in each tile), separably, with the Gaussian's
    significant taps only (:func:`~.kernels.significant_kernel1d`): a horizontal pass over the runs of
    consecutive tiles of each tile row, extended by the radius at both ends (every run of the
    layer in one filter call), read from a zero frame into which the layer's own pixels are
    written (and cleared after), then a vertical pass over the runs of each tile column. The
    index plans of both passes are computed for all layers at once, up front. Compositing and
    the un-premultiply (only on the tiles whose alpha may lie strictly between 0 and 1) run on
    those tiles, with ``Acc`` and ``A`` kept tiled, ``(tiles, T, T, 4)``; the fill region is
    searched only on the tiles at the frontier of the union ``U = layers < i`` and solved on
    its own pixels, before every layer like the loop. The per-pixel steps between the filters
    (the vertical pass's rows, compositing, un-premultiply, the fill's system) are compiled
    loops (numba, the ``_k_*`` functions) and the fill is solved exactly by Cholesky in the
    envelope of the reverse Cuthill-McKee order (SuperLU for wide regions). Equal to the loop
    up to float rounding (tested).
    """

    def __init__(self, image, layer_id, sigmas, aperture: str, radius_px: int | None,
                 border: str, tile_px: int = TILE_PX):
        if image.device.type != "cpu" or image.dtype != torch.float32:
            raise ValueError("the tiled renderer runs on float32 CPU tensors")
        self.sigmas, self.aperture, self.radius_px = sigmas, aperture, radius_px
        self.dev, self.dtype = image.device, image.dtype
        _, _, h, w = image.shape
        self.h, self.w = h, w
        t = self.t = tile_px
        radii = [kernel_radius(s, aperture, radius_px) for s in sigmas]
        # beyond this the blurred mask is below MASK_EPS (so zeroed, with its colour):
        # compositing there changes nothing
        self.reach = [_mask_reach_px(sg, r, aperture, radius_px) for sg, r in zip(sigmas, radii)]
        if aperture == "gaussian":
            self.kernels = [significant_kernel1d(s, radius_px) if r else None
                            for s, r in zip(sigmas, radii)]
            radii = [0 if k is None else len(k) // 2 for k in self.kernels]
            self.reach = [min(a, r) for a, r in zip(self.reach, radii)]
        self.radii = radii
        rmax = self.rmax = max(self.radii)
        p = self.p = -(-rmax // t) * t  # the image sits at (p, p) of the tiled domain
        gh, gw = self.gh, self.gw = -(-(h + 2 * p) // t), -(-(w + 2 * p) // t)
        hd, wd = gh * t, gw * t
        self.kern = _kernels()
        # source frames: the domain plus a margin of rmax; the border rule within rmax of
        # the image, nothing (layer -1) farther
        rows = torch.arange(hd + 2 * rmax, device=self.dev) - rmax - p
        cols = torch.arange(wd + 2 * rmax, device=self.dev) - rmax - p
        valid = (((rows >= -rmax) & (rows < h + rmax))[:, None]
                 & ((cols >= -rmax) & (cols < w + rmax))[None])
        ri, ci = border_index(rows, h, border), border_index(cols, w, border)
        rgb1 = torch.cat([image[0], torch.ones_like(image[0, :1])]).permute(1, 2, 0)
        self.src = (rgb1[ri][:, ci] * valid[..., None]).contiguous()  # (FH, FW, 4)
        lid = layer_id[0, 0].to(torch.int32)
        self.lid = torch.where(valid, lid[ri][:, ci], -1).contiguous()[..., None]  # (FH, FW, 1)
        self.lid_img = lid
        # per (layer, tile) pixel counts, over the domain and over the image
        lid_dom = self.lid[rmax:rmax + hd, rmax:rmax + wd, 0]
        tile = (torch.arange(hd, device=self.dev)[:, None] // t * gw
                + torch.arange(wd, device=self.dev)[None] // t)
        inimg = torch.zeros(hd, wd, dtype=torch.bool, device=self.dev)
        inimg[p:p + h, p:p + w] = True
        n, nt = len(sigmas), gh * gw
        key = lid_dom.long() * nt + tile
        occ = lid_dom >= 0
        self.count = torch.bincount(key[occ], minlength=n * nt).view(n, gh, gw)
        self.count_img = torch.bincount(key[inimg], minlength=n * nt).view(n, gh, gw)
        self.n_img = torch.bincount(tile[inimg], minlength=nt).view(gh, gw)
        self.tile_in_image = self.n_img > 0
        self.h_tiles, self.out_tiles = self._reach_tiles(lid_dom, key, occ)
        self.out_tiles &= self.tile_in_image
        self.lid_tiles = self._tiled(lid_dom)  # (nt, T, T)
        self.inimg_tiles = self._tiled(inimg)
        self.state = torch.zeros(nt, t, t, 4, dtype=self.dtype, device=self.dev)  # Acc, A
        # the domain's rows of the source frames, per tile row transposed: (gh * FW, T, C),
        # the T pixels of tile row ty at column x in row ty * FW + x
        self.frames = {"src": self.src, "lid": self.lid}
        self.columns = {k: f[rmax:rmax + hd].view(gh, t, *f.shape[1:]).transpose(1, 2)
                        .reshape(-1, t, f.shape[2]) for k, f in self.frames.items()}
        # per layer its pixels in that layout (flat positions), to write its premultiplied
        # source into a zero frame (and clear it) instead of masking every run it blurs
        lid_cols = self.columns["lid"].reshape(-1)
        order = torch.argsort(lid_cols, stable=True)
        bounds = torch.bincount(lid_cols.long() + 1, minlength=n + 1).cumsum(0).tolist()
        self.layer_pix = [order[bounds[i]:bounds[i + 1]] for i in range(n)]
        self.tile_k = torch.full((nt,), -1, dtype=torch.int32, device=self.dev)
        self.index_img = np.full((h, w), -1, dtype=np.int64)  # the fill's unknowns (-1 between)
        self.masked = torch.zeros_like(self.columns["src"])  # the current layer's m * I, m
        self.union_cols = torch.zeros_like(self.columns["lid"], dtype=self.dtype)  # U
        self.plans = (self._plans(self.h_tiles, self.out_tiles, self.radii)
                      if aperture == "gaussian" else None)

    def _reach_tiles(self, lid_dom, key, occ):
        """Per layer ``(n, gh, gw)`` bool: the tiles where the horizontal pass of its blur can
        be non-zero (a pixel of the layer within its radius in the same rows), and the tiles
        its blur reaches (within its radius both ways), from the extent of each layer's pixels
        in each tile."""
        t, gh, gw = self.t, self.gh, self.gw
        n, big = len(self.sigmas), 1 << 14
        small = torch.int16 if self.dev.type == "cpu" else torch.int32  # local px
        hd, wd = lid_dom.shape
        local = torch.arange(max(hd, wd), device=self.dev, dtype=small) % t
        yy = local[:hd, None].expand(hd, wd)[occ]
        xx = local[None, :wd].expand(hd, wd)[occ]
        k = key[occ]

        def extent(v, how, init):
            out = torch.full((n * gh * gw,), init, dtype=small, device=self.dev)
            return out.scatter_reduce_(0, k, v, how).view(n, gh, gw)

        radius = torch.tensor(self.radii, device=self.dev, dtype=small).view(n, 1, 1)
        reach = torch.tensor(self.reach, device=self.dev, dtype=small).view(n, 1, 1)
        d = -(-self.rmax // t)

        def grow(mask, lo, hi, vertical, carry, radius):
            """The tiles within the radius of a ``mask`` tile's pixels, whose extent along the
            direction is ``lo..hi`` (local px); and the extent ``carry`` (lo, hi) across it,
            combined over the tiles that reach each tile."""
            got = mask.clone()
            clo, chi = torch.where(mask, carry[0], big), torch.where(mask, carry[1], -big)
            for o in [o for o in range(-d, d + 1) if o]:
                # target tiles [a, b) along the direction receive from [a + o, b + o)
                a, b = max(0, -o), (gh if vertical else gw) - max(0, o)

                def sl(x, s=0, a=a, b=b):
                    return x[:, a + s:b + s] if vertical else x[:, :, a + s:b + s]

                if o > 0:
                    m = sl(mask, o) & (sl(lo, o) + (o * t - (t - 1)) <= radius)
                else:
                    m = sl(mask, o) & (-(sl(hi, o) + o * t) <= radius)
                sl(got).logical_or_(m)
                sl(clo).copy_(torch.where(m, torch.minimum(sl(clo), sl(carry[0], o)), sl(clo)))
                sl(chi).copy_(torch.where(m, torch.maximum(sl(chi), sl(carry[1], o)), sl(chi)))
            return got, (clo, chi)

        x_lo, x_hi = extent(xx, "amin", big), extent(xx, "amax", -big)
        y_ext = (extent(yy, "amin", big), extent(yy, "amax", -big))
        h_tiles = grow(x_hi >= 0, x_lo, x_hi, False, y_ext, radius)[0]
        near, (y_lo, y_hi) = grow(x_hi >= 0, x_lo, x_hi, False, y_ext, reach)
        out_tiles = grow(near, y_lo, y_hi, True, (y_lo, y_hi), reach)[0]
        # the horizontal pass is read only within the radius above and below the output
        h_tiles &= F.max_pool2d(out_tiles[:, None].float(), (2 * d + 1, 1), 1, (d, 0))[:, 0] > 0
        return h_tiles, out_tiles

    def _tiled(self, frame):
        t = self.t
        return frame.view(self.gh, t, self.gw, t).transpose(1, 2).reshape(-1, t, t)

    def _blocks(self, frame, y0, x0, th, tw):
        """``(gh, gw, th, tw, C)`` view of ``frame (FH, FW, C)``: block ``(ty, tx)`` starts at
        row ``y0 + ty * T``, column ``x0 + tx * T``."""
        fw, c = frame.shape[1], frame.shape[2]
        t = self.t
        return frame.as_strided((self.gh, self.gw, th, tw, c), (t * fw * c, t * c, fw * c, c, 1),
                                frame.storage_offset() + (y0 * fw + x0) * c)

    def _gather(self, frame, ty, tx, y0, x0, th, tw):
        """``(K, th, tw, C)``: the blocks ``(ty, tx)`` of :meth:`_blocks` (a copy)."""
        return self._blocks(frame, y0, x0, th, tw)[ty, tx]

    def _filter(self, x, k: np.ndarray, axis: int | None):
        """Filter ``x`` with the 1-D ``k`` along ``axis`` 0 of ``(J, T, C)`` (same size), or
        blocks ``(K, th, tw, C)`` with the 2-D ``k`` (``axis`` None, the valid part only)."""
        r = k.shape[0] // 2
        c = x.shape[-1]
        if axis is None:
            kk, th, tw, c = x.shape
            x2, shape = x.reshape(kk * th, tw, c), k.shape
        else:
            x2, shape = x, (-1, 1)
        import cv2

        # every block or run in one call: valid outputs read their own pixels only
        out = torch.from_numpy(cv2.filter2D(x2.numpy(), -1, k.astype(np.float32).reshape(
            shape), borderType=cv2.BORDER_CONSTANT)).view(x2.shape)
        if axis is None:
            return out.reshape(x.shape)[:, r:x.shape[1] - r, r:x.shape[2] - r]
        return out

    def _runs(self, tiles, r, line_stride: int, offset: int):
        """The runs of consecutive tiles along the rows of ``tiles (G, lines, n)`` (G groups,
        e.g. layers), each extended by ``r (G,)`` px at both ends, one after the other: per
        group, per position, its row in a frame stored line after line (``offset + line *
        line_stride + px along the line``); and the positions inside the runs (without the
        extensions) in that group's rows. Two lists of G tensors."""
        t, dev = self.t, self.dev
        g_count = tiles.shape[0]
        r = torch.as_tensor(r, device=dev).long().view(-1).expand(g_count)
        edge = torch.diff(F.pad(tiles.to(torch.int8), (1, 1)), dim=-1)
        grp, line, first = torch.nonzero(edge == 1, as_tuple=True)
        end = torch.nonzero(edge == -1, as_tuple=True)[2]  # same (row-major) order
        rg = r[grp]
        inner = (end - first) * t
        length = inner + 2 * rg
        start = length.cumsum(0) - length
        i32 = torch.int32  # (half the index traffic of int64)
        n_row = torch.zeros(g_count, dtype=torch.long, device=dev).index_add_(0, grp, length)
        n_in = torch.zeros(g_count, dtype=torch.long, device=dev).index_add_(0, grp, inner)
        g_start = n_row.cumsum(0) - n_row
        base = (offset + line * line_stride + first * t - rg - start).to(i32)
        row = torch.repeat_interleave(base, length)
        row += torch.arange(row.numel(), device=dev, dtype=i32)
        inside = torch.repeat_interleave(
            (start + rg - g_start[grp] - (inner.cumsum(0) - inner)).to(i32), inner)
        inside += torch.arange(inside.numel(), device=dev, dtype=i32)
        return row.split(n_row.tolist()), inside.split(n_in.tolist())

    def _plans(self, h_tiles, out_tiles, r):
        """Per group (``h_tiles``, ``out_tiles (G, gh, gw)``, radii ``r (G,)``) the index
        plan of :meth:`_blur_tiles`: the horizontal pass's rows and inside positions, its
        tiles' indices, the vertical pass's rows and inside positions, and the output
        tiles' indices."""
        t, gh, gw = self.t, self.gh, self.gw
        fw = self.src.shape[1]
        hrow, hin = self._runs(h_tiles, r, fw, self.rmax)
        vrow, vin = self._runs(out_tiles.transpose(1, 2), r, gh * t, 0)
        g, hy, hx = torch.nonzero(h_tiles, as_tuple=True)  # the runs' order
        hidx = (hx * gh + hy).split(torch.bincount(g, minlength=len(hrow)).tolist())
        g, ox, oy = torch.nonzero(out_tiles.transpose(1, 2), as_tuple=True)
        oidx = (oy * gw + ox).split(torch.bincount(g, minlength=len(hrow)).tolist())
        return list(zip(hrow, hin, hidx, vrow, vin, oidx))

    def _blur_tiles(self, source, sigma, r, h_tiles, out_tiles, cols=None, plan=None,
                    raw=False):
        """The blur, on ``out_tiles``, of ``source(g)``: a masked source computed from
        ``g(name)``, the gathered part of the source frame ``name`` ("src", "lid"); or, for
        the Gaussian, of ``cols``, the masked source in the transposed layout of
        ``self.columns``. Separable: a horizontal pass over the runs of ``h_tiles`` (where it
        can be non-zero; elsewhere it is 0), then a vertical pass over the runs of
        ``out_tiles`` read from it by a compiled loop (``plan``: :meth:`_plans`, precomputed).
        Returns ``(K, T, T, C)`` and the tiles' indices ``(K,)``; with ``raw`` the vertical
        pass's filtered rows ``(J, T, C)``, the rows of the tiles'
        pixel rows ``(K * T,)`` in it and the tiles' indices instead."""
        t, rm, gw = self.t, self.rmax, self.gw
        if r == 0 or self.aperture == "disc":
            oy, ox = torch.nonzero(out_tiles, as_tuple=True)
            y0, th = rm - r, t + 2 * r

            def block(name):
                return self._gather(self.frames[name], oy, ox, y0, y0, th, th)

            x = source(block)
            return (x if r == 0 else self._filter(x, disc_kernel2d(sigma), None)), oy * gw + ox
        k = significant_kernel1d(sigma, self.radius_px)
        if plan is None:
            plan = self._plans(h_tiles[None], out_tiles[None], r)[0]
        hrow, hin, hidx, vrow, vin, oidx = plan
        # horizontal: per position (tile row ty, column x) the tile row's T pixels there,
        # rows of the transposed source frames (gh * FW, T, C)
        hg = cols.index_select(0, hrow)
        hout = self._filter(hg, k, 0)
        c = hout.shape[-1]
        # the vertical pass's rows straight from the filtered runs
        tile_k = self.tile_k
        tile_k[hidx] = torch.arange(hidx.numel(), dtype=torch.int32)
        rows = torch.empty(vrow.numel(), t, c, dtype=self.dtype)
        self.kern["vertical_rows"](hout.numpy(), hin.numpy(), tile_k.numpy(), vrow.numpy(),
                                   rows.numpy())
        tile_k[hidx] = -1
        out = self._filter(rows, k, 0)
        if raw:
            return out, vin, oidx
        return out.index_select(0, vin).view(-1, t, t, c), oidx

    def run(self, start: int) -> torch.Tensor:
        t, gw = self.t, self.gw
        state = self.state
        dirty = self.tile_in_image.clone()  # where A may lie strictly between 0 and 1
        any_u = torch.zeros_like(dirty)  # tiles holding a pixel of U (border extension too)
        u_img = torch.zeros_like(self.n_img)  # U's pixels per tile, in the image
        for i, (sigma, r) in enumerate(zip(self.sigmas, self.radii)):
            d = -(-r // t)
            if i > start:
                # un-premultiply: colour = Acc / A, A -> 1 where it was > 0
                idx = torch.nonzero(dirty.flatten()).flatten()
                self.kern["unpremultiply"](state.view(-1, t * t, 4).numpy(), idx.numpy())
                dirty = torch.zeros_like(dirty)
                if r > 0:
                    filled = self._fill(i, sigma, r, d, any_u, u_img)
                    if filled is not None:
                        dirty |= filled
            # blur the layer's premultiplied colour and mask together, composite it
            def layer(g, i=i):
                return g("src") * (g("lid") == i)

            pix = self.layer_pix[i]
            src_flat, masked = self.columns["src"].view(-1, 4), self.masked.view(-1, 4)
            gauss = self.plans is not None and r > 0
            if gauss:
                masked.index_copy_(0, pix, src_flat.index_select(0, pix))
            res = self._blur_tiles(layer, sigma, r, self.h_tiles[i], self.out_tiles[i],
                                   self.masked, self.plans[i] if gauss else None, raw=gauss)
            if gauss:
                masked.index_fill_(0, pix, 0.0)
                # composite the blurred runs straight into the tiles
                vout, vin, idx = res
                self.kern["composite"](state.view(-1, t * t, 4).numpy(), idx.numpy(),
                                       vout.numpy(), vin.numpy(), np.float32(MASK_EPS))
            else:  # the disc, or no blur
                rgba, idx = res
                rgba.mul_(rgba[..., 3:] >= MASK_EPS)
                st = state.index_select(0, idx)
                state.index_copy_(0, idx, st.mul_(1.0 - rgba[..., 3:]).add_(rgba))
            dirty |= self.out_tiles[i]
            any_u |= self.count[i] > 0
            u_img += self.count_img[i]
            self.union_cols.view(-1).index_fill_(0, pix, 1.0)
        out = state.view(self.gh, gw, t, t, 4).transpose(1, 2).reshape(self.gh * t, gw * t, 4)
        p = self.p
        out = out[p:p + self.h, p:p + self.w].permute(2, 0, 1)[None]
        a = out[:, 3:]
        res = out[:, :3] / torch.where(a > 0, a, torch.ones_like(a))
        return torch.where(a > 0, res, self.src[self.rmax + p:self.rmax + p + self.h,
                                                self.rmax + p:self.rmax + p + self.w, :3]
                           .permute(2, 0, 1)[None])

    def _fill(self, i, sigma, r, d, any_u, u_img):
        """The fill before layer ``i`` (U = the layers < i), in place in ``state``. Returns
        the tiles it wrote, or None when the region is empty."""
        t, gw = self.t, self.gw
        # the region: outside U where U blurred with this kernel reaches >= FILL_REACH; only
        # on image tiles not wholly in U within d tiles of U
        cand = self.tile_in_image & (u_img < self.n_img) & _dilate_tiles(any_u, d, d)
        if not bool(cand.any()):
            return None

        def union(g):
            lid = g("lid")
            return ((lid >= 0) & (lid < i)).to(self.dtype)

        h_tiles = _dilate_tiles(cand, d, 0) & _dilate_tiles(any_u, 0, d)
        reach, ct = self._blur_tiles(union, sigma, r, h_tiles, cand, self.union_cols)
        reach = reach[..., 0]
        cy, cx = ct // gw, ct % gw
        lid = self.lid_tiles[ct]
        region = (reach >= FILL_REACH) & ((lid < 0) | (lid >= i)) & self.inimg_tiles[ct]
        k, yy, xx = torch.nonzero(region, as_tuple=True)
        if k.numel() == 0:
            return None
        p = self.p
        ys, xs = cy[k] * t + yy - p, cx[k] * t + xx - p  # image coordinates
        order = torch.argsort(ys * self.w + xs)  # row-major, like the loop: the LU's fill-in
        ys, xs, k = ys[order], xs[order], k[order]  # depends on it (2x here)
        return self._fill_compiled(i, ys, xs, ct[k])

    def _state_index(self, y, x):
        """The row in ``state.view(-1, 4)`` of image pixel ``(y, x)`` (arrays; the compiled
        ``_k_fill_system`` computes the same)."""
        t, p = self.t, self.p
        y, x = y + p, x + p
        return ((y // t) * self.gw + x // t) * (t * t) + (y % t) * t + x % t

    def _fill_compiled(self, i, ys, xs, tiles):
        """:meth:`_fill`'s system, exact solve and write with the compiled loops, for the
        region pixels ``ys, xs`` (image coordinates, row-major) in ``tiles``."""
        n, t, p = ys.numel(), self.t, self.p
        ys, xs = ys.numpy(), xs.numpy()
        nb = np.empty((n, 4), dtype=np.int64)
        deg = np.empty(n, dtype=np.int64)
        b = np.zeros((n, 4), dtype=np.float64)
        flat = self.state.view(-1, 4)
        self.kern["fill_system"](ys, xs, self.index_img, self.lid_img.numpy(), i, flat.numpy(),
                                 p, t, self.gw, nb, deg, b)
        x = _laplace_solve_envelope(deg, nb, b, self.kern)
        if x is None:
            x = laplace_factor(deg, nb.T).solve(b)
        flat[torch.from_numpy(self._state_index(ys, xs))] = torch.from_numpy(x).to(self.dtype)
        written = torch.zeros(self.gh * self.gw, dtype=torch.bool)
        written[tiles] = True
        return written.view(self.gh, self.gw)

