"""``tracker.render.rasterizer`` for one small float32 mesh in NumPy: the same fragments, faster.

    NumpyRasterizer   faces fixed at construction; ``rasterizer(points_cam, focal, principal, size)``
                      -> ``NumpyFragments`` of one image
    NumpyFragments    each covered pixel once: its visible triangle and barycentrics
    interpolate       per-vertex attributes at the covered pixels (``tracker.render.interpolate``)
    fma32             float32 fused multiply-add (what PyTorch's CPU kernels compute for addcmul)

Why: the embedded MediaPipe cue (``tracker.face.cues.MediaPipeMeshCue``) rasterises 880 triangles into
a 128 x 128 crop every frame. With the general rasteriser the cue takes 5-8 ms on one core of
this project's 2-core machine, nearly all of it the fixed cost of many small tensor ops (tile
groups, chunks, scatter, compaction); with this one 1.1-1.8 ms (medians: alone, and between
MediaPipe calls in the live loop; ``python -m tracker.bench render`` times both in one process).
The general rasteriser stays the reference (batched, CUDA, differentiable interpolation).

Same rules as ``tracker.render.rasterizer`` (read its module docstring): pixel (i, j) has its centre
at (j + 0.5, i + 0.5) and is covered when its centre is inside the projected triangle or on its
boundary, each edge anchored at its endpoint of lower vertex index and widened by the same
rounding bound; both windings (or front faces only with ``cull_backfaces``); triangles with a
vertex at z < near or of zero / non-finite area dropped; the z-test keeps the largest float32
inverse depth, exact ties going to the smaller triangle index; perspective-correct barycentrics.

Same arithmetic where it decides a value: the projection, the triangle set-up, the float32 inverse
depth that the z-test compares (at the tile offsets where the PyTorch rasteriser evaluates it) and
the barycentrics are computed in float32 in its operation order, fused multiply-adds included
(emulated in float64, where the product of two float32 is exact), so equal inputs give equal
z-test keys and bit-equal barycentrics. Only the coverage test is rounded differently: here each
row's span of covered columns is solved for in float64 from the same float32 edge coefficients,
there every edge function is evaluated in float32 at tile offsets, so the two can disagree about
a pixel centre within float32 rounding (~1e-6 px) of the mesh's outline; and the tile pixels
beyond a triangle's bounding box, which only a centre within that rounding of a vertex's row or
column could pass there, are not tried here. tests/face/test_cues.py compares the two pixel by pixel
(synthetic meshes with overlaps, grid-aligned edges, split tiles; the cue on real crops).
float32 points only; one image per call; not differentiable (nor is ``rasterize``).

Algorithm (no per-pixel edge tests): for every triangle and pixel row of its bounding box, the
columns whose centres lie on the inner side of the three widened edges form one interval between
the edges' crossings of the row (a lower bound from each edge with step_x >= 0, an upper bound
from the others), so the candidates are exactly the covered (pixel, triangle) pairs,
triangle-major, and per-triangle and per-row values reach them by ``np.repeat``. A pixel covered
once needs no z-test; the few covered more than once (shared edges within the widening, folds of
the mesh) are z-tested with ``np.maximum.at`` on the packed key. What costs is mostly the
number of NumPy calls (~150 per cue call, a few microseconds each on these small arrays), so the
work is done in few calls on stacked tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_MAX_TILE = 16  # tracker.render.rasterizer's largest tile side: in its rounding bound and offsets
_TRI_BITS = 29  # the z-buffer key keeps 2^29 - 1 - triangle index in its low bits
_TRI_MASK = (1 << _TRI_BITS) - 1
_F32 = np.float32

__all__ = ["NumpyFragments", "NumpyRasterizer", "fma32", "interpolate"]


def fma32(a, b, c) -> np.ndarray:
    """float32 ``a * b + c`` rounded once (PyTorch's CPU addcmul and cross product), as float32.

    The product of two float32 is exact in float64; the float64 sum rounded to float32 is the
    fused result except when that sum's own rounding lands exactly between two float32 values
    (double rounding; never seen in 10^5 random trials here)."""
    return np.add(np.multiply(a, b, dtype=np.float64), c).astype(_F32)


@dataclass
class NumpyFragments:
    """Rasterisation of one H x W image: each covered pixel once, grouped by triangle.

    pixels     (N,) int64 flat indices ``row * W + column``
    weights    (3, N) float32 perspective-correct barycentrics, component-major (the weights of
               the triangle's corners 0, 1, 2), as ``tracker.render.rasterizer`` computes them
    runs       (triangles (R,) ascending, counts (R,)): the pixels are ``counts[0]`` pixels of
               ``triangles[0]``, then ``counts[1]`` of ``triangles[1]``, ...
    size       (H, W)
    ``triangle`` (N,) and ``bary`` (N, 3) give them per pixel.
    """

    pixels: np.ndarray
    weights: np.ndarray
    runs: tuple[np.ndarray, np.ndarray]
    size: tuple[int, int]
    _triangle: np.ndarray | None = field(default=None, repr=False)

    @property
    def triangle(self) -> np.ndarray:
        """(N,) int64: index into the faces of each pixel's visible triangle."""
        if self._triangle is None:
            self._triangle = np.repeat(*self.runs)
        return self._triangle

    @property
    def bary(self) -> np.ndarray:
        """(N, 3) float32 barycentrics (a view of ``weights``)."""
        return self.weights.T

    @property
    def mask(self) -> np.ndarray:
        """(H, W) bool: pixels covered by a triangle."""
        height, width = self.size
        out = np.zeros(height * width, bool)
        out[self.pixels] = True
        return out.reshape(height, width)

    def to_image(self, values: np.ndarray) -> np.ndarray:
        """(C, N) values at the covered pixels -> (H, W, C) image of their dtype, zeros elsewhere."""
        height, width = self.size
        channels = values.shape[0]
        out = np.zeros(height * width * channels, values.dtype)
        index = self.pixels * channels
        for c in range(channels):
            out[index + c] = values[c]
        return out.reshape(height, width, channels)


def interpolate(attributes: np.ndarray, faces: np.ndarray, fragments: NumpyFragments) -> np.ndarray:
    """(V, C) float32 per-vertex attributes -> (C, N) at the covered pixels, in the float32
    operation order of ``tracker.render.interpolate`` (so the same values bit for bit)."""
    triangles, counts = fragments.runs
    channels = attributes.shape[1]
    corners = np.take(attributes.T, np.take(faces, triangles, axis=0).T, axis=1)  # (C, corner, R)
    values = np.repeat(corners.transpose(1, 0, 2).reshape(3 * channels, -1), counts, axis=1)
    w = fragments.weights
    out = values[0:channels] * w[0]
    out += values[channels : 2 * channels] * w[1]
    out += values[2 * channels :] * w[2]
    return out


class NumpyRasterizer:
    """``tracker.render.rasterizer`` for one float32 mesh with fixed faces (module docstring).

    Args:
        faces: (F, 3) vertex indices (at most 2^29 - 1 triangles).
        near: triangles with a vertex at z < near are dropped.
        cull_backfaces: keep only triangles wound counter-clockwise as seen by the viewer.

    ``rasterizer(points_cam, focal, principal, size)``: ``points_cam`` (V, 3) float32 camera-frame
    vertices (OpenCV axes), ``focal`` fx or (fx, fy) and ``principal`` (cx, cy) in pixels, ``size``
    (H, W) -> ``NumpyFragments``.
    """

    def __init__(self, faces: np.ndarray, near: float = 1e-3, cull_backfaces: bool = False) -> None:
        faces = np.ascontiguousarray(faces, dtype=np.int64)
        if faces.ndim != 2 or faces.shape[1] != 3:
            raise ValueError(f"faces must be (F, 3), got {faces.shape}")
        if len(faces) > _TRI_MASK:
            raise ValueError(f"at most {_TRI_MASK} triangles, got {len(faces)}")
        self.faces = faces
        self.near = float(near)
        self.cull_backfaces = bool(cull_backfaces)
        corners = np.ascontiguousarray(faces.T)  # (3, F): vertex of corner k
        self._corners = corners
        num_vertices = self._num_vertices = int(faces.max()) + 1 if faces.size else 0
        # edge k runs from corner k + 1 (start) to corner k + 2 (end) and is anchored at its
        # endpoint of lower vertex index
        start, end = corners[[1, 2, 0]], corners[[2, 0, 1]]
        vertices = np.stack((corners, start, end, np.minimum(start, end)))  # (corners/start/end/anchor, 3, F)
        # flat indices into the projected (x; y) (2 V,): (role, x/y, k, F)
        self._gather = np.stack((vertices, vertices + num_vertices), 1)
        self._constants: dict = {}

    def __call__(self, points_cam: np.ndarray, focal, principal, size: tuple[int, int]) -> NumpyFragments:
        height, width = int(size[0]), int(size[1])
        points = np.asarray(points_cam)
        if points.ndim != 2 or points.shape[1] != 3 or points.dtype != _F32:
            raise TypeError(f"NumpyRasterizer takes (V, 3) float32 points, got {points.shape} {points.dtype}")
        setup = self._setup(points, focal, principal, height, width)
        if setup is None:
            return _empty(height, width)
        return _rasterize(setup, height, width)

    def _camera_constants(self, focal, principal, height: int, width: int) -> tuple:
        """float32 near, focal (2, 1), image-centred principal point (2, 1), half size (2, 1),
        pixel-centre offset (2, 1), box clamp limit, last column / row (2, 1); cached."""
        key = (tuple(np.ravel(focal).tolist()), tuple(np.ravel(principal).tolist()), height, width)
        constants = self._constants.get(key)
        if constants is None:
            half = np.array([[width / 2.0], [height / 2.0]], _F32)
            focal = np.broadcast_to(np.asarray(focal, _F32).reshape(-1, 1), (2, 1))
            principal = np.asarray(principal, _F32).reshape(2, 1) - half  # image-centred coordinates
            limit = _F32(max(height, width) + 2)
            last = np.array([[width - 1], [height - 1]], _F32)
            constants = (_F32(self.near), focal, principal, half, half - _F32(0.5), limit, last)
            if len(self._constants) > 16:
                self._constants.clear()
            self._constants[key] = constants
        return constants

    def _setup(self, points: np.ndarray, focal, principal, height: int, width: int) -> dict | None:
        """``rasterize._triangle_setup`` for one image, in its float32 operation order: per-triangle
        tables (all F; the dropped ones get no rows), or None when none is kept."""
        if len(points) < self._num_vertices:
            raise ValueError(f"the faces index {self._num_vertices} vertices, got {len(points)} points")
        # centre: W / 2 - 0.5, H / 2 - 0.5, which puts the pixel centres at integers
        near, f, c, half, centre, limit, last = self._camera_constants(focal, principal, height, width)
        points = points[: self._num_vertices]
        z = points[:, 2]
        xy = points[:, :2].T / np.maximum(z, near) * f + c  # (2, V) projected, image-centred
        txy, start, end, anchor = np.take(xy, self._gather)  # (2, 3, F): corners; edge k's ends
        tz = np.take(z, self._corners)  # (3, F)
        d1, d2 = txy[:, 1] - txy[:, 0], txy[:, 2] - txy[:, 0]
        area2 = d1[0] * d2[1] - d1[1] * d2[0]
        with np.errstate(all="ignore"):  # dropped triangles may compute inf / nan below
            valid = (tz.min(0) >= near) & (area2 != 0) & np.isfinite(area2)
            if self.cull_backfaces:
                valid &= area2 < 0
            # bounding box of pixel centres (columns; rows), clipped to the image
            low = np.maximum(np.ceil(np.minimum(np.maximum(txy.min(1) + centre, _F32(-1)), limit)), _F32(0))
            high = np.minimum(np.floor(np.minimum(np.maximum(txy.max(1) + centre, _F32(-1)), limit)), last)
            valid &= (high >= low).all(0)
            if not valid.any():
                return None
            origin = low + (_F32(0.5) - half)  # first pixel centre of the box, image-centred
            box = high - low + _F32(1)  # (2, F) width, height
            orientation = np.where(area2 < 0, _F32(-1), _F32(1))
            step_x = (start[1] - end[1]) * orientation  # (3, F)
            step_y = (end[0] - start[0]) * orientation
            rel = origin[:, None] - anchor  # (2, 3, F)
            first = fma32(rel[1], step_y, rel[0] * step_x)  # e_k at the first pixel centre
            weight = _F32(1) / (np.maximum(tz, near) * np.abs(area2))  # (rasterize: + ~valid, 0 here)
            reach = np.abs(rel) + (box + _F32(_MAX_TILE))[:, None]
            slack = fma32(reach[1], np.abs(step_y), reach[0] * np.abs(step_x)) * _F32(8.0 * np.finfo(_F32).eps)
            # q_k = c_k + a_k dx + b_k dy, the perspective-weighted edge functions: (c/a/b, k, F)
            resolve = np.stack((first, step_x, step_y)) * weight
            inv = (resolve[:, 0] + resolve[:, 1]) + resolve[:, 2]  # inverse depth sum_k q_k: (3, F)
            # row spans: edge k's widened edge function crosses 0 on the box row dy at the column
            # offset - (first + slack + dy step_y) / step_x, a lower bound on the covered columns
            # where step_x >= 0, an upper one where step_x < 0 (float64 from the float32 terms)
            minus_step_x = -(step_x + _F32(0))  # -0.0 where horizontal
            offset = (first + slack).astype(np.float64) / minus_step_x
            slope = step_y.astype(np.float64) / minus_step_x
            # a horizontal edge (step_x = 0: a lower-bound one) bounds no row of the box: they all
            # lie on its inner side or, within rounding of the box, on it, where its widening
            # lets them pass
            horizontal = step_x == 0
            offset[horizontal], slope[horizontal] = -np.inf, 0.0
            rising = step_x >= 0
            lines = np.concatenate((
                np.where(rising, offset, -np.inf), np.where(rising, np.inf, offset),
                np.where(rising, slope, 0.0), np.where(rising, 0.0, slope),
            ))  # (12, F): offsets of the lower bounds (edges 0, 1, 2), of the upper ones, slopes
            valid &= ~np.isnan(lines).any(0)  # non-finite coefficients (far off-screen vertices)
            rows = np.where(valid, box[1], _F32(0)).astype(np.int64)
        return {
            "rows": rows,
            "rows_table": np.concatenate((lines, box[0:1], low)),  # + box width, first column, row
            "resolve": resolve.reshape(9, -1).astype(np.float64),  # c_k, a_k, b_k
            "inv": inv,
            # rasterize splits the boxes of these into 16 x 16 tiles (moving each tile's origin)
            "split": (box > _F32(_MAX_TILE // 2)).any(0),
        }  # fmt: skip


def _rasterize(s: dict, height: int, width: int) -> NumpyFragments:
    """Row spans -> covered (pixel, triangle) candidates -> z-test where needed -> barycentrics."""
    rows = s["rows"]
    # pairs (triangle, row of its box): P of them, triangle-major
    pair_first = np.cumsum(rows) - rows
    dy = np.arange(int(rows.sum()), dtype=np.float64) - np.repeat(pair_first, rows)
    table = np.repeat(s["rows_table"], rows, axis=1)  # (15, P)
    crossing = table[0:6] + dy * table[6:12]  # (6, P); the infinite offsets have slope 0
    first, last = crossing[0:3].max(0), crossing[3:6].min(0)
    box_w, col0, row0 = table[12:15]
    # columns dx in [first, last] and [0, box_w); lo finite (it is cast below)
    lo = np.minimum(np.maximum(np.ceil(first), 0.0), box_w)
    count = np.maximum(np.minimum(np.floor(last), box_w - 1.0) - lo + 1.0, 0.0).astype(np.int64)
    total = int(count.sum())
    if total == 0:
        return _empty(height, width)
    # candidates: the covered (pixel, triangle) pairs
    after = np.cumsum(count)
    before = after - count
    index = np.arange(total)
    dx = (index - np.repeat(before - lo.astype(np.int64), count)).astype(np.float64)
    pixels = index + np.repeat(((row0 + dy) * width + col0 + lo).astype(np.int64) - before, count)
    through = np.concatenate(([0], after))  # candidates before each pair, and in all
    per_triangle = through[pair_first + rows] - through[pair_first]

    covers = np.bincount(pixels, minlength=height * width)
    multi = np.flatnonzero(covers[pixels] > 1)
    if multi.size:
        pair = np.searchsorted(after, multi, "right")
        tri = np.searchsorted(pair_first + rows, pair, "right")
        covers.fill(-1)  # now the z-buffer
        lost = ~_z_test(s, tri, dx[multi], dy[pair], pixels[multi], covers)
        if lost.any():
            count = count - np.bincount(pair[lost], minlength=count.size)
            per_triangle = per_triangle - np.bincount(tri[lost], minlength=rows.size)
            keep = np.ones(total, bool)
            keep[multi[lost]] = False
            pixels, dx = pixels[keep], dx[keep]
    del covers

    # perspective-correct barycentrics as rasterize._resolve: q_k = c_k + a_k dx, then + b_k dy
    # (fused, as addcmul), with dx, dy the exact offsets from the box's first pixel centre
    cab = np.repeat(s["resolve"], per_triangle, axis=1)  # (9, N)
    q = (fma32(cab[3:6], dx, cab[0:3]) + cab[6:9] * np.repeat(dy, count)).astype(_F32)  # b dy exact
    q /= (q[0] + q[1]) + q[2]
    nonempty = np.flatnonzero(per_triangle)
    return NumpyFragments(pixels, q, (nonempty, per_triangle[nonempty]), (height, width))


def _z_test(s: dict, tri: np.ndarray, dx: np.ndarray, dy: np.ndarray, pixels: np.ndarray, zbuf: np.ndarray) -> np.ndarray:
    """Which of these candidates (M,) on pixels covered more than once are visible, bool (M,);
    ``zbuf`` (H W,) int64 filled with -1."""
    # float32 inverse depth as rasterize evaluates it: at tile offsets (ox, oy) = (dx, dy) mod 16
    # from the tile's first value, which rasterize moves by the tile's offset in the box
    inv0, inv_x, inv_y = (np.take(v, tri) for v in s["inv"])
    shift_x, shift_y = np.floor(dx / _MAX_TILE) * _MAX_TILE, np.floor(dy / _MAX_TILE) * _MAX_TILE
    moved = np.flatnonzero(s["split"][tri])
    if moved.size:
        sx, sy = shift_x[moved].astype(_F32), shift_y[moved].astype(_F32)
        inv0[moved] = inv0[moved] + (inv_x[moved] * sx + inv_y[moved] * sy)
    value = fma32(dy - shift_y, inv_y, fma32(dx - shift_x, inv_x, inv0))
    # key: the float32 inverse depth (positive, so its bits order like it) in the high bits,
    # 2^29 - 1 - triangle index in the low ones (exact ties: the smaller index)
    key = value.astype(np.float64).view(np.int64) + (_TRI_MASK - tri)
    np.maximum.at(zbuf, pixels, key)
    return zbuf[pixels] == key


def _empty(height: int, width: int) -> NumpyFragments:
    none = np.zeros(0, np.int64)
    return NumpyFragments(none, np.zeros((3, 0), _F32), (none, none), (height, width))
