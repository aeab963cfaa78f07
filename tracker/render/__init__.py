"""Rendering of head meshes with a pure-PyTorch rasteriser (CPU and CUDA, no compiled extension).

    rasterize            camera-frame triangles -> Fragments (triangle, barycentrics, depth); no grad
    interpolate          per-vertex attributes -> per-pixel images; differentiable
    render_maps          normals + mask + depth (+ region mask) of head meshes from one rasterisation
    render_normal_map, render_depth, render_region_mask, vertex_normals, normals_to_rgb, rgb_to_normals
    get_rasterizer       "torch" (default) or the optional pytorch3d / nvdiffrast backends
"""

from tracker.render.backends import available_backends, get_rasterizer
from tracker.render.maps import (
    RenderedMaps,
    normals_to_rgb,
    render_depth,
    render_maps,
    render_normal_map,
    render_region_mask,
    rgb_to_normals,
    vertex_normals,
    view_rotation,
)
from tracker.render.rasterize import Fragments, covered_to_image, interpolate, interpolate_covered, rasterize

__all__ = [
    "Fragments",
    "RenderedMaps",
    "available_backends",
    "covered_to_image",
    "get_rasterizer",
    "interpolate",
    "interpolate_covered",
    "normals_to_rgb",
    "rasterize",
    "render_depth",
    "render_maps",
    "render_normal_map",
    "render_region_mask",
    "rgb_to_normals",
    "vertex_normals",
    "view_rotation",
]
