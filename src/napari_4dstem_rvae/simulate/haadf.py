"""Atom-resolved HAADF-STEM image series of Si-doped graphene with a known ground truth, for
the atom-resolved workflow (Kalinin, Dyck, Jesse, Ziatdinov, Sci. Adv. 7, eabd5084, 2021:
graphene with substitutional Si under the electron beam, holes growing, fragments rotated).

What is simulated (incoherent imaging; no multislice is needed for one layer):

- **Lattice.** Graphene, a = 2.46 Å, two atoms per cell (sublattices A at 0 and B at
  (a1 + a2)/3). Two grains: grain 0 left of a slightly tilted boundary, grain 1 right of it,
  rotated by ``grain_angles[1] − grain_angles[0]`` (default 12°). Atoms of grain 1 closer than
  1.1 Å to one of grain 0 are removed (no overlapping atoms at the boundary).
- **Dopants.** A fraction ``si_fraction`` of the atoms are Si (substitutional).
- **Holes.** ``holes`` circular holes whose radius grows linearly from ``hole_radius[0]`` to
  ``hole_radius[1]`` over the series (beam damage); an atom once gone stays gone.
- **Drift.** The whole specimen moves by a random walk of ``drift`` Å (standard deviation per
  axis) per frame.
- **Image.** HAADF intensity ∝ Z^1.7 (Z-contrast; the exponent of the incoherent
  Rutherford-like scattering into a high-angle annulus, between 1.6 and 2 — Pennycook &
  Jesson, Ultramicroscopy 37, 14 (1991); Krivanek et al., Nature 464, 571 (2010) used
  Z^1.7 to tell C, B, N, O apart): each atom is a 2D Gaussian of the probe's FWHM
  (``probe_fwhm``), a carbon atom peaking at ``counts_carbon`` electrons over a background of
  ``background``; Poisson counts plus Gaussian read noise ``read_noise``.

Coordinates: an atom at ``(y, x)`` Å lies at pixel ``(y, x) / pixel_size`` (pixel centres at
integer indices), the convention of napari layers with ``scale = pixel_size``.

Ground truth (:class:`SeriesTruth`): for every atom in every frame its position, element,
grain, sublattice, coordination (neighbours within 1.75 Å in that frame) and distance to
the nearest hole edge.

Only numpy is imported at module level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .graphene import GRAPHENE_LATTICE_CONSTANT

#: HAADF contrast exponent: intensity ∝ Z**HAADF_EXPONENT.
HAADF_EXPONENT = 1.7
CARBON, SILICON = 6, 14
BOND_LENGTH = GRAPHENE_LATTICE_CONSTANT / math.sqrt(3.0)  # 1.42 Å


@dataclass
class SeriesTruth:
    """One row per atom per frame (numpy arrays of equal length)."""

    frame: np.ndarray
    y: np.ndarray               # Å
    x: np.ndarray               # Å
    z: np.ndarray               # atomic number (6 or 14)
    grain: np.ndarray
    sublattice: np.ndarray
    coordination: np.ndarray
    edge_distance: np.ndarray   # Å to the nearest hole edge
    atom_id: np.ndarray
    grain_angles: tuple[float, float] = (0.0, 12.0)
    pixel_size: float = 0.16
    shape: tuple[int, int, int] = (1, 1, 1)
    extra: dict[str, Any] = field(default_factory=dict)

    def in_frame(self, f: int) -> np.ndarray:
        return self.frame == f

    def table(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in ("frame", "y", "x", "z", "grain", "sublattice", "coordination",
                                              "edge_distance", "atom_id")}

    def labels(self, f: int, radius: float = 0.5) -> np.ndarray:
        """Class map of frame ``f``: 0 background, 1 C, 2 Si within ``radius`` Å of a centre
        (the targets of the atom-finding network)."""
        return atom_labels(self.y[self.frame == f], self.x[self.frame == f], self.z[self.frame == f],
                           self.shape[1:], self.pixel_size, radius)


def graphene_grain(angle_deg: float, extent: float, offset: tuple[float, float] = (0.0, 0.0)
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Atoms ``(n, 2)`` (y, x in Å) of a graphene sheet rotated by ``angle_deg`` covering
    ``[−extent, extent]²`` and their sublattice (0/1)."""
    a = GRAPHENE_LATTICE_CONSTANT
    a1 = np.array([0.0, a])
    a2 = np.array([a * math.sqrt(3) / 2, a / 2])
    basis = [np.zeros(2), (a1 + a2) / 3]
    n = int(math.ceil(2 * extent / a)) + 2
    i, j = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1), indexing="ij")
    cells = i.reshape(-1, 1) * a1 + j.reshape(-1, 1) * a2
    t = math.radians(angle_deg)
    rot = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])  # (y, x) rotation
    atoms, sub = [], []
    for s, b in enumerate(basis):
        p = (cells + b) @ rot.T + np.asarray(offset)
        keep = np.all(np.abs(p) <= extent, axis=1)
        atoms.append(p[keep])
        sub.append(np.full(int(keep.sum()), s))
    return np.concatenate(atoms), np.concatenate(sub)


