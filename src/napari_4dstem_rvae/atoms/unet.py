"""Atom finding the study's way (Kalinin et al., Sci. Adv. 7, eabd5084, 2021, after Ziatdinov
et al., ACS Nano 11, 12742 (2017)): a small fully convolutional network (U-Net, Ronneberger
et al. 2015) trained on *simulated* images turns every pixel into class probabilities
(background, C, Si); the blobs of atom probability are the atoms, their probability-weighted
centroids the positions, their mean class probability the class.

The network is trained on :func:`napari_4dstem_rvae.simulate.haadf.haadf_series` frames at
0.16 Å per pixel (probe 0.8–1.3 Å FWHM, 8–80 counts per carbon atom, background and read
noise drawn per frame, rotated grains, 0–10 % Si, holes). Frames of another calibrated pixel
size are resampled to it. A frame sampled finer is first smoothed by a Gaussian of half the
network's pixel (0.08 Å, far narrower than an atom: the anti-aliasing of a resampling) and its
contrast normalised after; otherwise its pixel noise reaches the network at a strength its
training images never had. Measured on real graphene frames at 0.073–0.117 Å/px against the
published positions (docs/quality.md): recall / precision 0.976 / 0.992 → 0.992 / 1.000 (2 nm),
0.962 / 0.981 → 0.990 / 0.995 (4 nm), 0.889 / 0.936 → 0.936 / 0.940 (6 nm); simulated frames at
0.06–0.1 Å/px unchanged (recall, precision and median position error within 0.003 Å).

The weights shipped with the package (``weights/atom_unet.pt``, float16, weights only) were made
by :func:`train_unet` with its defaults (``python -m napari_4dstem_rvae.atoms.unet --out FILE``
retrains them, a few minutes on 2 CPU threads).
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..rvae.runtime import torch_threads
from .find import band_pass_z
from .table import ATOM_FWHM, MIN_SPACING, AtomTable, atom_intensity, empty_table
from .track import link_frames

TRAIN_PIXEL_SIZE = 0.16  # Å per pixel of the training images
CLASS_NAMES = ("C", "Si")
WEIGHTS = Path(__file__).with_name("weights") / "atom_unet.pt"
_FORMAT = "napari-4dstem-rvae atom U-Net 1"


class _Block(nn.Sequential):
    def __init__(self, n_in: int, n_out: int):
        super().__init__(nn.Conv2d(n_in, n_out, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(n_out, n_out, 3, padding=1), nn.ReLU(inplace=True))


class AtomUNet(nn.Module):
    """Two poolings, ``base``/2·``base``/4·``base`` channels, skip connections, three output
    classes (background, C, Si) as logits."""

    def __init__(self, base: int = 16, classes: int = 3):
        super().__init__()
        self.base, self.classes = int(base), int(classes)
        b = self.base
        self.down0, self.down1, self.bottom = _Block(1, b), _Block(b, 2 * b), _Block(2 * b, 4 * b)
        self.up1, self.dec1 = nn.ConvTranspose2d(4 * b, 2 * b, 2, stride=2), _Block(4 * b, 2 * b)
        self.up0, self.dec0 = nn.ConvTranspose2d(2 * b, b, 2, stride=2), _Block(2 * b, b)
        self.head = nn.Conv2d(b, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % 4, (-w) % 4
        if ph or pw:
            x = nn.functional.pad(x, (0, pw, 0, ph), mode="reflect")
        d0 = self.down0(x)
        d1 = self.down1(nn.functional.max_pool2d(d0, 2))
        m = self.bottom(nn.functional.max_pool2d(d1, 2))
        u1 = self.dec1(torch.cat([self.up1(m), d1], 1))
        u0 = self.dec0(torch.cat([self.up0(u1), d0], 1))
        return self.head(u0)[..., :h, :w]


def normalise(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The network's input: the frame minus its median over the 90th percentile − median (the
    level of the light atoms, whatever the share of heavy ones), so that dose and detector gain
    do not matter. ``mask``: pixels left out of both statistics (contamination,
    :mod:`.contamination`) and set to the median."""
    image = np.asarray(image, np.float32)
    finite = np.isfinite(image)
    if not finite.all():
        image = np.where(finite, image, np.nanmedian(image))
    values = image if mask is None or mask.all() else image[~mask]
    centre = float(np.median(values))
    spread = float(np.percentile(values, 90)) - centre
    out = (image - centre) / (spread if spread > 0 else 1.0)
    if mask is not None and mask.any():
        out[mask] = 0.0
    return out


