"""Rendering of head meshes with a pure-PyTorch rasteriser (CPU and CUDA, no compiled extension).

    rasterize            camera-frame triangles -> Fragments (triangle, barycentrics, depth); no grad
    interpolate          per-vertex attributes -> per-pixel images; differentiable
    render_maps          normals + mask + depth (+ region mask) of head meshes from one rasterisation
    render_normal_map, render_region_mask, vertex_normals, NumpyVertexNormals, normals_to_rgb, rgb_to_normals
    get_rasterizer       "torch" (default) or the optional pytorch3d / nvdiffrast backends
    grid                 a PNG grid of normal maps of random heads (``python -m tracker.render grid``)

The names come from their modules on first use (PEP 562), so that ``python -m tracker.render
--help`` answers before torch loads.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "tracker.render.backends": ("available_backends", "get_rasterizer"),
    "tracker.render.maps": (
        "NumpyVertexNormals", "RenderedMaps", "normals_to_rgb", "render_maps", "render_normal_map", "render_region_mask",
        "rgb_to_normals", "vertex_normals", "view_rotation",
    ),
    "tracker.render.rasterizer": ("Fragments", "covered_to_image", "interpolate", "interpolate_covered", "rasterize"),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name in _MODULE_OF:
        return getattr(importlib.import_module(_MODULE_OF[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