def atom_labels(y: np.ndarray, x: np.ndarray, z: np.ndarray, shape: tuple[int, int], pixel_size: float,
                radius: float = 0.5) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    r = radius / pixel_size
    k = int(math.ceil(r))
    dy, dx = np.mgrid[-k:k + 1, -k:k + 1]
    for cy, cx, zz in zip(np.asarray(y) / pixel_size, np.asarray(x) / pixel_size, z):
        iy, ix = int(round(cy)), int(round(cx))
        yy, xx = iy + dy, ix + dx
        inside = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (yy >= 0) & (xx >= 0) & \
            (yy < shape[0]) & (xx < shape[1])
        labels[yy[inside], xx[inside]] = 2 if zz == SILICON else 1
    return labels


def render(y: np.ndarray, x: np.ndarray, z: np.ndarray, shape: tuple[int, int], pixel_size: float,
           probe_fwhm: float) -> np.ndarray:
    """Noise-free HAADF image: Σ_atoms (Z/6)^1.7 · exp(−r²/2σ²), a carbon atom peaking at 1."""
    sigma = probe_fwhm / (2 * math.sqrt(2 * math.log(2))) / pixel_size
    k = int(math.ceil(4 * sigma))
    image = np.zeros(shape, np.float64)
    cy, cx = np.asarray(y) / pixel_size, np.asarray(x) / pixel_size
    weight = (np.asarray(z, np.float64) / CARBON) ** HAADF_EXPONENT
    iy, ix = np.round(cy).astype(int), np.round(cx).astype(int)
    offsets = np.arange(-k, k + 1)
    for oy in offsets:
        yy = iy + oy
        gy = np.exp(-((yy - cy) ** 2) / (2 * sigma * sigma))
        for ox in offsets:
            xx = ix + ox
            ok = (yy >= 0) & (yy < shape[0]) & (xx >= 0) & (xx < shape[1])
            if not ok.any():
                continue
            value = weight * gy * np.exp(-((xx - cx) ** 2) / (2 * sigma * sigma))
            np.add.at(image, (yy[ok], xx[ok]), value[ok])
    return image


