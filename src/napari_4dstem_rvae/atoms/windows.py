"""Windows around atoms, the rVAE's input: a square of a physical size at each atom's sub-pixel
centre (bilinear), resampled to ``pixels`` × ``pixels``, rounded so that a rotation of the
lattice is a rotation of the window."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from .table import AtomTable


def window_pixels_for(size: float, pixel_size: float | None) -> float:
    """A window's side in pixels of the image for a side ``size`` in Å."""
    return size if pixel_size is None else size / pixel_size


def round_mask(pixels: int, taper: float = 0.15) -> np.ndarray:
    """A disk filling the window, its edge tapered (raised cosine over ``taper`` of the radius):
    the content of a window then turns without its square corners, so that a rotation of the
    lattice is a rotation of the window."""
    c = (pixels - 1) / 2
    yy, xx = np.mgrid[:pixels, :pixels]
    r = np.hypot(yy - c, xx - c) / (pixels / 2)
    inner = 1 - taper
    return np.where(r <= inner, 1.0, np.where(r >= 1, 0.0, 0.5 * (1 + np.cos(np.pi * (r - inner) / taper))))


EDGES = ("auto", "drop", "pad")
AUTO_MIN_WINDOWS = 64        # edge="auto" pads when dropping would leave fewer windows than this ...
AUTO_KEEP_FRACTION = 0.8     # ... or keep fewer than this fraction of the atoms
SMOOTH_ANGSTROM = 0.2        # smoothing (σ, Å) of frames sampled finer than the windows


def _frame_bond(tree: Any, pts: np.ndarray) -> float:
    """Median distance from an atom of a frame to its nearest neighbour (pixels)."""
    return float(np.median(tree.query(pts, k=2)[0][:, 1]))


def bond_length(table: AtomTable) -> float | None:
    """The lattice's nearest-neighbour distance in pixels: the median over frames of each
    frame's median distance from an atom to its nearest neighbour (None without a frame of 3
    atoms)."""
    from scipy.spatial import cKDTree

    bonds = []
    for f in np.unique(table.frame):
        rows = table.frame == f
        if rows.sum() >= 3:
            pts = np.column_stack([table.y[rows], table.x[rows]]).astype(np.float64)
            bonds.append(_frame_bond(cKDTree(pts), pts))
    value = float(np.median(bonds)) if bonds else 0.0
    return value if value > 0 else None


def neighbourhood_max(frame: np.ndarray, y: np.ndarray, x: np.ndarray, values: np.ndarray,
                      reach: float) -> np.ndarray:
    """Per atom, the largest finite value among itself and the atoms of its frame within
    ``reach`` pixels (NaN where none is finite): a score of one atom spread to its neighbours."""
    from scipy.spatial import cKDTree

    values = np.asarray(values, np.float64)
    out = values.copy()
    for f in np.unique(frame):
        rows = np.flatnonzero(frame == f)
        pairs = cKDTree(np.column_stack([y[rows], x[rows]]).astype(np.float64)).query_pairs(reach, output_type="ndarray")
        i, j = rows[pairs[:, 0]], rows[pairs[:, 1]]
        np.fmax.at(out, i, values[j])
        np.fmax.at(out, j, values[i])
    return out


def lattice_orientation(table: AtomTable, order: int = 6, radius: float = 3.0) -> np.ndarray:
    """Each atom's local lattice orientation modulo ``360°/order`` (rad, ``atan2(dy, dx)`` in
    image coordinates, y down): the ``order``-fold circular mean of the bonds of the atoms within
    ``radius`` bonds of it (Gaussian weights, σ = radius / 2), a bond being a pair of atoms of
    one frame 0.75–1.25 × the frame's median nearest-neighbour distance apart. For a honeycomb
    (order 6) both sublattices give the same orientation, so the grains differ and the
    sublattices do not; atoms with no bond within reach get their frame's mean (0 without any)."""
    from scipy.spatial import cKDTree

    from .complete import bond_pairs

    out = np.zeros(len(table))
    for f in np.unique(table.frame):
        rows = np.flatnonzero(table.frame == f)
        if len(rows) < 3:
            continue
        pts = np.column_stack([table.y[rows], table.x[rows]]).astype(np.float64)
        tree = cKDTree(pts)
        bond = _frame_bond(tree, pts)
        if not bond > 0:
            continue
        pairs, d = bond_pairs(tree, bond)
        if not len(pairs):
            continue
        z = np.zeros(len(rows), complex)
        turn = np.exp(1j * order * np.arctan2(d[:, 0], d[:, 1]))   # the same seen from either end (order even)
        np.add.at(z, pairs[:, 0], turn)
        np.add.at(z, pairs[:, 1], turn)
        near = tree.sparse_distance_matrix(tree, radius * bond, output_type="coo_matrix")
        weight = np.exp(-0.5 * (near.data / (0.5 * radius * bond)) ** 2)
        local = z.copy()                  # the atom's own bonds, then its neighbours' (distance > 0)
        np.add.at(local, near.row, weight * z[near.col])
        mean = z.sum()
        local = np.where(np.abs(local) > 0, local, mean)
        out[rows] = np.angle(local) / order
    return out


