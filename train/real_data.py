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
(L_render with lambda_lmk = 10000, the normals and mask as pseudo-GT). Every file is checked as it
is read: a bad camera.json or quality.csv stops the run, a sample with a bad file of its own is
left out with a warning (``RealDataset``).
"""

from __future__ import annotations

import csv
import json
import logging
import reprlib
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tracker.errors import TrackerError
from tracker.files.cue_maps import read_cue_maps

log = logging.getLogger(__name__)


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
    """Samples of a DATASET folder, drawn at random (with replacement) as RealBatch-es.

    Every file is checked as it is read (``load``), each problem a TrackerError naming the file
    and what is wrong. The folder's own files (camera.json, quality.csv) hold for every sample, so
    a bad one stops the run; a sample with a bad file of its own (a damaged PNG, NaN parameters,
    a malformed pose, another head model's parameter sizes, ...) is left out when the dataset is
    made, with one warning that counts such samples and names the first problem: one damaged
    sample must neither stop a run nor train the network on garbage (NaN parameters would make
    every weight NaN). None left is an error. ``param_sizes`` ({group: size} of the head model
    being trained): a sample whose group has another size is left out; None: not checked.
    """

    def __init__(
        self,
        folder: str | Path,
        size: int,
        default_focal: float,
        stage: int,
        device="cpu",
        seed: int = 0,
        max_fit_nme: float | None = None,
        param_sizes: dict[str, int] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.size, self.device = size, torch.device(device)
        self.param_sizes = param_sizes
        normals_dir = self.folder / "normals"
        if not normals_dir.is_dir() or not (self.folder / "masks").is_dir():
            raise TrackerError(f"{self.folder}: a fine-tuning folder needs normals/ and masks/ (see train/real_data.py for the format)")
        stems = sorted(p.stem for p in normals_dir.glob("*.png"))
        needed = {1: "params", 2: "landmarks"}[stage]
        suffix = {"params": ".npz", "landmarks": ".txt"}[needed]
        stems = [s for s in stems if (self.folder / needed / f"{s}{suffix}").is_file()]
        if not stems:
            raise TrackerError(f"{self.folder}: no sample has {needed}/NAME{suffix}, which fine-tuning stage {stage} needs")
        if max_fit_nme is not None:
            good = self._good_fits(max_fit_nme)
            stems = [s for s in stems if s in good]
            if not stems:
                raise TrackerError(f"{self.folder}: no sample's fit_nme51 is at most {max_fit_nme} (quality.csv)")
        camera = self.folder / "camera.json"
        self.default_camera = not camera.is_file()
        if self.default_camera:
            self.focal = torch.tensor([default_focal, default_focal])
            self.principal = torch.tensor([size / 2, size / 2])
        else:
            self.focal, self.principal = read_intrinsics(camera)
        self.stems = self._readable(stems)
        self.generator = torch.Generator().manual_seed(seed)

    def _good_fits(self, limit: float) -> set[str]:
        """The names of quality.csv whose fit_nme51 is at most ``limit`` (a NaN fit is not)."""
        path = self.folder / "quality.csv"
        if not path.is_file():
            raise TrackerError(f"{path} is missing: a fit-quality limit needs the quality.csv of train.pseudo_gt")
        good = set()
        try:
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                missing = [c for c in ("name", "fit_nme51") if c not in (reader.fieldnames or ())]
                if missing:
                    raise TrackerError(f"{path}: no {' or '.join(missing)} column (train.pseudo_gt writes both); fix the file or leave out --max-fit-nme")
                for row in reader:
                    try:
                        fit = float(row["fit_nme51"])
                    except (TypeError, ValueError):
                        raise TrackerError(f"{path}, line {reader.line_num}: fit_nme51 {row['fit_nme51']!r} is not a number") from None
                    if fit <= limit:
                        good.add(row["name"])
        except (OSError, UnicodeDecodeError, csv.Error) as error:
            raise TrackerError(f"{path}: cannot be read as CSV ({error})") from None
        return good

    def _readable(self, stems: list[str]) -> list[str]:
        """The ``stems`` whose every file reads (``load``); the others left out (class docstring)."""
        good, problems = [], []
        for stem in stems:
            try:
                self.load(stem)
            except TrackerError as error:
                problems.append(str(error))
            else:
                good.append(stem)
        if not good:
            raise TrackerError(f"{self.folder}: none of its {len(stems)} samples can be used; the first problem: {problems[0]}")
        if problems:
            log.warning("%s: left out %d of %d samples with a bad file; the first: %s", self.folder, len(problems), len(stems), problems[0])
        return good

    def __len__(self) -> int:
        return len(self.stems)

    def load(self, stem: str) -> dict:
        """One sample as tensors (unbatched): normals, mask, focal, principal, and where the folder
        has them rotation and translation, params, landmarks_2d and landmark_visible; a
        TrackerError naming the file when one is unreadable or malformed."""
        normals, mask, scale = read_cue_maps(self.folder, stem, self.size)
        normals, mask = torch.from_numpy(normals), torch.from_numpy(mask)[None]
        focal, principal = self._intrinsics(stem, scale)
        sample = {"normals": normals, "mask": mask, "focal": focal, "principal": principal}
        pose = self.folder / "poses" / f"{stem}.json"
        if pose.is_file():
            sample["rotation"], sample["translation"] = read_pose(pose)
        params = self.folder / "params" / f"{stem}.npz"
        if params.is_file():  # every sample of stage 1 has them
            sample["params"] = read_params(params, self.param_sizes)
        landmarks = self.folder / "landmarks" / f"{stem}.txt"
        if landmarks.is_file():  # every sample of stage 2 has them
            lmk = read_landmarks(landmarks)
            sample["landmarks_2d"] = torch.from_numpy(np.nan_to_num(lmk)) * scale
            sample["landmark_visible"] = torch.from_numpy(~np.isnan(lmk).any(axis=1)).float()
        return sample

    def _intrinsics(self, stem: str, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The sample's (2,) focal and principal point in input pixels."""
        own = self.folder / "cameras" / f"{stem}.json"
        if own.is_file():
            focal, principal = read_intrinsics(own)
            return focal * scale, principal * scale
        if self.default_camera:  # already in input pixels
            return self.focal, self.principal
        return self.focal * scale, self.principal * scale

    def sample(self, batch: int) -> RealBatch:
        picks = torch.randint(len(self.stems), (batch,), generator=self.generator).tolist()
        return self.stack([self.load(self.stems[i]) for i in picks])

    def stack(self, items: list[dict]) -> RealBatch:
        """Samples of ``load`` -> one RealBatch on the dataset's device; params (the groups every
        sample has), landmarks and poses when every sample has them (params: all of stage 1's,
        landmarks: all of stage 2's)."""

        def stack(key):
            return torch.stack([item[key] for item in items]).to(self.device)

        def every(key):
            return all(key in item for item in items)

        params = None
        if every("params"):
            groups = [g for g in items[0]["params"] if all(g in item["params"] for item in items)]
            params = {g: torch.stack([item["params"][g] for item in items]).to(self.device) for g in groups}
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


def read_intrinsics(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """camera.json or cameras/NAME.json -> (2,) focal (positive) and (2,) principal point, pixels."""
    values = _read_json(path)
    focal = _numbers(path, values, "focal", (2,), "[fx, fy]")
    if (focal <= 0).any():
        raise TrackerError(f"{path}: focal must be positive, in pixels of the stored maps; got {focal.tolist()}")
    return torch.from_numpy(focal), torch.from_numpy(_numbers(path, values, "principal", (2,), "[cx, cy]"))


def read_pose(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """poses/NAME.json -> (3, 3) rotation (orthonormal, determinant +1) and (3,) translation (m,
    in front of the camera)."""
    values = _read_json(path)
    rotation = _numbers(path, values, "rotation", (3, 3), "a 3x3 matrix")
    translation = _numbers(path, values, "translation", (3,), "[x, y, z] in metres")
    if not np.allclose(rotation.T @ rotation, np.eye(3), atol=1e-3) or np.linalg.det(rotation) <= 0:
        raise TrackerError(f"{path}: rotation is not a rotation matrix (orthonormal, determinant +1)")
    if translation[2] <= 0:
        raise TrackerError(f"{path}: translation's depth z must be positive (the head in front of the camera), got {translation[2]:g}")
    return torch.from_numpy(rotation), torch.from_numpy(translation)


def read_params(path: Path, sizes: dict[str, int] | None = None) -> dict[str, torch.Tensor]:
    """params/NAME.npz -> {group: (n,) float32}, every value finite; ``sizes``: the head model's
    {group: size}, which the groups it has must match (and one of them must be there)."""
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise TrackerError(f"{path}: a single .npy array, not an .npz with one array per parameter group")
        with data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise TrackerError(f"{path}: not a readable .npz of parameter arrays ({error})") from None
    params = {}
    for name, array in arrays.items():
        if array.dtype.kind not in "iuf":
            raise TrackerError(f"{path}: {name} is not numbers ({array.dtype})")
        values = array.astype(np.float32).reshape(-1)
        if not np.isfinite(values).all():
            raise TrackerError(f"{path}: {name} holds NaN or infinite values")
        if sizes is not None and name in sizes and values.size != sizes[name]:
            raise TrackerError(f"{path}: {name} has {values.size} values, the head model's {name} has {sizes[name]} (parameters of another head model?)")
        params[name] = torch.from_numpy(values)
    if sizes is not None and not set(params) & set(sizes):
        raise TrackerError(f"{path}: none of its groups {sorted(params)} is one of the head model's {sorted(sizes)}")
    return params


def read_landmarks(path: Path) -> np.ndarray:
    """landmarks/NAME.txt -> (68, 2) float32 crop pixels, NaN where missing ("nan nan")."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy's "input contained no data": an empty file is reported below
            lmk = np.loadtxt(path, dtype=np.float32, ndmin=2)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise TrackerError(f"{path}: not 68 lines of 'x y' numbers ({error})") from None
    if lmk.shape != (68, 2):
        got = "an empty file" if lmk.size == 0 else f"{lmk.shape[0]} lines of {lmk.shape[1]} values"
        raise TrackerError(f"{path}: expected 68 lines of 'x y', got {got}")
    if np.isinf(lmk).any():
        raise TrackerError(f"{path}: infinite coordinates (a missing point is 'nan nan')")
    return lmk


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise TrackerError(f"{path}: not readable JSON ({error})") from None


def _numbers(path: Path, values: object, key: str, shape: tuple[int, ...], form: str) -> np.ndarray:
    """``values[key]`` as a finite float32 array of ``shape``; a TrackerError naming ``path``,
    ``key`` and the expected ``form`` otherwise."""
    if not isinstance(values, dict) or key not in values:
        raise TrackerError(f"{path}: needs a {key!r} entry, {form}")
    try:
        with np.errstate(over="ignore"):  # beyond float32: infinite, reported below
            array = np.asarray(values[key], dtype=np.float64).astype(np.float32)
    except (TypeError, ValueError, OverflowError):
        array = None
    if array is None or array.shape != shape:
        raise TrackerError(f"{path}: {key} must be {form}, got {reprlib.repr(values[key])}")
    if not np.isfinite(array).all():
        raise TrackerError(f"{path}: {key} holds NaN or infinite values: {array.tolist()}")
    return array


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
