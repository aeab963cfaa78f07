"""Pure-PyTorch triangle rasteriser (batched, CPU and CUDA) and differentiable attribute interpolation.

Two primitives, as in nvdiffrast:
    rasterize    camera-frame points -> ``Fragments`` (which triangle covers each pixel, its
                 perspective-correct barycentrics and camera depth); not differentiable.
    interpolate  per-vertex attributes + fragments -> per-pixel attributes; differentiable w.r.t.
                 the attributes, so losses on rendered maps reach the vertices through it.

Conventions (those of ``tracker.geometry.camera``): points in the OpenCV camera frame (+z forward),
``u = fx * X / Z + cx``, ``v = fy * Y / Z + cy`` in continuous pixel coordinates whose pixel
(row i, column j) has its centre at (j + 0.5, i + 0.5). A pixel is covered by a triangle when its
*centre* lies inside the projected triangle or on its boundary.

Rules:
    - Both windings are rasterised; ``cull_backfaces=True`` keeps only triangles whose projected
      winding is counter-clockwise as seen by the viewer, i.e. front faces of a mesh wound
      counter-clockwise seen from outside (``(v1 - v0) x (v2 - v0)`` pointing out).
    - Triangles with any vertex at ``z < near`` are dropped whole (no clipping): the tracker's heads
      are far from the camera, so a triangle that reaches the near plane is an error case anyway.
    - Watertight: every edge test is widened by a bound on its floating-point rounding error (a
      few ulps, ~1e-6 px for small triangles in float32), so a pixel centre on a shared edge or
      vertex is covered by at least one (usually both) of the triangles meeting there and the
      z-test picks one. The two triangles sharing an edge also evaluate it from the same anchor
      vertex (the lower vertex index) with exactly opposite directions, so they test the same line.
    - Z-buffer: the nearest triangle wins; exact depth ties go to the smaller triangle index. One
      ``scatter_reduce(amax)`` on a packed int64 key (float32 inverse depth, triangle index) does
      both, so the result is deterministic on CPU and CUDA.

Algorithm: every triangle's bounding box of pixel centres is covered by tiles of a power-of-two
shape (1..16 per axis, picked per triangle; boxes wider than 16 pixels use several 16-wide tiles).
Triangles are grouped by tile shape, so the edge functions of a group are dense
(tiles, tile pixels) tensor expressions with no per-candidate gathers; groups are processed in
chunks of at most ``max_candidates`` (tile pixels) to bound memory. Tile pixels that fall beyond
the image land in a padding margin of the z-buffer and are discarded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_MAX_TILE = 16  # largest tile side (pixels); a power of two
_TRI_BITS = 29  # the z-buffer key keeps the triangle index in its low bits
_TRI_MASK = (1 << _TRI_BITS) - 1


@dataclass
class Fragments:
    """Result of ``rasterize`` for a batch of B images of H x W pixels.

    triangle        (B, H, W) long: index into ``faces`` of the visible triangle, -1 for background
    bary            (B, H, W, 3): perspective-correct barycentrics of the pixel centre in that
                    triangle (weights of faces[t, 0], faces[t, 1], faces[t, 2]); 0 in background.
                    They sum to 1; at the very edge of a triangle one may be slightly negative
                    (~1e-6, see the watertightness rule)
    depth           (B, H, W): camera-frame z of the visible surface at the pixel centre; 0 in
                    background
    pixels          (N,) long or None: flat indices into B * H * W of the covered pixels, ascending
    pixel_triangle  (N,) long or None: their triangles
    pixel_bary      (N, 3) or None: their barycentrics
    The last three are a compact copy that ``rasterize`` fills; ``covered()`` derives them when
    absent (fragments built by hand or by another backend).
    """

    triangle: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor
    pixels: torch.Tensor | None = None
    pixel_triangle: torch.Tensor | None = None
    pixel_bary: torch.Tensor | None = None

    @property
    def mask(self) -> torch.Tensor:
        """(B, H, W) bool: pixels covered by a triangle."""
        return self.triangle >= 0

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)."""
        return self.triangle.shape[1], self.triangle.shape[2]

    def covered(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pixels (N,), pixel_triangle (N,), pixel_bary (N, 3)) of the covered pixels."""
        if self.pixels is None or self.pixel_triangle is None or self.pixel_bary is None:
            self.pixels = self.mask.view(-1).nonzero().squeeze(1)
            self.pixel_triangle = self.triangle.view(-1).index_select(0, self.pixels)
            self.pixel_bary = self.bary.view(-1, 3).index_select(0, self.pixels)
        return self.pixels, self.pixel_triangle, self.pixel_bary


@torch.no_grad()
def rasterize(
    points_cam: torch.Tensor,
    faces: torch.Tensor,
    focal: torch.Tensor,
    principal: torch.Tensor,
    size: tuple[int, int],
    near: float = 1e-3,
    cull_backfaces: bool = False,
    max_candidates: int = 1 << 16,
) -> Fragments:
    """Rasterise triangle meshes seen by pinhole cameras.

    Args:
        points_cam: (B, V, 3) camera-frame vertices (OpenCV axes, metres); float32 or float64,
            which is also the precision of the edge tests and outputs.
        faces: (F, 3) long vertex indices, shared by the batch.
        focal: (B, 2) (fx, fy) in pixels (also (B,) or (B, 1)); must be positive.
        principal: (B, 2) (cx, cy) in pixels.
        size: (H, W) of the images.
        near: triangles with a vertex at z < near are dropped.
        cull_backfaces: drop triangles wound clockwise on screen (see the module docstring).
        max_candidates: most (tile pixel, triangle) candidates, or covered pixels, processed at
            once; bounds the temporaries (about 60 bytes each) and keeps them in cache.

    Returns:
        ``Fragments`` with (B, H, W) triangle / depth and (B, H, W, 3) bary.
    """
    height, width = int(size[0]), int(size[1])
    batch = points_cam.shape[0]
    num_faces = faces.shape[0]
    if num_faces > _TRI_MASK:
        raise ValueError(f"rasterize supports at most {_TRI_MASK} triangles, got {num_faces}")
    device, dtype = points_cam.device, points_cam.dtype
    faces = faces.long()
    tris = _triangle_setup(points_cam, faces, focal, principal, height, width, near, cull_backfaces)

    pad = _MAX_TILE - 1  # z-buffer margin so that tiles never index outside it
    pad_w = width + pad
    zbuf = torch.full((batch * (height + pad) * pad_w,), -1, dtype=torch.long, device=device)
    _scatter_tiles(zbuf, tris, pad_w, max_candidates)

    key = zbuf.view(batch, height + pad, pad_w)[:, :height, :width]
    covered = key >= 0
    triangle = torch.where(covered, _TRI_MASK - (key & _TRI_MASK), -1)
    pixels = covered.view(-1).nonzero().squeeze(1)
    face = triangle.view(-1).index_select(0, pixels)
    pixel_bary = torch.empty(pixels.numel(), 3, device=device, dtype=dtype)
    pixel_depth = torch.empty(pixels.numel(), device=device, dtype=dtype)
    for part in range(0, pixels.numel(), max_candidates):  # chunks bound the temporaries
        rows = slice(part, part + max_candidates)
        _resolve(tris.resolve, pixels[rows], face[rows], height, width, num_faces, pixel_bary[rows], pixel_depth[rows])
    bary = torch.zeros(batch * height * width, 3, device=device, dtype=dtype).index_copy_(0, pixels, pixel_bary)
    depth = torch.zeros(batch * height * width, device=device, dtype=dtype).index_copy_(0, pixels, pixel_depth)
    return Fragments(
        triangle=triangle,
        bary=bary.view(batch, height, width, 3),
        depth=depth.view(batch, height, width),
        pixels=pixels,
        pixel_triangle=face,
        pixel_bary=pixel_bary,
    )


@dataclass
class _Triangles:
    """Kept triangles of the batch, sorted by tile shape (N rows), and a per-triangle table.

    tiles     (4, 3, N): for the three edge functions (k = the edge opposite corner k, >= 0
              inside, widened by their rounding bound) and the inverse depth: the value at the
              first pixel centre of the bounding box and its steps per pixel in x and y
    first     (N,) long: flat index of that pixel in the padded z-buffer
    low       (N,) long: low bits of the z-buffer key, 2^29 - 1 - face index
    box       (N, 2) long: bounding-box width and height in pixels
    shapes    [(tile_w, tile_h, begin, end)]: rows [begin, end) use tiles of that shape
    resolve   (B * F, 11), row b * F + f: perspective-weighted edge functions
              q_k = c_k + a_k * (x - x0) + b_k * (y - y0) (c, a, b for k = 0..2), then x0, y0 (the
              first pixel centre of the bounding box); sum_k q_k is the inverse depth and
              q_k / sum q the perspective-correct barycentrics
    """

    tiles: torch.Tensor
    first: torch.Tensor
    low: torch.Tensor
    box: torch.Tensor
    shapes: list[tuple[int, int, int, int]]
    resolve: torch.Tensor


def _triangle_setup(
    points: torch.Tensor,
    faces: torch.Tensor,
    focal: torch.Tensor,
    principal: torch.Tensor,
    height: int,
    width: int,
    near: float,
    cull_backfaces: bool,
) -> _Triangles:
    """Project the vertices, bound, tabulate and sort the triangles (see ``_Triangles``)."""
    batch, device, dtype = points.shape[0], points.device, points.dtype
    num_faces = faces.shape[0]
    focal = focal.to(dtype)
    focal = (focal[:, None] if focal.dim() == 1 else focal).expand(batch, 2)
    # image-centred pixel coordinates: pixel centres sit at exact half-integers around 0
    centre = principal.to(dtype) - principal.new_tensor([width / 2.0, height / 2.0], dtype=dtype)
    z = points[..., 2]
    depth = z.clamp_min(near)
    x = points[..., 0] / depth * focal[:, 0:1] + centre[:, 0:1]  # (B, V)
    y = points[..., 1] / depth * focal[:, 1:2] + centre[:, 1:2]
    # corner-major (B, 3, F) layouts keep every elementwise op below contiguous
    corner_index = faces.t().reshape(-1)
    tx, ty, tz = (c.index_select(1, corner_index).view(batch, 3, num_faces) for c in (x, y, z))
    x0, x1, x2 = tx.unbind(1)
    y0, y1, y2 = ty.unbind(1)

    area2 = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)  # (B, F)
    valid = (torch.minimum(torch.minimum(tz[:, 0], tz[:, 1]), tz[:, 2]) >= near) & (area2 != 0) & area2.isfinite()
    if cull_backfaces:
        valid &= area2 < 0  # y points down on screen: counter-clockwise for the viewer is negative

    # bounding box of pixel centres (column j at j + 0.5 - W/2), clipped to the image
    limit = float(max(height, width) + 2)
    low_x, low_y = torch.minimum(torch.minimum(x0, x1), x2), torch.minimum(torch.minimum(y0, y1), y2)
    high_x, high_y = torch.maximum(torch.maximum(x0, x1), x2), torch.maximum(torch.maximum(y0, y1), y2)
    col0 = low_x.add_(width / 2.0 - 0.5).clamp_(-1.0, limit).ceil_().clamp_min_(0)
    row0 = low_y.add_(height / 2.0 - 0.5).clamp_(-1.0, limit).ceil_().clamp_min_(0)
    col1 = high_x.add_(width / 2.0 - 0.5).clamp_(-1.0, limit).floor_().clamp_max_(width - 1)
    row1 = high_y.add_(height / 2.0 - 0.5).clamp_(-1.0, limit).floor_().clamp_max_(height - 1)
    valid &= (col1 >= col0) & (row1 >= row0)
    origin_x, origin_y = col0 + (0.5 - width / 2.0), row0 + (0.5 - height / 2.0)  # first pixel centre
    box_w, box_h = (col1 - col0 + 1).clamp_min_(1), (row1 - row0 + 1).clamp_min_(1)

    # edge k runs from corner k+1 to corner k+2 (the edge opposite corner k). Its line is anchored
    # at its endpoint of lower vertex index and end - start flips sign exactly with the direction,
    # so the two triangles sharing an edge test exactly the same line.
    start_x, start_y = tx.roll(-1, 1), ty.roll(-1, 1)  # (B, 3, F): corner k+1
    end_x, end_y = tx.roll(-2, 1), ty.roll(-2, 1)  # corner k+2
    corner_t = faces.t()
    swap = corner_t.roll(-1, 0) > corner_t.roll(-2, 0)  # (3, F)
    anchor_x, anchor_y = torch.where(swap, end_x, start_x), torch.where(swap, end_y, start_y)
    orientation = torch.where(area2 < 0, -1.0, 1.0).to(dtype)[:, None]  # (B, 1, F)
    # e(p) = (p_x - anchor_x) * step_x + (p_y - anchor_y) * step_y, >= 0 inside for both windings
    step_x = (start_y - end_y).mul_(orientation)
    step_y = (end_x - start_x).mul_(orientation)
    start = (origin_x[:, None] - anchor_x).mul_(step_x).addcmul_(origin_y[:, None] - anchor_y, step_y)
    weight = 1.0 / (tz.clamp_min(near) * (area2.abs() + ~valid)[:, None])  # q_k = e_k * weight_k
    # rounding bound of the edge values at tile pixels: a few ulps of |p - anchor| * |step|, with
    # |p - anchor| <= |first pixel - anchor| + box size (the anchor may lie far off-screen)
    reach_x = (origin_x[:, None] - anchor_x).abs_().add_(box_w[:, None] + _MAX_TILE)
    reach_y = (origin_y[:, None] - anchor_y).abs_().add_(box_h[:, None] + _MAX_TILE)
    slack = (reach_x * step_x.abs()).addcmul_(reach_y, step_y.abs()).mul_(8.0 * torch.finfo(dtype).eps)

    # per edge function (e0, e1, e2, inverse depth) and term (value at the first pixel, x step,
    # y step): (4, 3, B, F); and the per-pixel table (B, 11, F) -> (B * F, 11)
    tiles = torch.empty(4, 3, batch, num_faces, device=device, dtype=dtype)
    resolve = torch.empty(batch, 11, num_faces, device=device, dtype=dtype)
    for j, value in enumerate((start, step_x, step_y)):
        tiles[:3, j] = value.transpose(0, 1)
        q = torch.mul(value, weight, out=resolve[:, 3 * j : 3 * j + 3])
        torch.add(q[:, 0], q[:, 1], out=tiles[3, j]).add_(q[:, 2])
    tiles[:3, 0] += slack.transpose(0, 1)
    resolve[:, 9], resolve[:, 10] = origin_x, origin_y
    resolve = resolve.transpose(1, 2).contiguous().view(batch * num_faces, 11)
    box = torch.stack((box_w, box_h), -1)  # (B, F, 2)

    tile = _next_pow2(box.clamp_max(_MAX_TILE)).view(-1, 2)
    shape_id = (tile[:, 0] * (_MAX_TILE + 1) + tile[:, 1]).masked_fill_(~valid.view(-1), _MAX_TILE + 1)
    sorted_id, order = shape_id.sort(stable=True)
    kept = int((sorted_id > _MAX_TILE + 1).sum())
    order = order[sorted_id.numel() - kept :]
    ids, counts = torch.unique_consecutive(sorted_id[sorted_id.numel() - kept :], return_counts=True)
    shapes, end = [], 0
    for sid, count in zip(ids.tolist(), counts.tolist()):
        shapes.append((sid // (_MAX_TILE + 1), sid % (_MAX_TILE + 1), end, end + count))
        end += count

    pad_w = width + _MAX_TILE - 1
    image = torch.arange(batch, device=device)[:, None] * ((height + _MAX_TILE - 1) * pad_w)
    first = (image + row0.long() * pad_w + col0.long()).view(-1)
    low = _TRI_MASK - (order % num_faces)
    return _Triangles(
        tiles=tiles.view(12, -1).index_select(1, order).view(4, 3, -1),
        first=first.index_select(0, order),
        low=low,
        box=box.view(-1, 2).index_select(0, order).long(),
        shapes=shapes,
        resolve=resolve,
    )


def _next_pow2(n: torch.Tensor) -> torch.Tensor:
    """Smallest power of two >= n for integer-valued float n >= 1, as long."""
    return torch.exp2(torch.ceil(torch.log2(n))).long()


def _scatter_tiles(zbuf: torch.Tensor, tris: _Triangles, pad_w: int, max_candidates: int) -> None:
    """Z-test every (tile pixel, triangle) candidate into ``zbuf`` (flat, long; -1 = empty).

    Candidates are laid out (K tile pixels, n triangles), triangles contiguous, and evaluated with
    plain elementwise ops (no matmul, whose reduced-precision modes would void the rounding bound).
    """
    device, dtype = zbuf.device, tris.tiles.dtype
    for tile_w, tile_h, begin, end in tris.shapes:
        tiles, first, low = tris.tiles[:, :, begin:end], tris.first[begin:end], tris.low[begin:end]
        if tile_w == _MAX_TILE or tile_h == _MAX_TILE:  # boxes may exceed a tile: one row per tile
            tiles, first, low = _split_boxes(tiles, first, low, tris.box[begin:end], pad_w)
        oy, ox = torch.meshgrid(
            torch.arange(tile_h, device=device), torch.arange(tile_w, device=device), indexing="ij"
        )
        offset = (oy * pad_w + ox).reshape(-1, 1)
        ox, oy = ox.reshape(-1, 1).to(dtype), oy.reshape(-1, 1).to(dtype)  # (K, 1)
        per_chunk = max(1, max_candidates // (tile_w * tile_h))
        for part in range(0, first.numel(), per_chunk):
            rows = slice(part, part + per_chunk)
            # e0, e1, e2 (widened) and the inverse depth at the tile pixels: (4, K, n)
            coeff = tiles[:, :, None, rows]  # (4, 3, 1, n)
            values = torch.addcmul(coeff[:, 0], ox, coeff[:, 1]).addcmul_(oy, coeff[:, 2])
            inside = values[:3].amin(0)
            # key: float32 inverse depth (its sign: inside) in the high bits, 2^29 - 1 - face low
            key = torch.copysign(values[3], inside).float().double().view(torch.long)
            key += low[rows]
            zbuf.scatter_reduce_(0, (offset + first[rows]).view(-1), key.view(-1), "amax")


def _split_boxes(
    tiles: torch.Tensor, first: torch.Tensor, low: torch.Tensor, box: torch.Tensor, pad_w: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows whose bounding box (n, 2) exceeds a 16 x 16 tile -> one row per tile, origins moved.

    ``tiles`` (4, 3, n) -> (4, 3, T); ``first``, ``low`` (n,) -> (T,).
    """
    across = (box[:, 0] + _MAX_TILE - 1) // _MAX_TILE
    count = across * ((box[:, 1] + _MAX_TILE - 1) // _MAX_TILE)
    row = torch.repeat_interleave(count)
    local = torch.arange(row.numel(), device=row.device) - (count.cumsum(0) - count)[row]
    step_x = local % across[row] * _MAX_TILE
    step_y = local // across[row] * _MAX_TILE
    tiles = tiles[:, :, row]
    tiles[:, 0] += tiles[:, 1] * step_x.to(tiles.dtype) + tiles[:, 2] * step_y.to(tiles.dtype)
    return tiles, first[row] + step_y * pad_w + step_x, low[row]


def _resolve(
    table: torch.Tensor,
    pixels: torch.Tensor,
    face: torch.Tensor,
    height: int,
    width: int,
    num_faces: int,
    bary_out: torch.Tensor,
    depth_out: torch.Tensor,
) -> None:
    """Perspective-correct barycentrics (n, 3) and depth (n,) of covered pixels, into the outputs.

    ``table`` (B * F, 11) from ``_Triangles.resolve``, ``pixels`` (n,) flat indices into B * H * W,
    ``face`` (n,) their triangles.
    """
    dtype = table.dtype
    image = pixels // (height * width)
    rest = pixels - image * (height * width)
    row = rest // width
    coeff = table.index_select(0, image * num_faces + face)  # (n, 11)
    # pixel centre minus the triangle's first box pixel centre: exact small integers
    dx = ((rest - row * width).to(dtype) + (0.5 - width / 2.0))[:, None] - coeff[:, 9:10]
    dy = (row.to(dtype) + (0.5 - height / 2.0))[:, None] - coeff[:, 10:11]
    q = torch.addcmul(coeff[:, 0:3], coeff[:, 3:6], dx).addcmul_(coeff[:, 6:9], dy)  # (n, 3)
    inv_depth = q[:, 0:1] + q[:, 1:2] + q[:, 2:3]
    torch.div(q, inv_depth, out=bary_out)
    torch.reciprocal(inv_depth.squeeze(1), out=depth_out)


def interpolate(attributes: torch.Tensor, faces: torch.Tensor, fragments: Fragments) -> torch.Tensor:
    """Interpolate per-vertex attributes at the pixel centres with the fragments' barycentrics.

    Args:
        attributes: (B, V, C), or (V, C) shared by the batch.
        faces: (F, 3) long, the faces given to ``rasterize``.
        fragments: from ``rasterize``, B images of H x W.

    Returns:
        (B, H, W, C), zeros in the background; differentiable w.r.t. ``attributes``.
    """
    return covered_to_image(interpolate_covered(attributes, faces, fragments), fragments)


def interpolate_covered(attributes: torch.Tensor, faces: torch.Tensor, fragments: Fragments) -> torch.Tensor:
    """``interpolate`` at the covered pixels only: (N, C) in ``fragments.covered()`` order.

    Cheaper than full images when the mesh covers part of them; pair with ``covered_to_image``.
    """
    height, width = fragments.size
    pixels, face, bary = fragments.covered()
    channels = attributes.shape[-1]
    if attributes.dim() == 3:  # per-image attributes: a (B * F, 3 * C) table, row b * F + f
        table = attributes.index_select(1, faces.reshape(-1)).reshape(-1, 3 * channels)
        face = pixels // (height * width) * faces.shape[0] + face
    else:
        table = attributes.index_select(0, faces.reshape(-1)).reshape(-1, 3 * channels)
    values = table.index_select(0, face).view(-1, 3, channels)  # (N, corner, C)
    bary = bary.to(attributes.dtype)
    out = values[:, 0] * bary[:, 0:1]
    out = out + values[:, 1] * bary[:, 1:2]
    return out + values[:, 2] * bary[:, 2:3]


def covered_to_image(values: torch.Tensor, fragments: Fragments) -> torch.Tensor:
    """(N, C) values at the ``fragments.covered()`` pixels -> (B, H, W, C) images, zeros elsewhere;
    differentiable w.r.t. ``values``."""
    batch = fragments.triangle.shape[0]
    height, width = fragments.size
    out = values.new_zeros(batch * height * width, values.shape[-1])
    return out.index_copy_(0, fragments.covered()[0], values).view(batch, height, width, -1)