def two_mode_share(angle: np.ndarray, symmetry: int = 3, within: float = math.radians(10)) -> float:
    """The share of angles (rad, modulo 2π / ``symmetry``) within ``within`` of the best pair of
    modes π / ``symmetry`` apart: for windows turned to their lattice (graphene, ``symmetry`` 3),
    how cleanly the angle splits the two sublattices (1: every atom in one of two modes 60° apart)."""
    a = np.asarray(angle, np.float64)
    a = a[np.isfinite(a)]
    if not len(a):
        return float("nan")
    half = math.pi / symmetry              # the two modes repeat every half period
    centres = np.arange(0.0, half, math.radians(0.5))
    d = np.abs(np.mod(a[None, :] - centres[:, None] + half / 2, half) - half / 2)
    return float((d <= within).mean(1).max())


def kept_angle(model: Any, windows: np.ndarray, symmetry: int, angle: np.ndarray, std: np.ndarray,
               concentration: np.ndarray | None, source: str, note: dict, threads: int | None) -> tuple:
    """The aligned angle, its spread and concentration the run keeps (``note`` records the two
    shares and which was kept): the encoder's, or the decoder's
    (:func:`~napari_4dstem_rvae.rvae.pose.decoder_angles`) when asked for or, with ``"auto"``,
    when it puts more atoms in two modes 60° apart (measured on real frames, docs/quality.md:
    the decoder's splits more on most trainings, less where the latents took the sublattices);
    ``note["two_mode_share"]`` is the kept angle's."""
    from ..rvae.pose import decoder_angles

    decoded = decoder_angles(model, windows, symmetry, threads=threads, force=source == "decoder")
    note["two_mode_share"] = note["two_mode_share_encoder"] = two_mode_share(angle, symmetry)
    if decoded is None:
        note["angle_from"] = "encoder (too many windows to read the angle from the decoder on a CPU)"
        return angle, std, concentration
    note["two_mode_share_decoder"] = two_mode_share(decoded[0], symmetry)
    if source == "auto" and not note["two_mode_share_decoder"] > note["two_mode_share_encoder"]:
        note["angle_from"] = "encoder"
        return angle, std, concentration
    note["angle_from"] = "decoder"
    note["two_mode_share"] = note["two_mode_share_decoder"]
    # the resultant length is of symmetry × angle: the spread of the angle itself, and its
    # concentration as the encoder gives it (exp(−σ²/2), the wrapped normal's)
    std = np.sqrt(-2.0 * np.log(np.clip(decoded[1], 1e-12, 1.0))) / symmetry
    return decoded[0], std.astype(np.float32), np.exp(-0.5 * std ** 2).astype(np.float32)


