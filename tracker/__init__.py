"""Live monocular 3D face tracker built around N2FNet (normal map -> head-model parameters).

Packages, bottom layer first (docs/ARCHITECTURE.md has the layer rules and one frame's path):
    files        atomic writes, safe torch loading, OBJ/PLY, stored cue maps, shared and cache folders
    geometry     rotations (torch and numpy), the pinhole camera and its axis flip, crops, boxes
    head_models  the HeadModel interface and its FLAME and ICT-FaceKit implementations
    render       the pure-PyTorch rasteriser, attribute interpolation, normal/mask/depth maps
    n2fnet       the network: model, backbones, checkpoints, runtimes, int8
    face         MediaPipe detection and crops, geometry cues, One-Euro smoothing
    fitting      the landmark refinement, the per-track fitter, ARKit-52 and the ICT side fit
    takes        crash-safe takes and their mesh / glb / Live Link CSV exports
    live         FaceTracker, its options, sources, the pipeline, sinks, result types
    outputs      VMC / Live Link / OSC streams, the mesh overlay
    bench        runnable benchmarks (``python -m tracker.bench ...``)
"""

from tracker.errors import TrackerError

__all__ = ["TrackerError"]
