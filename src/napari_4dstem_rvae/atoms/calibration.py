"""The pixel size of an atom-resolved frame checked against, or read off, its lattice.

A honeycomb (graphene, MoS₂) shows its empty hexagon centres as dark minima on a triangular
lattice √3 bonds apart (graphene 2.46 Å), and they show where single atoms barely do: in noisy
frames sampled far finer than the probe. :func:`hexagon_pixel_size` measures that spacing;
:func:`settle_pixel_size` decides which pixel size a run uses — the one given (file or
``--pixel-size``) unless the hexagons disagree with it by more than 10 %, the lattice's when
none is given — and says so in one sentence. Minima on a square lattice (a square lattice of
atoms) or on a honeycomb (a triangular lattice of atoms) are not taken for hexagon centres: such
a frame keeps the size given.

Measured (docs/quality.md): on five real graphene frames and a real MoS₂ frame the hexagon
centres give one pixel size from any given one within 2.5× of it (graphene 0.038, 0.038, 0.076,
0.078, 0.117 Å/px — for the three with published positions their bonds say the same within
2 %; MoS₂ 0.133 Å/px, its file 0.127); on simulated
frames at 0.06–0.25 Å/px within 3 % of the truth, where the power spectrum's six spots
(:func:`~.complete.lattice_pixel_size`) missed by up to a factor of two.
"""

from __future__ import annotations

import math

import numpy as np

from .complete import GRAPHENE_BOND, lattice_pixel_size

#: the largest disagreement (relative) between a given pixel size and the lattice's that a run accepts
TOLERANCE = 0.10
SOURCES = ("auto", "given", "lattice")