def haadf_series(n_frames: int = 6, shape: tuple[int, int] = (384, 384), pixel_size: float = 0.16,
                 grain_angles: tuple[float, float] = (4.0, 16.0), si_fraction: float = 0.02,
                 holes: int = 2, hole_radius: tuple[float, float] = (1.5, 6.0), drift: float = 0.15,
                 probe_fwhm: float = 1.0, counts_carbon: float = 30.0, background: float = 2.0,
                 read_noise: float = 1.0, seed: int = 0, noise: bool = True):
    """A simulated HAADF-STEM movie of Si-doped graphene and its ground truth.

    Returns ``(ImageSeries, SeriesTruth)``; the series is float32 counts (with ``noise``)
    or the noise-free intensity in counts.
    """
    from ..series import ImageSeries

    if n_frames < 1 or min(shape) < 16 or pixel_size <= 0:
        raise ValueError(f"need n_frames ≥ 1, frames of ≥ 16 px and a positive pixel size; got "
                         f"{n_frames}, {shape}, {pixel_size}")
    rng = np.random.default_rng(seed)
    ny, nx = int(shape[0]), int(shape[1])
    height, width = ny * pixel_size, nx * pixel_size
    centre = np.array([height / 2, width / 2])
    steps = rng.normal(0.0, drift, (n_frames, 2))
    steps[0] = 0
    shifts = np.cumsum(steps, axis=0)
    margin = 3.0 + 4 * drift * math.sqrt(n_frames)
    extent = max(height, width) / 2 + margin
    # two grains meeting along a tilted line through the centre
    g0, s0 = graphene_grain(grain_angles[0], extent)
    g1, s1 = graphene_grain(grain_angles[1], extent, offset=(0.37, 0.81))
    tilt = math.radians(8.0)

    def side(p):  # > 0 right of the boundary
        return (p[:, 1]) * math.cos(tilt) - (p[:, 0]) * math.sin(tilt)

    keep0, keep1 = side(g0) < 0, side(g1) >= 0
    g0, s0, g1, s1 = g0[keep0], s0[keep0], g1[keep1], s1[keep1]
    from scipy.spatial import cKDTree

    close = cKDTree(g0).query(g1, distance_upper_bound=1.1)[0] < 1.1
    g1, s1 = g1[~close], s1[~close]
    positions = np.concatenate([g0, g1]) + centre
    sublattice = np.concatenate([s0, s1])
    grain = np.concatenate([np.zeros(len(g0), int), np.ones(len(g1), int)])
    z = np.where(rng.random(len(positions)) < si_fraction, SILICON, CARBON)
    # holes away from the boundary and the frame edges
    hole_centres = []
    for h in range(holes):
        for _ in range(100):
            c = rng.uniform([0.2 * height, 0.2 * width], [0.8 * height, 0.8 * width])
            d = c - centre
            if abs(d[1] * math.cos(tilt) - d[0] * math.sin(tilt)) > hole_radius[1] + 3 and all(
                    np.hypot(*(c - o)) > 2 * hole_radius[1] + 4 for o in hole_centres):
                break
        hole_centres.append(c)
    hole_centres = np.array(hole_centres).reshape(-1, 2)
    present = np.ones(len(positions), bool)
    image_shape = (ny, nx)
    frames = np.empty((n_frames, ny, nx), np.float32)
    rows: dict[str, list] = {k: [] for k in ("frame", "y", "x", "z", "grain", "sublattice", "coordination",
                                             "edge_distance", "atom_id")}
    for f in range(n_frames):
        radius = hole_radius[0] + (hole_radius[1] - hole_radius[0]) * (f / max(n_frames - 1, 1))
        if len(hole_centres):
            dist = np.min(np.hypot(positions[:, None, 0] - hole_centres[None, :, 0],
                                   positions[:, None, 1] - hole_centres[None, :, 1]), axis=1)
            present &= dist > radius
            edge = dist - radius
        else:
            edge = np.full(len(positions), np.inf)
        p = positions + shifts[f]
        inside = present & (p[:, 0] >= 0) & (p[:, 0] <= (ny - 1) * pixel_size) & \
            (p[:, 1] >= 0) & (p[:, 1] <= (nx - 1) * pixel_size)
        tree = cKDTree(positions[present])
        counts = np.array([len(n) - 1 for n in tree.query_ball_point(positions[inside], 1.75)])
        clean = render(p[inside, 0], p[inside, 1], z[inside], image_shape, pixel_size, probe_fwhm)
        signal = background + counts_carbon * clean
        if noise:
            signal = rng.poisson(signal).astype(np.float64) + rng.normal(0.0, read_noise, image_shape)
        frames[f] = signal.astype(np.float32)
        idx = np.flatnonzero(inside)
        rows["frame"].append(np.full(len(idx), f))
        rows["y"].append(p[idx, 0])
        rows["x"].append(p[idx, 1])
        rows["z"].append(z[idx])
        rows["grain"].append(grain[idx])
        rows["sublattice"].append(sublattice[idx])
        rows["coordination"].append(counts)
        rows["edge_distance"].append(edge[idx])
        rows["atom_id"].append(idx)
    truth = SeriesTruth(**{k: np.concatenate(v) for k, v in rows.items()},
                        grain_angles=(float(grain_angles[0]), float(grain_angles[1])),
                        pixel_size=float(pixel_size), shape=(n_frames, ny, nx),
                        extra={"hole_centres": hole_centres, "drift": shifts})
    series = ImageSeries(frames, pixel_size=pixel_size, unit="Å", frame_time=1.0,
                         source="simulated HAADF series of Si-doped graphene",
                         metadata={"simulation": {"seed": seed, "grain_angles": list(grain_angles),
                                                  "si_fraction": si_fraction, "holes": holes,
                                                  "probe_fwhm": probe_fwhm, "counts_carbon": counts_carbon,
                                                  "noise": noise}})
    return series, truth
