"""Real-data folders for the paper's fine-tuning stages.

Folder format (one sample per file stem ``NAME``; all images are square S x S face crops):

    DATASET/
      camera.json               optional: {"focal": [fx, fy], "principal": [cx, cy]} in pixels of
                                the stored maps
                                (default: the median crop focal of the checkpoint's synthetic
                                distribution, principal point at the crop centre)
      normals/NAME.png          normal map, RGB = (n + 1) / 2 * 255, in the checkpoint's normal
                                frame (Pixel3DMM output for the paper's recipe)
      masks/NAME.png            face mask (non-zero = face; FaRL "face" classes in the paper)
      params/NAME.npz           optional pseudo-GT head-model parameters: one array per group
                                (stage 1: Pixel3DMM's optimised FLAME fits on CelebA-HQ)
      landmarks/NAME.txt        optional 68 lines "x y" in crop pixels, "nan nan" when missing
                                (stage 2: the 300W annotations)

Maps of another size than the network input are resized; landmarks and intrinsics are scaled with
them (they are given in pixels of the stored maps).

Stage 1 uses the samples that have params (L_param); stage 2 the samples with landmarks
(L_render with lambda_lmk = 10000, the normals and mask as pseudo-GT).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tracker.errors import TrackerError


@dataclass
class RealBatch:
    """normals (B, 3, S, S) masked; mask (B, 1, S, S); focal, principal (B, 2);
    params {group: (B, n)} or None; landmarks_2d (B, 68, 2) and landmark_visible (B, 68) or None."""

    normals: torch.Tensor
    mask: torch.Tensor
    focal: torch.Tensor
    principal: torch.Tensor
    params: dict[str, torch.Tensor] | None
    landmarks_2d: torch.Tensor | None
    landmark_visible: torch.Tensor | None


class RealDataset:
    """Samples of a DATASET folder, drawn at random (with replacement) as RealBatch-es."""

    def __init__(self, folder: str | Path, size: int, default_focal: float, stage: int, device="cpu", seed: int = 0) -> None:
        self.folder = Path(folder)
        self.size, self.stage, self.device = size, stage, torch.device(device)
        normals_dir = self.folder / "normals"
        if not normals_dir.is_dir() or not (self.folder / "masks").is_dir():
            raise TrackerError(f"{self.folder}: a fine-tuning folder needs normals/ and masks/ (see train/real_data.py for the format)")
        stems = sorted(p.stem for p in normals_dir.glob("*.png"))
        needed = {1: "params", 2: "landmarks"}[stage]
        suffix = {"params": ".npz", "landmarks": ".txt"}[needed]
        self.stems = [s for s in stems if (self.folder / needed / f"{s}{suffix}").is_file()]
        if not self.stems:
            raise TrackerError(f"{self.folder}: no sample has {needed}/NAME{suffix}, which fine-tuning stage {stage} needs")
        camera = self.folder / "camera.json"
        if camera.is_file():
            values = json.loads(camera.read_text())
            self.focal = torch.tensor(values["focal"], dtype=torch.float32)
            self.principal = torch.tensor(values["principal"], dtype=torch.float32)
        else:
            self.focal = torch.tensor([default_focal, default_focal])
            self.principal = torch.tensor([size / 2, size / 2])
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.stems)

    def _image(self, path: Path, mode: str) -> tuple[np.ndarray, float]:
        """(S, S[, 3]) float image and the factor S / stored width."""
        if not path.is_file():
            raise TrackerError(f"missing {path}")
        image = Image.open(path).convert(mode)
        if image.width != image.height:
            raise TrackerError(f"{path}: maps must be square crops, got {image.width}x{image.height}")
        scale = self.size / image.width
        if scale != 1:
            image = image.resize((self.size, self.size), Image.NEAREST if mode == "L" else Image.BILINEAR)
        return np.asarray(image, dtype=np.float32), scale

    def load(self, stem: str) -> dict:
        """One sample as tensors (unbatched)."""
        mask_image, _ = self._image(self.folder / "masks" / f"{stem}.png", "L")
        rgb, scale = self._image(self.folder / "normals" / f"{stem}.png", "RGB")
        mask = torch.from_numpy(mask_image > 0).float()[None]
        normals = torch.nn.functional.normalize(torch.from_numpy(rgb).permute(2, 0, 1) / 255 * 2 - 1, dim=0) * mask
        sample = {"normals": normals, "mask": mask, "scale": scale}
        if self.stage == 1:
            with np.load(self.folder / "params" / f"{stem}.npz", allow_pickle=False) as data:
                sample["params"] = {k: torch.from_numpy(np.asarray(data[k], dtype=np.float32).reshape(-1)) for k in data.files}
        else:
            lmk = np.loadtxt(self.folder / "landmarks" / f"{stem}.txt", dtype=np.float32).reshape(-1, 2)
            if lmk.shape != (68, 2):
                raise TrackerError(f"{stem}.txt: expected 68 landmark lines, got {lmk.shape[0]}")
            sample["landmarks_2d"] = torch.from_numpy(np.nan_to_num(lmk)) * scale
            sample["landmark_visible"] = torch.from_numpy(~np.isnan(lmk).any(axis=1)).float()
        return sample

    def sample(self, batch: int) -> RealBatch:
        picks = torch.randint(len(self.stems), (batch,), generator=self.generator).tolist()
        items = [self.load(self.stems[i]) for i in picks]

        def stack(key):
            return torch.stack([item[key] for item in items]).to(self.device)

        params = None
        if self.stage == 1:
            params = {g: torch.stack([item["params"][g] for item in items]).to(self.device) for g in items[0]["params"]}
        scale = torch.tensor([item["scale"] for item in items], device=self.device)[:, None]
        default = not (self.folder / "camera.json").is_file()  # the default is already in input pixels
        return RealBatch(
            normals=stack("normals"),
            mask=stack("mask"),
            focal=self.focal.expand(batch, 2).to(self.device) * (1 if default else scale),
            principal=self.principal.expand(batch, 2).to(self.device) * (1 if default else scale),
            params=params,
            landmarks_2d=stack("landmarks_2d") if self.stage == 2 else None,
            landmark_visible=stack("landmark_visible") if self.stage == 2 else None,
        )