# -- training ---------------------------------------------------------------------------------------
def _training_frames(n: int, seed: int, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    from ..simulate.haadf import haadf_series

    rng = np.random.default_rng(seed)
    images, labels = [], []
    while len(images) < n:
        series, truth = haadf_series(
            n_frames=2, shape=(size, size), pixel_size=TRAIN_PIXEL_SIZE,
            grain_angles=tuple(rng.uniform(0, 60, 2)), si_fraction=float(rng.uniform(0, 0.1)), holes=int(rng.integers(0, 3)),
            hole_radius=(1.5, float(rng.uniform(3, 8))), probe_fwhm=float(rng.uniform(0.8, 1.3)),
            counts_carbon=float(np.exp(rng.uniform(np.log(8), np.log(80)))), background=float(rng.uniform(0, 5)),
            read_noise=float(rng.uniform(0.5, 2.0)), seed=int(rng.integers(2**31)))
        for f in range(series.n_frames):
            images.append(normalise(series.frame(f)))
            labels.append(truth.labels(f, radius=0.45))
    return np.stack(images[:n]), np.stack(labels[:n]).astype(np.int64)


def train_unet(steps: int = 1200, *, frames: int = 48, crop: int = 64, batch: int = 8, base: int = 16,
               learning_rate: float = 2e-3, seed: int = 0, threads: int | None = None,
               progress: Callable[[int, int, float], None] | None = None) -> AtomUNet:
    """A fresh :class:`AtomUNet` trained on ``frames`` simulated frames (random crops, flips
    and quarter turns; class-weighted cross-entropy, as Si atoms are rare)."""
    with torch_threads(threads or None):
        images, labels = _training_frames(frames, seed)
        rng = np.random.default_rng(seed + 1)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = AtomUNet(base)
        optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
        weight = torch.tensor([0.3, 1.0, 2.0])
        n, h, w = images.shape
        for step in range(steps):
            idx = rng.integers(0, n, batch)
            ys, xs = rng.integers(0, h - crop + 1, batch), rng.integers(0, w - crop + 1, batch)
            x = np.stack([images[i, y:y + crop, x_:x_ + crop] for i, y, x_ in zip(idx, ys, xs)])
            t = np.stack([labels[i, y:y + crop, x_:x_ + crop] for i, y, x_ in zip(idx, ys, xs)])
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            x, t = np.rot90(x, k, (1, 2)), np.rot90(t, k, (1, 2))
            if flip:
                x, t = x[:, :, ::-1], t[:, :, ::-1]
            gain = rng.uniform(0.8, 1.25, (batch, 1, 1)).astype(np.float32)
            xb = torch.from_numpy(np.ascontiguousarray(x * gain)[:, None])
            loss = nn.functional.cross_entropy(model(xb), torch.from_numpy(np.ascontiguousarray(t)), weight=weight)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            if progress is not None:
                progress(step + 1, steps, float(loss.detach()))
        return model.eval()


def save_weights(model: AtomUNet, path: str | os.PathLike) -> str:
    """Weights only (float16 tensors and plain settings), written to a temporary name and
    renamed."""
    from ..atomic import atomic_path

    state = {k: v.detach().to(torch.float16) for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"format": _FORMAT, "base": model.base, "classes": model.classes,
                    "pixel_size": TRAIN_PIXEL_SIZE, "state_dict": state}, tmp)
    return os.fspath(path)


def load_unet(path: str | os.PathLike | None = None) -> AtomUNet:
    """The network from a weights file (default: the one shipped); ValueError naming the file
    when it is not one."""
    path = WEIGHTS if path is None else Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such U-Net weights file (retrain: python -m napari_4dstem_rvae.atoms.unet "
                         f"--out {path})")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or saved.get("format") != _FORMAT:
            raise ValueError("not an atom U-Net weights file")
        model = AtomUNet(int(saved["base"]), int(saved["classes"]))
        model.load_state_dict({k: v.float() for k, v in saved["state_dict"].items()})
    except Exception as exc:
        reason = " ".join(str(exc).split())[:200]
        raise ValueError(f"{path}: not a readable atom U-Net weights file ({type(exc).__name__}: {reason})") from exc
    return model.eval()


# -- inference ----------------------------------------------------------------------------------------
def _zoom_for(series: Any) -> float:
    pixel = series.pixel_size_angstrom
    if pixel is None:
        warnings.warn(f"{getattr(series, 'name', 'the series')} has no pixel size: the U-Net assumes "
                      f"{TRAIN_PIXEL_SIZE} Å per pixel, the size it was trained at (give the calibration)",
                      stacklevel=3)
        return 1.0
    zoom = pixel / TRAIN_PIXEL_SIZE
    return 1.0 if abs(zoom - 1) < 0.05 else zoom


