"""Pluggable rasterisers with the signature and ``Fragments`` output of ``tracker.render.rasterizer``.

    torch       the built-in pure-PyTorch rasteriser (always available, CPU and CUDA)
    pytorch3d   ``pytorch3d.renderer.mesh.rasterize_meshes`` (CPU and CUDA; build it from source)
    nvdiffrast  ``nvdiffrast.torch.rasterize`` with a CUDA context (CUDA only)

The optional backends follow the same conventions (pixel centres at (j + 0.5, i + 0.5), triangles
with a vertex at z < near dropped, perspective-correct barycentrics, camera z as depth), so
``interpolate`` and the map functions work on their fragments. They are not exercised by the
tests here, where neither package is installed.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Callable

import torch

from tracker.errors import TrackerError
from tracker.geometry.camera import project
from tracker.render.rasterizer import Fragments, rasterize

Rasterizer = Callable[..., Fragments]

_INSTALL_HINTS = {
    "pytorch3d": "pytorch3d has no Linux wheels on PyPI: build it from source, "
    "pip install 'git+https://github.com/facebookresearch/pytorch3d.git' (needs a CUDA toolkit "
    "matching torch for GPU support)",
    "nvdiffrast": "install it with pip install 'git+https://github.com/NVlabs/nvdiffrast.git' "
    "(needs a CUDA toolkit; it rasterises on the GPU only)",
}


def available_backends() -> list[str]:
    """Names of the rasterisers usable in this environment, "torch" first."""
    return ["torch"] + [name for name in _INSTALL_HINTS if importlib.util.find_spec(name) is not None]


def get_rasterizer(name: str = "torch") -> Rasterizer:
    """The rasteriser called ``name``: a function with ``rasterize``'s signature.

    Raises:
        TrackerError: unknown name, or the backend's package is not installed (with how to install).
    """
    if name == "torch":
        return rasterize
    if name not in _INSTALL_HINTS:
        raise TrackerError(f"unknown rasteriser '{name}'; choose one of torch, {', '.join(_INSTALL_HINTS)}")
    if importlib.util.find_spec(name) is None:
        raise TrackerError(f"the '{name}' rasteriser needs the {name} package, which is not installed: "
                           f"{_INSTALL_HINTS[name]}; or use the built-in 'torch' rasteriser")
    return _pytorch3d_rasterize if name == "pytorch3d" else _nvdiffrast_rasterize


def _dropped(
    points: torch.Tensor, faces: torch.Tensor, focal: torch.Tensor, principal: torch.Tensor, near: float, cull: bool
) -> torch.Tensor:
    """(B, F) bool: triangles the rules drop (a vertex at z < near; back faces when culling)."""
    drop = (points[..., 2] < near)[:, faces].any(-1)
    if cull:
        uv = project(points, focal, principal)[:, faces]  # (B, F, 3, 2)
        d1, d2 = uv[:, :, 1] - uv[:, :, 0], uv[:, :, 2] - uv[:, :, 0]
        drop |= d1[..., 0] * d2[..., 1] - d1[..., 1] * d2[..., 0] >= 0
    return drop


@torch.no_grad()
def _pytorch3d_rasterize(
    points_cam: torch.Tensor,
    faces: torch.Tensor,
    focal: torch.Tensor,
    principal: torch.Tensor,
    size: tuple[int, int],
    near: float = 1e-3,
    cull_backfaces: bool = False,
    max_candidates: int | None = None,
) -> Fragments:
    """``rasterize`` through pytorch3d (``max_candidates`` is ignored)."""
    from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes
    from pytorch3d.structures import Meshes

    height, width = int(size[0]), int(size[1])
    num_faces = faces.shape[0]
    uv = project(points_cam, focal, principal)
    short = float(min(height, width))
    # pytorch3d NDC: +x left, +y up, the shorter image side spans [-1, 1]; z stays camera depth
    ndc = torch.stack(((width - 2.0 * uv[..., 0]) / short, (height - 2.0 * uv[..., 1]) / short, points_cam[..., 2]), -1)
    drop = _dropped(points_cam, faces, focal, principal, near, cull_backfaces)
    batch_faces = torch.where(drop[..., None], faces[:, :1], faces)  # dropped -> degenerate, skipped
    pix_to_face, zbuf, bary, _ = rasterize_meshes(
        Meshes(verts=ndc.float(), faces=batch_faces), image_size=(height, width), faces_per_pixel=1,
        perspective_correct=True,
    )
    covered = pix_to_face[..., 0] >= 0
    triangle = torch.where(covered, pix_to_face[..., 0] % num_faces, -1)
    return Fragments(
        triangle=triangle,
        bary=(bary[..., 0, :] * covered[..., None]).to(points_cam.dtype),
        depth=(zbuf[..., 0] * covered).to(points_cam.dtype),
    )


@torch.no_grad()
def _nvdiffrast_rasterize(
    points_cam: torch.Tensor,
    faces: torch.Tensor,
    focal: torch.Tensor,
    principal: torch.Tensor,
    size: tuple[int, int],
    near: float = 1e-3,
    cull_backfaces: bool = False,
    max_candidates: int | None = None,
) -> Fragments:
    """``rasterize`` through nvdiffrast on CUDA, one image at a time (``max_candidates`` ignored)."""
    import nvdiffrast.torch as dr

    if points_cam.device.type != "cuda":
        raise TrackerError("the 'nvdiffrast' rasteriser runs on CUDA tensors only; use the 'torch' rasteriser on CPU")
    height, width = int(size[0]), int(size[1])
    far = 1e3
    uv = project(points_cam, focal, principal)
    z = points_cam[..., 2]
    # clip space: x_ndc = 2u/W - 1, y_ndc = 2v/H - 1 (nvdiffrast's row 0 is y_ndc = -1), w = z
    clip = torch.stack(
        ((2.0 * uv[..., 0] / width - 1.0) * z, (2.0 * uv[..., 1] / height - 1.0) * z,
         (far + near) / (far - near) * z - 2.0 * far * near / (far - near), z), -1,
    ).float().contiguous()
    drop = _dropped(points_cam, faces, focal, principal, near, cull_backfaces)
    context = dr.RasterizeCudaContext(device=points_cam.device)
    triangles, barys = [], []
    for b in range(points_cam.shape[0]):
        kept = (~drop[b]).nonzero().squeeze(1)
        rast, _ = dr.rasterize(context, clip[b : b + 1], faces[kept].int().contiguous(), resolution=[height, width])
        tri_id = rast[0, ..., 3].long()  # kept triangle + 1, 0 = background
        triangles.append(torch.where(tri_id > 0, kept[(tri_id - 1).clamp_min(0)], -1))
        u, v = rast[0, ..., 0], rast[0, ..., 1]
        barys.append(torch.stack((u, v, 1.0 - u - v), -1) * (tri_id > 0)[..., None])
    triangle, bary = torch.stack(triangles), torch.stack(barys).to(points_cam.dtype)
    corner_z = z.gather(1, faces[triangle.clamp_min(0)].flatten(1)).view(*triangle.shape, 3)
    return Fragments(triangle=triangle, bary=bary, depth=(bary * corner_z).sum(-1))
