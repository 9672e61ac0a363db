"""The atoms of an image series as one table (frame, position, intensity, class, track), and
their Z-contrast classes: heavier atoms are brighter in HAADF (I ∝ Z^1.7)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
import numpy as np

#: Default size of an atom in the image (probe FWHM) and nearest-neighbour distance, Å.
ATOM_FWHM = 1.0
MIN_SPACING = 1.42


@dataclass
class AtomTable:
    """Atoms of an image series: one entry per atom per frame.

    ``y``, ``x`` are in pixels (sub-pixel, pixel centres at integer indices); ``intensity`` is
    the background-subtracted mean intensity at the atom; ``cls`` the class (0: lighter);
    ``track`` the track id over frames (−1 before linking); ``score`` the filter response.
    """

    frame: np.ndarray
    y: np.ndarray
    x: np.ndarray
    intensity: np.ndarray
    cls: np.ndarray
    score: np.ndarray
    track: np.ndarray = field(default=None)  # type: ignore[assignment]
    method: str = "log"
    class_names: tuple[str, ...] = ("atom",)

    def __post_init__(self) -> None:
        n = len(self.frame)
        if self.track is None:
            self.track = np.full(n, -1, np.int64)
        for name in ("frame", "y", "x", "intensity", "cls", "score", "track"):
            value = np.asarray(getattr(self, name))
            if len(value) != n:
                raise ValueError(f"AtomTable.{name} has {len(value)} entries, expected {n}")
            setattr(self, name, value)

    def __len__(self) -> int:
        return len(self.frame)

    def subset(self, keep: np.ndarray) -> AtomTable:
        return AtomTable(self.frame[keep], self.y[keep], self.x[keep], self.intensity[keep], self.cls[keep],
                         self.score[keep], self.track[keep], self.method, self.class_names)

    @classmethod
    def concatenate(cls, tables: list[AtomTable]) -> AtomTable:
        if not tables:
            return empty_table()
        cat = {name: np.concatenate([getattr(t, name) for t in tables])
               for name in ("frame", "y", "x", "intensity", "cls", "score", "track")}
        return cls(**cat, method=tables[0].method, class_names=tables[0].class_names)

    def columns(self) -> dict[str, np.ndarray]:
        return {"frame": self.frame, "y": self.y, "x": self.x, "intensity": self.intensity,
                "class": self.cls, "score": self.score, "track": self.track}


def empty_table(method: str = "log") -> AtomTable:
    z = np.zeros(0)
    return AtomTable(z.astype(int), z, z, z, z.astype(int), z, z.astype(int), method)


def atom_intensity(image: np.ndarray, y: np.ndarray, x: np.ndarray, radius: float) -> np.ndarray:
    """Mean intensity within ``radius`` px of each atom (bilinear), minus the image's 5th
    percentile (the background)."""
    from scipy import ndimage

    k = int(math.ceil(radius))
    dy, dx = np.mgrid[-k:k + 1, -k:k + 1]
    disk = (dy**2 + dx**2) <= radius**2
    oy, ox = dy[disk], dx[disk]
    coords = np.stack([y[:, None] + oy[None], x[:, None] + ox[None]])
    values = ndimage.map_coordinates(image, coords.reshape(2, -1), order=1, mode="nearest").reshape(len(y), -1)
    background = np.percentile(image, 5)
    return values.mean(axis=1) - background


def classify_intensity(intensity: np.ndarray, classes: int = 2) -> tuple[np.ndarray, tuple[str, ...]]:
    """Class 1 for the brighter (heavier) atoms when the log intensities form two clear modes
    (a two-component Gaussian mixture whose means are > 4 pooled SDs apart and whose bright
    component holds ≥ 3 atoms), else class 0 for all."""
    n = len(intensity)
    if classes < 2 or n < 10:
        return np.zeros(n, np.int64), ("atom",)
    from sklearn.mixture import GaussianMixture

    v = np.log(np.maximum(intensity, np.percentile(intensity, 1) * 0.1 + 1e-9)).reshape(-1, 1)
    # the bright class is rare (dopants): start one component at the bulk, one at the top
    start = np.array([[np.median(v)], [np.percentile(v, 99.5)]])
    gm = GaussianMixture(2, means_init=start, random_state=0).fit(v)
    order = np.argsort(gm.means_.ravel())
    means = gm.means_.ravel()[order]
    sds = np.sqrt(gm.covariances_.ravel()[order])
    labels = (gm.predict(v) == order[1]).astype(np.int64)
    # a robust split: brighter than the bulk by more than 4 of its SDs
    bulk_sd = sds[0]
    if means[1] - means[0] > 4 * bulk_sd and 3 <= labels.sum() <= 0.5 * n:
        cut = means[0] + 0.5 * (means[1] - means[0])
        return (v.ravel() > cut).astype(np.int64), ("light", "heavy")
    return np.zeros(n, np.int64), ("atom",)