def _network_probabilities(frame: np.ndarray, model: AtomUNet, zoom: float, mask: np.ndarray | None = None
                           ) -> np.ndarray:
    """Class probabilities ``(3, y′, x′)`` of one frame on the network's pixel grid; ``mask``:
    contamination, shown to the network as the lattice's median level."""
    from scipy import ndimage

    image = np.asarray(frame, np.float64)
    if mask is not None and mask.any() and not mask.all():
        image = np.where(mask, np.nanmedian(image[~mask]), image)
    if zoom < 1.0:   # finer than the network's grid: anti-aliased at half its pixel (module docstring),
        finite = np.isfinite(image)   # then normalised as the smoothed frame
        image = ndimage.gaussian_filter(np.where(finite, image, np.median(image[finite]) if finite.any() else 0.0),
                                        0.5 / zoom)
    image = normalise(image, mask)
    if zoom != 1.0:
        image = ndimage.zoom(image, zoom, order=1)
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(np.ascontiguousarray(image))[None, None]), 1)[0].numpy()


def _to_frame_grid(p: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from scipy import ndimage

    if p.shape[1:] == tuple(shape):
        return p
    return np.stack([ndimage.zoom(c, [s / t for s, t in zip(shape, c.shape)], order=1, grid_mode=False)[
        :shape[0], :shape[1]] for c in p])


def probabilities(series: Any, model: AtomUNet | None = None, *, threads: int | None = None) -> np.ndarray:
    """Class probabilities ``(frames, 3, y, x)`` float32 (background, C, Si) on the series'
    own pixel grid."""
    model = model or load_unet()
    zoom = _zoom_for(series)
    out = np.empty((series.n_frames, model.classes, *series.frame_shape), np.float32)
    with torch_threads(threads or None):
        for f in range(series.n_frames):
            out[f] = _to_frame_grid(_network_probabilities(series.frame(f), model, zoom), series.frame_shape)
    return out


def blobs(prob: np.ndarray, frame: int = 0, threshold: float = 0.5, min_pixels: int = 2
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Atoms of one frame's probabilities ``(3, y, x)``: probability-weighted centroids (y, x)
    of the connected regions where the atom probability (1 − background) exceeds
    ``threshold``, and the class (0 C, 1 Si) of larger mean probability."""
    from scipy import ndimage

    atom = 1.0 - prob[0]
    labels, n = ndimage.label(atom > threshold)
    if n == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0, np.int64)
    index = np.arange(1, n + 1)
    size = ndimage.sum_labels(np.ones_like(atom), labels, index)
    centres = np.array(ndimage.center_of_mass(atom, labels, index)).reshape(-1, 2)
    carbon = ndimage.mean(prob[1], labels, index)
    silicon = ndimage.mean(prob[2], labels, index)
    keep = size >= min_pixels
    return centres[keep, 0], centres[keep, 1], (np.asarray(silicon) > np.asarray(carbon))[keep].astype(np.int64)


def significance(frame: np.ndarray, pixel_size: float) -> np.ndarray:
    """The band-pass (LoG at the atom size) of a frame in units of its own pixel noise, the
    largest value within 3 × 3 pixels — the band-pass finder's measure of an atom
    (:func:`~napari_4dstem_rvae.processing.atoms.band_pass_z`)."""
    from scipy import ndimage

    sigma = max(0.5, ATOM_FWHM / pixel_size / (2 * math.sqrt(2 * math.log(2))))
    return ndimage.maximum_filter(band_pass_z(frame, sigma), size=3)


def _frame_atoms(frame: np.ndarray, model: AtomUNet, zoom: float, pixel: float | None, min_significance: float,
                 threshold: float, mask: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """One frame's atoms (y, x, class, score; frame pixels) and the network's probabilities."""
    frame_shape = frame.shape
    from .contamination import mask_at

    p = _network_probabilities(frame, model, zoom, mask)
    y, x, cls = blobs(p, 0, threshold)  # on the network's grid (blobs stay apart), then mapped back
    score = (1.0 - p[0])[np.clip(np.round(y).astype(int), 0, p.shape[1] - 1),
                         np.clip(np.round(x).astype(int), 0, p.shape[2] - 1)]
    if p.shape[1:] != frame_shape:  # zoom's grid: corners aligned
        y = y * (frame_shape[0] - 1) / (p.shape[1] - 1)
        x = x * (frame_shape[1] - 1) / (p.shape[2] - 1)
    real = np.ones(len(y), bool)
    if len(y) and min_significance > 0:
        real = mask_at(significance(frame, pixel or TRAIN_PIXEL_SIZE), y, x) >= min_significance
    if mask is not None and len(y):
        real &= ~mask_at(mask, y, x)
    return y[real], x[real], cls[real], score[real], p


def find_atoms_unet(series: Any, *, weights: str | os.PathLike | None = None, threshold: float = 0.5,
                    min_significance: float = 3.0, link: bool = True, threads: int | None = None,
                    progress: Any = None, return_probabilities: bool = False, contamination: bool = True,
                    **_: Any) -> Any:
    """Atoms of every frame by the network (see the module docstring): an
    :class:`~napari_4dstem_rvae.processing.atoms.AtomTable` with classes ``("C", "Si")``
    (and the probabilities ``(frames, 3, y, x)`` with ``return_probabilities``).

    A blob is kept only where the frame itself shows an atom: its band-passed intensity at
    least ``min_significance`` noise SDs (:func:`significance`). Without this check the network
    draws atoms into pure noise or a blank frame (measured: 21 and 8 in 64 × 64 px); with it
    none, at a recall cost of 0.001–0.02 on simulated series at 12–25 counts per atom.

    ``contamination`` (a calibrated series): where the atoms found show bright contamination
    (:func:`~.contamination.contamination_mask`), the frame goes through the network again with
    it left out of the normalisation and shown as the lattice's level, and no atom is kept in
    it: its brightness otherwise sets the contrast the lattice reaches the network with
    (measured on the real 6 nm frame, 8 % contamination: recall 0.936 → 0.945 against the
    published positions, precision 0.940 → 0.992)."""
    from .contamination import contamination_mask, mask_at

    model = load_unet(weights)
    zoom = _zoom_for(series)
    pixel = series.pixel_size_angstrom
    frame_shape = tuple(series.frame_shape)
    prob = np.empty((series.n_frames, model.classes, *frame_shape), np.float32) if return_probabilities else None
    tables = []
    left_out, covered = 0, 0
    with torch_threads(threads or None):
        for f in range(series.n_frames):
            frame = np.asarray(series.frame(f), np.float64)
            y, x, cls, score, p = _frame_atoms(frame, model, zoom, pixel, min_significance, threshold)
            if contamination and pixel is not None and len(y):
                mask = contamination_mask(frame, y, x, pixel)
                if mask.any():   # the first pass's atoms there are left out, the frame looked at again
                    left_out += int(mask_at(mask, y, x).sum())
                    y, x, cls, score, p = _frame_atoms(frame, model, zoom, pixel, min_significance, threshold, mask)
                    covered += int(mask.sum())
            if prob is not None:
                prob[f] = _to_frame_grid(p, frame_shape)
            if len(y):
                intensity = atom_intensity(frame, y, x, 1.0)
                tables.append(AtomTable(np.full(len(y), f), y, x, intensity, cls, score, None, "unet", CLASS_NAMES))
            if progress is not None:
                progress(f + 1, series.n_frames)
    if covered:
        warnings.warn(f"{getattr(series, 'name', 'the series')}: {100 * covered / (series.n_frames * np.prod(frame_shape)):.1f} % "
                      f"of the frames' area is bright contamination (a patch of at least four hexagons "
                      f"brighter than the lattice by six times its atomic contrast); {left_out} atoms "
                      f"found there are left out and the frames looked at again without it", stacklevel=2)
    table = AtomTable.concatenate(tables) if tables else empty_table("unet")
    if len(table) and link and series.n_frames > 1:
        table.track = link_frames(table, MIN_SPACING / (pixel or TRAIN_PIXEL_SIZE))
    return (table, prob) if return_probabilities else table


def main(argv: list[str] | None = None) -> int:
    import argparse
    import time

    parser = argparse.ArgumentParser(description="Train the atom-finding U-Net on simulated HAADF frames.")
    parser.add_argument("--out", default=str(WEIGHTS))
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()

    def report(step: int, total: int, loss: float) -> None:
        if step % max(1, total // 20) == 0 or step == total:
            print(f"step {step}/{total}: loss {loss:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)

    model = train_unet(args.steps, seed=args.seed, threads=args.threads, progress=report)
    print("weights:", save_weights(model, args.out), f"({os.path.getsize(args.out) / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
