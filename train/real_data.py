"""Real-data folders for the paper's fine-tuning stages.

Folder format (one sample per file stem ``NAME``; all images are square S x S face crops):

    DATASET/
      camera.json               optional: {"focal": [fx, fy], "principal": [cx, cy]} in pixels of
                                the stored maps
                                (default: the median crop focal of the checkpoint's synthetic
                                distribution, principal point at the crop centre)
      cameras/NAME.json         optional: the same for one sample (``train.pseudo_gt`` writes
                                every crop's own intrinsics); it overrides camera.json
      normals/NAME.png          normal map, RGB = (n + 1) / 2 * M with M = 255 (8-bit PNG) or
                                65535 (16-bit PNG), in the checkpoint's normal frame (Pixel3DMM
                                output for the paper's recipe, the live cue's for
                                ``train.pseudo_gt``)
      masks/NAME.png            face mask (non-zero = face; FaRL "face" classes in the paper)
      params/NAME.npz           optional pseudo-GT head-model parameters: one array per group
                                (stage 1: Pixel3DMM's optimised FLAME fits on CelebA-HQ)
      poses/NAME.json           optional: the sample's camera {"rotation": 3x3, "translation": [m]}
                                (X = R F X_head + t; ``train.pseudo_gt``: the refined pose), for
                                ``train.finetune --pose-weights``; a batch has poses when all its
                                samples do
      landmarks/NAME.txt        optional 68 lines "x y" in crop pixels, "nan nan" when missing
                                (stage 2: the 300W annotations)
      quality.csv               optional, per sample (``train.pseudo_gt``): a ``name`` and a
                                ``fit_nme51`` column; ``max_fit_nme`` leaves out the samples
                                whose fit was worse

Maps of another size than the network input are resized; landmarks and intrinsics are scaled with
them (they are given in pixels of the stored maps).

Stage 1 uses the samples that have params (L_param); stage 2 the samples with landmarks
(L_render with lambda_lmk = 10000, the normals and mask as pseudo-GT).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tracker.errors import TrackerError
from tracker.map_files import read_cue_maps


@dataclass
class RealBatch:
    """normals (B, 3, S, S) masked; mask (B, 1, S, S); focal, principal (B, 2);
    params {group: (B, n)} or None; landmarks_2d (B, 68, 2) and landmark_visible (B, 68) or None;
    rotation (B, 3, 3) and translation (B, 3) the known camera (X = R F X_head + t), or None."""

    normals: torch.Tensor
    mask: torch.Tensor
    focal: torch.Tensor
    principal: torch.Tensor
    params: dict[str, torch.Tensor] | None
    landmarks_2d: torch.Tensor | None
    landmark_visible: torch.Tensor | None
    rotation: torch.Tensor | None = None
    translation: torch.Tensor | None = None


class RealDataset:
    """Samples of a DATASET folder, drawn at random (with replacement) as RealBatch-es."""

    def __init__(
        self, folder: str | Path, size: int, default_focal: float, stage: int, device="cpu", seed: int = 0, max_fit_nme: float | None = None
    ) -> None:
        self.folder = Path(folder)
        self.size, self.device = size, torch.device(device)
        normals_dir = self.folder / "normals"
        if not normals_dir.is_dir() or not (self.folder / "masks").is_dir():
            raise TrackerError(f"{self.folder}: a fine-tuning folder needs normals/ and masks/ (see train/real_data.py for the format)")
        stems = sorted(p.stem for p in normals_dir.glob("*.png"))
        needed = {1: "params", 2: "landmarks"}[stage]
        suffix = {"params": ".npz", "landmarks": ".txt"}[needed]
        self.stems = [s for s in stems if (self.folder / needed / f"{s}{suffix}").is_file()]
        if not self.stems:
            raise TrackerError(f"{self.folder}: no sample has {needed}/NAME{suffix}, which fine-tuning stage {stage} needs")
        if max_fit_nme is not None:
            good = self._good_fits(max_fit_nme)
            self.stems = [s for s in self.stems if s in good]
            if not self.stems:
                raise TrackerError(f"{self.folder}: no sample's fit_nme51 is at most {max_fit_nme} (quality.csv)")
        camera = self.folder / "camera.json"
        if camera.is_file():
            values = json.loads(camera.read_text())
            self.focal = torch.tensor(values["focal"], dtype=torch.float32)
            self.principal = torch.tensor(values["principal"], dtype=torch.float32)
        else:
            self.focal = torch.tensor([default_focal, default_focal])
            self.principal = torch.tensor([size / 2, size / 2])
        self.default_camera = not camera.is_file()
        self.generator = torch.Generator().manual_seed(seed)

    def _good_fits(self, limit: float) -> set[str]:
        path = self.folder / "quality.csv"
        if not path.is_file():
            raise TrackerError(f"{path} is missing: a fit-quality limit needs the quality.csv of train.pseudo_gt")
        with path.open(newline="") as f:
            return {row["name"] for row in csv.DictReader(f) if float(row["fit_nme51"]) <= limit}

    def __len__(self) -> int:
        return len(self.stems)

    def load(self, stem: str) -> dict:
        """One sample as tensors (unbatched): normals, mask, focal, principal, and where the folder
        has them rotation and translation, params, landmarks_2d and landmark_visible."""
        normals, mask, scale = read_cue_maps(self.folder, stem, self.size)
        normals, mask = torch.from_numpy(normals), torch.from_numpy(mask)[None]
        focal, principal = self._intrinsics(stem, scale)
        sample = {"normals": normals, "mask": mask, "focal": focal, "principal": principal}
        pose = self.folder / "poses" / f"{stem}.json"
        if pose.is_file():
            values = json.loads(pose.read_text())
            sample["rotation"] = torch.tensor(values["rotation"], dtype=torch.float32)
            sample["translation"] = torch.tensor(values["translation"], dtype=torch.float32)
        params = self.folder / "params" / f"{stem}.npz"
        if params.is_file():  # every sample of stage 1 has them
            with np.load(params, allow_pickle=False) as data:
                sample["params"] = {k: torch.from_numpy(np.asarray(data[k], dtype=np.float32).reshape(-1)) for k in data.files}
        landmarks = self.folder / "landmarks" / f"{stem}.txt"
        if landmarks.is_file():  # every sample of stage 2 has them
            lmk = np.loadtxt(landmarks, dtype=np.float32).reshape(-1, 2)
            if lmk.shape != (68, 2):
                raise TrackerError(f"{stem}.txt: expected 68 landmark lines, got {lmk.shape[0]}")
            sample["landmarks_2d"] = torch.from_numpy(np.nan_to_num(lmk)) * scale
            sample["landmark_visible"] = torch.from_numpy(~np.isnan(lmk).any(axis=1)).float()
        return sample

    def _intrinsics(self, stem: str, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The sample's (2,) focal and principal point in input pixels."""
        own = self.folder / "cameras" / f"{stem}.json"
        if own.is_file():
            values = json.loads(own.read_text())
            return torch.tensor(values["focal"], dtype=torch.float32) * scale, torch.tensor(values["principal"], dtype=torch.float32) * scale
        if self.default_camera:  # already in input pixels
            return self.focal, self.principal
        return self.focal * scale, self.principal * scale

    def sample(self, batch: int) -> RealBatch:
        picks = torch.randint(len(self.stems), (batch,), generator=self.generator).tolist()
        return self.stack([self.load(self.stems[i]) for i in picks])

    def stack(self, items: list[dict]) -> RealBatch:
        """Samples of ``load`` -> one RealBatch on the dataset's device; params, landmarks and
        poses when every sample has them (params: all of stage 1's, landmarks: all of stage 2's)."""

        def stack(key):
            return torch.stack([item[key] for item in items]).to(self.device)

        def every(key):
            return all(key in item for item in items)

        params = {g: torch.stack([item["params"][g] for item in items]).to(self.device) for g in items[0]["params"]} if every("params") else None
        return RealBatch(
            normals=stack("normals"),
            mask=stack("mask"),
            focal=stack("focal"),
            principal=stack("principal"),
            params=params,
            landmarks_2d=stack("landmarks_2d") if every("landmarks_2d") else None,
            landmark_visible=stack("landmark_visible") if every("landmarks_2d") else None,
            rotation=stack("rotation") if every("rotation") else None,
            translation=stack("translation") if every("rotation") else None,
        )


