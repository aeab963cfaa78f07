"""``python -m train.evaluate --checkpoint C``: a checkpoint on a held-out synthetic set, in the
paper's table layout, beside the "predict the mean parameters" baseline.

Columns: CD (mm; NoW-style alignment on the face region -- rotation, translation, uniform
scale -- then mean vertex distance per region: face, eyes, nose, mouth, ears), MNE (radians) and
CR (share within 2 mm) of every 4th face-region GT vertex against the reconstruction's face
surface (closest points, not same-index vertices; the reconstruction aligned as for CD), NME (%
of the inter-ocular distance, projected landmarks in the crop), FPS (the N2FNet forward pass
alone, batch 1, on the chosen device; the paper's FPS also includes its normal and segmentation
networks). The baseline predicts the priors' mean parameters and the camera module's zero output
(head origin at the crop centre, the configured depth per focal); its FPS is not applicable.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tracker.live.options import positive_int
from train.cli import Progress, add_output_options, run

if TYPE_CHECKING:
    import torch

    from tracker.head_models import HeadModel
    from tracker.n2fnet import N2FNet
    from train.config import SamplerConfig

REGIONS = ("face", "eyes", "nose", "mouth", "ears")
SURFACE_PROBE_STRIDE = 4  # MNE and CR probe every 4th face-region GT vertex (ICT: about 2,200)


@dataclass
class EvaluationRow:
    name: str
    cd_mm: dict[str, float]
    mne: float
    cr: float
    nme_percent: float
    fps: float | None


def evaluate(net: N2FNet, head: HeadModel, sampler_config: SamplerConfig, samples: int, seed: int, batch_size: int = 16) -> tuple[EvaluationRow, EvaluationRow]:
    """(N2FNet row, mean-parameter baseline row) on ``samples`` held-out synthetic faces."""
    import torch

    from train import metrics
    from train.synthetic import SyntheticSampler, render_face

    with torch.no_grad():
        device = head.device
        sampler = SyntheticSampler(head, sampler_config, seed=seed)
        face_mask = head.region_masks["face"]
        regions = {r: head.region_masks[r] for r in REGIONS}
        face_vertices, face_faces = face_submesh(head)
        probes = torch.zeros(len(face_vertices), dtype=torch.bool, device=device)
        probes[::SURFACE_PROBE_STRIDE] = True
        sums = {"net": _Accumulator(), "mean": _Accumulator()}
        for start in range(0, samples, batch_size):
            batch = sampler.sample(min(batch_size, samples - start))
            mask = batch.mask if net.config.use_mask_input else None
            out = net(batch.normals, batch.focal, batch.principal, mask)
            _, mean_rotation, mean_translation = net.camera_from_output(torch.zeros(len(batch.normals), 9, device=device), batch.focal, batch.principal)
            mean_params = {g: head.param_groups[g].mean(len(batch.normals), device=device) for g in out.params}
            candidates = {
                "net": (out.params, out.rotation, out.translation),
                "mean": (mean_params, mean_rotation, mean_translation),
            }
            for key, (params, rotation, translation) in candidates.items():
                vertices = head.decode(params)
                cd = metrics.region_errors(vertices, batch.vertices, regions, align_region="face")
                aligned = metrics.align(vertices, batch.vertices, face_mask)[:, face_vertices]  # as CD aligns
                gt_face = batch.vertices[:, face_vertices]  # both surfaces: the face submesh
                mne = metrics.mean_normal_error(gt_face, face_faces, aligned, face_faces, gt_vertex_mask=probes)
                cr = metrics.completeness_ratio(gt_face, aligned, face_faces, gt_vertex_mask=probes)
                rendered = render_face(head, vertices, params, rotation, translation, batch.focal, batch.principal, sampler_config.output_size, sampler_config.normal_frame)
                nme = metrics.nme(rendered.landmarks_2d, batch.landmarks_2d)
                sums[key].add(cd, mne, cr, nme)
        example = sampler.sample(1)
        mask = example.mask if net.config.use_mask_input else None
        fps = metrics.measure_fps(lambda: net(example.normals, example.focal, example.principal, mask), n=30, warmup=5).fps
        return sums["net"].row("N2FNet (this checkpoint)", fps), sums["mean"].row("mean parameters", None)


def face_submesh(head: HeadModel) -> tuple[torch.Tensor, torch.Tensor]:
    """The reconstruction's face surface: (V',) vertex indices of the face region and (F', 3)
    its drawn triangles re-indexed into them."""
    import torch

    mask = head.region_masks["face"]
    vertices = mask.nonzero()[:, 0]
    new_index = torch.full_like(mask, -1, dtype=torch.long)
    new_index[vertices] = torch.arange(len(vertices), device=mask.device)
    faces = head.render_faces
    return vertices, new_index[faces[mask[faces].all(1)]]


class _Accumulator:
    """Sums per-sample metric values across batches."""

    def __init__(self) -> None:
        self.values: dict[str, list[torch.Tensor]] = {}

    def add(self, cd: dict[str, torch.Tensor], mne: torch.Tensor, cr: torch.Tensor, nme: torch.Tensor) -> None:
        for key, value in {**{f"cd_{r}": v for r, v in cd.items()}, "mne": mne, "cr": cr, "nme": nme}.items():
            self.values.setdefault(key, []).append(value.cpu())

    def mean(self, key: str) -> float:
        import torch

        return torch.cat(self.values[key]).mean().item()

    def row(self, name: str, fps: float | None) -> EvaluationRow:
        return EvaluationRow(name, {r: self.mean(f"cd_{r}") for r in REGIONS}, self.mean("mne"), self.mean("cr"), 100 * self.mean("nme"), fps)


def format_table(rows: list[EvaluationRow]) -> str:
    """Markdown table: Method | CD face eyes nose mouth ears (mm) | MNE | CR | NME % | FPS."""
    header = "| Method | CD face | CD eyes | CD nose | CD mouth | CD ears | MNE | CR | NME % | FPS (net) |"
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        fps = f"{r.fps:.1f}" if r.fps is not None else "-"
        cds = " | ".join(f"{r.cd_mm[k]:.2f}" for k in REGIONS)
        lines.append(f"| {r.name} | {cds} | {r.mne:.3f} | {r.cr:.2f} | {r.nme_percent:.2f} | {fps} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="N2FNet checkpoint (.pt)")
    p.add_argument("--head-model-path", default=None, help="override the head-model file/folder recorded in the checkpoint")
    p.add_argument("--samples", type=positive_int, default=128, help="held-out synthetic faces")
    p.add_argument("--seed", type=int, default=987654, help="held-out seed (training uses other seeds)")
    p.add_argument("--device", default="auto")
    add_output_options(p)
    return p


def report(args: argparse.Namespace, progress: Progress) -> None:
    """Load the checkpoint and its head model, evaluate, print the table."""
    from tracker.head_models import load_head_model
    from tracker.n2fnet.checkpoint import load_checkpoint, model_from_checkpoint
    from train.config import SamplerConfig
    from train.trainer import pick_device

    state = load_checkpoint(args.checkpoint)
    device = pick_device(args.device)
    head = load_head_model(state["n2fnet"]["head_model"], args.head_model_path or state.get("head_model", {}).get("path")).to(device)
    net = model_from_checkpoint(state).to(device)
    sampler_config = SamplerConfig(**state.get("sampler", {}))
    progress.began("nothing was written (the table comes at the end)")
    rows = evaluate(net, head, sampler_config, args.samples, args.seed)
    print(f"checkpoint {args.checkpoint}: {head.name}, backbone {net.config.backbone}, {args.samples} held-out synthetic samples, {device}")
    print(format_table(list(rows)))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(lambda progress: report(args, progress), "the evaluation", verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