def _hexagons(binned: dict, size: float, bond: float) -> tuple[float, float, int, float] | None:
    """At an assumed pixel size: the pixel size the dark minima's spacing says, the share of
    minima with three near neighbours within ±15 % of it, their number, and the share of those
    inside the frame with five such neighbours. ``binned``: the
    frame (key 1), and its binned copies (made here), with their pixel noise: smoothing over
    many pixels is done on a frame binned to ≥ 3 px per smoothing σ (the same minima, faster)."""
    from scipy.ndimage import gaussian_filter
    from scipy.spatial import cKDTree
    from skimage.feature import peak_local_max

    from .find import pixel_noise

    full = math.sqrt(3) * bond / size          # the hexagon centres' spacing in the frame's pixels
    if 0.32 * bond / size < 0.5 or 3 * full > min(binned[1][0].shape):
        return None
    factor = max(1, int(0.32 * bond / size / 3))
    if factor not in binned:
        image = binned[1][0]
        ny, nx = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
        small = image[:ny, :nx].reshape(ny // factor, factor, nx // factor, factor).mean((1, 3))
        binned[factor] = (small, pixel_noise(small))
    image, noise_px = binned[factor]
    spacing, sigma = full / factor, 0.32 * bond / size / factor
    depth = gaussian_filter(image, 3 * sigma) - gaussian_filter(image, sigma)
    noise = noise_px / (2 * math.sqrt(math.pi) * sigma)
    minima = peak_local_max(depth / (noise if noise > 0 else 1.0), min_distance=max(1, int(0.6 * spacing)),
                            threshold_abs=3.0, exclude_border=False).astype(np.float64)
    if len(minima) < 12:
        return None
    d = cKDTree(minima).query(minima, 7)[0][:, 1:]
    found = float(np.median(d[d < 1.3 * np.median(d[:, 0])])) * factor
    near = (np.abs(d * factor / found - 1) < 0.15).sum(1)
    edge = 1.2 * found / factor          # minima with their whole first ring inside the frame
    inner = ((minima >= edge) & (minima <= np.array(image.shape) - 1 - edge)).all(1)
    return (math.sqrt(3) * bond / found, float(np.mean(near >= 3)), len(minima),
            float(np.mean(near[inner] >= 5)) if inner.any() else 0.0)


def _honeycomb(found: tuple) -> bool:
    """Do the minima make a honeycomb's hexagon centres: most with three near neighbours at the
    spacing, and a tenth of those inside the frame with five or six (a triangular lattice of
    minima; a square lattice of atoms gives four, a triangular one three: measured 0.00 where
    real and simulated graphene give 0.27–0.90)."""
    return found[1] >= 0.5 and found[3] >= 0.1


def hexagon_pixel_size(frame: np.ndarray, pixel_size: float | None = None, bond: float = GRAPHENE_BOND,
                       span: float = 2.5) -> tuple[float, int] | None:
    """The pixel size (Å) a honeycomb's empty hexagon centres say, searched within ``span``× of
    ``pixel_size`` (0.015–0.5 Å/px without one).

    At each assumed size on a grid 8 % apart: the dark minima of the frame smoothed at 0.32 bond
    (less its background 3× wider), at least 0.6 × their expected spacing (√3 × ``bond``) apart
    and 3 noise SDs deep; the median distance to their near neighbours (within 1.3 × the
    nearest's median) says a pixel size. Where it agrees with the assumed one (±8 %) and the
    minima make a honeycomb's hexagon centres (:func:`_honeycomb`), it is a candidate;
    the one whose minima make the best lattice is refined (the assumption set to what it says,
    three times). An assumed size far below the truth can agree with itself on a sparse subset
    of minima, but they make no lattice (measured). Returns the size and the number of hexagon
    centres, or ``None`` when no assumed size gives a lattice of at least 12 centres."""
    image = np.asarray(frame, np.float64)
    if image.ndim != 2 or not np.isfinite(image).all():
        image = np.nan_to_num(np.squeeze(image), nan=float(np.nanmedian(image)))
    from .find import pixel_noise

    binned = {1: (image, pixel_noise(image))}
    low, high = (pixel_size / span, pixel_size * span) if pixel_size else (0.015, 0.5)
    best: tuple | None = None
    for size in np.exp(np.arange(math.log(low), math.log(high) + 1e-9, math.log(1.08))):
        found = _hexagons(binned, float(size), bond)
        if found is not None and abs(found[0] / size - 1) < 0.08 and _honeycomb(found) and (
                best is None or found[1] > best[1]):
            best = found
    if best is None:
        return None
    for _ in range(3):
        again = _hexagons(binned, best[0], bond)
        if again is None or not _honeycomb(again):
            break
        settled = abs(again[0] / best[0] - 1) < 0.01
        best = again
        if settled:
            break
    return best[0], best[2]


def settle_pixel_size(frame: np.ndarray, given: float | None, bond: float = GRAPHENE_BOND,
                      source: str = "auto") -> tuple[float | None, str | None, dict]:
    """The pixel size (Å) a run uses, the sentence that says why (``None`` when the given one
    stands unremarked) and a provenance record.

    ``source``: ``"auto"`` — the given one unless the hexagon centres disagree by more than
    10 % (then the lattice's, stated), the lattice's when none is given; ``"given"`` — the given
    one always (a disagreement is still said); ``"lattice"`` — the lattice's whenever it shows."""
    if source not in SOURCES:
        raise ValueError(f"--pixel-size-from must be one of {SOURCES}, got {source!r}")
    if given is not None:
        found = hexagon_pixel_size(frame, given, bond)
        if found is None:
            return given, None, {}
        size, centres = found
        off = size / given - 1
        record = {"step": "pixel size checked against the lattice", "given_angstrom": given,
                  "lattice_angstrom": size, "hexagon_centres": centres, "bond_angstrom": bond}
        said = (f"the pixel size given, {given:.4g} Å/px, is {abs(off):.0%} {'below' if off > 0 else 'above'} the "
                f"lattice's: its {centres} hexagon centres are {math.sqrt(3) * bond / size:.1f} px apart, "
                f"{size:.4f} Å/px for {bond:g} Å bonds")
        if source == "lattice" or (source == "auto" and abs(off) > TOLERANCE):
            record["used"] = "lattice"
            return size, (said + f"; the run uses {size:.4f} Å/px (--pixel-size-from given keeps "
                          f"{given:.4g}; --min-spacing for a lattice other than {bond:g} Å bonds)"), record
        record["used"] = "given"
        return given, (said + "; kept as given" if abs(off) > TOLERANCE else None), record
    found = hexagon_pixel_size(frame, None, bond)
    if found is not None:
        size, centres = found
        return size, (f"no pixel size in the file: {size:.4f} Å/px read off the lattice (its {centres} hexagon "
                      f"centres {math.sqrt(3) * bond:.2f} Å apart); give --pixel-size to override"), {
            "step": "pixel size from the lattice", "pixel_size_angstrom": size, "hexagon_centres": centres,
            "bond_angstrom": bond}
    spectral = lattice_pixel_size(frame, 1.5 * bond)   # the power spectrum's six spots, when no hexagons show
    if spectral is None:
        return None, ("no pixel size in the file and no lattice to read it from: atoms are found in pixels "
                      "(give --pixel-size for windows in Å)"), {}
    size, strength = spectral
    return size, (f"no pixel size in the file: {size:.4f} Å/px read off the lattice (six spots of {1.5 * bond:.2f} "
                  f"Å planes, {strength:.0f} robust SDs above the spectrum); give --pixel-size to override"), {
        "step": "pixel size from the lattice", "pixel_size_angstrom": size, "planes_angstrom": 1.5 * bond,
        "strength": strength}