class MixedSource:
    """Each batch part real (a RealDataset), part synthetic (a sampler's SyntheticBatch), so that
    fine-tuning on real faces does not forget the synthetic distribution: ``real_fraction`` of
    every batch (rounded, at least one sample) is real. The parts are joined as a RealBatch:
    the groups both have, every landmark of a synthetic face visible, the synthetic faces' own
    camera beside the real ones' known poses."""

    def __init__(self, real: RealDataset, synthetic, real_fraction: float) -> None:
        if not 0 < real_fraction <= 1:
            raise TrackerError(f"the real fraction of a batch must be in (0, 1], got {real_fraction}")
        self.real, self.synthetic, self.real_fraction = real, synthetic, real_fraction

    def sample(self, batch: int) -> RealBatch:
        count = min(batch, max(1, round(batch * self.real_fraction)))
        real = self.real.sample(count)
        if count == batch:
            return real
        synth = self.synthetic.sample(batch - count)
        params = None
        if real.params is not None:
            params = {g: torch.cat((real.params[g], synth.params[g].to(real.params[g]))) for g in real.params if g in synth.params}
        landmarks = visible = None
        if real.landmarks_2d is not None:
            landmarks = torch.cat((real.landmarks_2d, synth.landmarks_2d.to(real.landmarks_2d)))
            visible = torch.cat((real.landmark_visible, torch.ones(synth.landmarks_2d.shape[:2]).to(real.landmark_visible)))

        def join(a, b):
            return torch.cat((a, b.to(a)))

        posed = real.rotation is not None
        return RealBatch(
            normals=join(real.normals, synth.normals),
            mask=join(real.mask, synth.mask),
            focal=join(real.focal, synth.focal),
            principal=join(real.principal, synth.principal),
            params=params,
            landmarks_2d=landmarks,
            landmark_visible=visible,
            rotation=join(real.rotation, synth.rotation) if posed else None,
            translation=join(real.translation, synth.translation) if posed else None,
        )