def cut_windows(series: Any, table: AtomTable, size: float, pixels: int = 32, *, source: Any = None,
                edge: str = "auto", round: bool = True, angles: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Windows ``(n, pixels, pixels)`` float32 centred on every atom (sub-pixel, bilinear).

    ``size``: side in Å (``series.pixel_size`` known) or px; ``source``: another stack of the
    series' frame shape to cut from (e.g. class-probability maps), default the frames.
    ``edge``: ``"drop"`` windows crossing the frame edge, ``"pad"`` them with the frame's
    median, or ``"auto"``: drop them unless that leaves out more than a fifth of the atoms or
    leaves fewer than 64 windows (small fields), then pad (the note says which was done).
    ``round``: each window minus its frame's median, times :func:`round_mask`.
    ``angles``: per atom of the table (rad, ``atan2(dy, dx)`` in the image, y down), turn each
    window's content by minus its angle — what lies in that direction from the atom lies
    along +x in the window (e.g. :func:`lattice_orientation`: every grain aligned alike).
    Returns the windows, the indices of the atoms they belong to and a note of what
    was dropped.
    """
    from scipy import ndimage

    if edge not in EDGES:
        raise ValueError(f"edge must be one of {EDGES}, got {edge!r}")
    if pixels < 4:
        raise ValueError(f"windows need at least 4 × 4 pixels, got {pixels}")
    side = window_pixels_for(size, series.pixel_size_angstrom)
    if not side > 2:
        raise ValueError(f"a window of {size} is {side:.2f} px of the image: expected more than 2 px "
                         "(give the size in Å with a calibrated series, or in pixels)")
    ny, nx = series.frame_shape
    half = (side - 1) / 2 if side >= pixels else side / 2
    grid = (np.arange(pixels) - (pixels - 1) / 2) * (side / pixels)
    gy, gx = np.meshgrid(grid, grid, indexing="ij")
    inside = (table.y - half >= -0.5) & (table.y + half <= ny - 0.5) & \
             (table.x - half >= -0.5) & (table.x + half <= nx - 0.5)
    requested = edge
    if edge == "auto":
        edge = "drop" if inside.sum() >= max(AUTO_MIN_WINDOWS, AUTO_KEEP_FRACTION * len(table)) else "pad"
    keep = np.flatnonzero(inside) if edge == "drop" else np.arange(len(table))
    out = np.empty((len(keep), pixels, pixels), np.float32)
    mask = round_mask(pixels).astype(np.float32) if round else None
    stack = source if source is not None else series.data
    if tuple(stack.shape[-2:]) != (ny, nx):
        raise ValueError(f"source has frames of {tuple(stack.shape[-2:])}; expected the series' {(ny, nx)}")
    # resampled down: smooth first so that the pixel noise of finely sampled frames does not fold
    # into the windows — anti-aliasing (σ = (factor − 1)/2 px), and at least SMOOTH_ANGSTROM in Å
    # (well below an atom's width at 60–300 kV, ~0.4 Å σ)
    factor = side / pixels
    sigma = 0.0
    if factor > 1.5:
        sigma = max((factor - 1) / 2, SMOOTH_ANGSTROM / (series.pixel_size_angstrom or math.inf))
    for f in np.unique(table.frame[keep]):
        rows = np.flatnonzero(table.frame[keep] == f)
        image = np.asarray(stack[int(f)], np.float32)
        if hasattr(image, "compute"):
            image = image.compute()
        fill = float(np.median(image))
        if sigma > 0:
            image = ndimage.gaussian_filter(image, sigma)
        at = keep[rows]
        if angles is None:
            coords = np.stack([table.y[at][:, None, None] + gy[None], table.x[at][:, None, None] + gx[None]])
        else:  # the window's (gy, gx) read at the image's direction atan2(gy, gx) + angle
            c, s = np.cos(angles[at])[:, None, None], np.sin(angles[at])[:, None, None]
            coords = np.stack([table.y[at][:, None, None] + gx[None] * s + gy[None] * c,
                               table.x[at][:, None, None] + gx[None] * c - gy[None] * s])
        out[rows] = ndimage.map_coordinates(image, coords.reshape(2, -1), order=1, mode="constant",
                                            cval=fill).reshape(len(at), pixels, pixels)
        if round:
            out[rows] = (out[rows] - fill) * mask
    note = {"windows": int(len(keep)), "dropped_at_edge": int(len(table) - len(keep)) if edge == "drop" else 0,
            "padded_at_edge": int((~inside).sum()) if edge == "pad" else 0, "side_px": float(side),
            "pixels": int(pixels), "round": bool(round), "edge": edge, "edge_requested": requested,
            "aligned": angles is not None}
    if note["dropped_at_edge"] and requested == "drop":
        warnings.warn(f"{note['dropped_at_edge']} of {len(table)} atoms are closer to the frame edge than half a "
                      f"window ({side:.1f} px): their windows are left out (edge='pad' keeps them, padded)",
                      stacklevel=2)
    return out, keep, note
