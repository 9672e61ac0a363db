"""Zincblende ZnS viewed along [011]: the crystal, cut into slices, and the simulated,
calibrated 4D-STEM data set of a thick specimen (multislice, :mod:`.multislice`).

The defaults are those of the rVAE study's ZnS example (Oxley, Ziatdinov, Kalinin et al.,
Fig. 4): 60 kV, 31 mrad, 76 Å thick, an effective source of 0.75 Å FWHM.

Crystal: zincblende (F4̄3m), a = 5.41 Å, Zn at the fcc sites, S at +(¼, ¼, ¼)a. Axes:
x ∥ [100], y ∥ [0 1 −1], the beam z ∥ [011] (x × y = z). The orthorhombic cell
a/√2 (y) × a (x) × a/√2 (z) holds 2 Zn and 2 S:

====  ===========  =======  =====
atom  y            x        z
====  ===========  =======  =====
Zn    0            0        0
S     0            a/4      c/2
Zn    c_y/2        a/2      c/2
S     c_y/2        3a/4     0
====  ===========  =======  =====

with c = c_y = a/√2 = 3.83 Å. In projection: "dumbbells" of a Zn and an S column a/4 = 1.35 Å
apart along x, on a centred rectangular lattice. Along the beam the period c holds two
atomic layers (z = 0 and c/2); with the default two slices per period each slice holds one
layer, the atoms at its centre. The thickness is a whole number of periods (76 Å → 20
periods, 76.5 Å, 40 slices).

Simulation (see :mod:`.multislice` for the physics): absorptive multislice (κ = 0.1) by
default, or frozen phonons (``frozen_phonons`` configurations of Gaussian in-plane
displacements of rms ``rms_displacement_angstrom`` per axis, each slice its own atoms, the
patterns averaged; the absorption then defaults to 0 since the phonons give the thermal
diffuse scattering explicitly). The box is a whole number of cells (periodic) of at least
20 Å and large enough to sample angles at half a detector pixel; the grid's band limit
(⅔ Nyquist) reaches at least the detector corners and 4 1/Å (195 mrad at 60 kV), where the
channelled intensity has converged (see ``_MIN_BAND_LIMIT``).

Probe positions: the data of a periodic crystal are periodic over the scan with the
projected cell, and band-limited (:func:`.multislice.probe_grid_for_cell`), so the
multislice runs for a small grid of probe positions over one cell (9 × 15 for the
defaults) and the data at the requested scan follow from their Fourier series
(:func:`.multislice.periodic_scan`), at any scan step, with the partial spatial coherence
(Gaussian source, FWHM ``source_size_angstrom``) applied exactly as a Gaussian damping of
the Fourier components. This agrees with a multislice run at the scan positions to the
slight aperiodicity of the sampled transmission functions (≈ 2e-4 of the pattern maximum).
With frozen phonons, each configuration breaks the periodicity slightly; the configuration
average is treated as periodic.

Thickness matters for the contrast: up to ≈ 30 Å the centre of mass of the patterns points
towards the Zn and S columns (divergence negative there, as for a thin phase object); at
the default 76 Å the channelled beam has reversed this on both columns (divergence
positive at the columns, first at Zn from ≈ 45 Å), while the dark field stays brightest at
Zn (Z contrast).

Detector and noise as in :func:`.graphene.graphene`; the default pixel lets the detector
reach 3× the semi-angle at its edges (``6 · semiangle / min(det_shape)``), so the dark field
holds the Z contrast of Zn (Z = 30) against S (Z = 16).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..dataset import Calibration, Dataset4D, electron_wavelength_angstrom
from .multislice import (
    BAND_LIMIT_FRACTION,
    band_limit,
    periodic_scan,
    probe_grid_for_cell,
    simulate_multislice,
    slice_atoms,
)
from .potentials import interaction_constant
from .stem4d import _FFT_PIXELS_PER_DETECTOR_PIXEL, _grid_for

#: ZnS (sphalerite) lattice constant (Å).
ZNS_LATTICE_CONSTANT = 5.41
ZINC, SULFUR = 30, 16
#: Smallest side of the periodic box (Å): room for the probe's tails and its spread with depth.
_MIN_BOX = 20.0
#: Smallest band limit (1/Å; 195 mrad at 60 kV). The wave channelled on a Zn column is sharp:
#: with the band cut at 2.7 1/Å (the corners of the default detector) the intensity on the
#: detector at a Zn column of the default 76 Å crystal is 6 % low; from 4 1/Å on it changes by
#: < 0.3 % (measured against cuts up to 6.5 1/Å).
_MIN_BAND_LIMIT = 4.0


def zincblende_011_cell(a: float = ZNS_LATTICE_CONSTANT, cation: int = ZINC,
                        anion: int = SULFUR) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The orthorhombic cell of zincblende viewed along [011] (module docstring).

    Returns the 4 atoms as a (4, 4) array of (y, x, z, Z) in Å and the cell (c_y, c_x, c_z) =
    (a/√2, a, a/√2) in Å; z is along the beam.
    """
    c = a / math.sqrt(2)
    atoms = np.array([
        (0.0, 0.0, 0.0, cation),
        (0.0, a / 4, c / 2, anion),
        (c / 2, a / 2, c / 2, cation),
        (c / 2, 3 * a / 4, 0.0, anion),
    ])
    return atoms, (c, a, c)


def _tile(atoms: np.ndarray, cell: tuple[float, float], repeats: tuple[int, int]) -> np.ndarray:
    """The (y, x, ...) ``atoms`` of one cell repeated over ``repeats`` (rows, cols) cells."""
    iy, ix = np.meshgrid(np.arange(repeats[0]), np.arange(repeats[1]), indexing="ij")
    shifts = np.zeros((iy.size, atoms.shape[1]))
    shifts[:, 0] = iy.ravel() * cell[0]
    shifts[:, 1] = ix.ravel() * cell[1]
    return (shifts[:, None, :] + atoms[None, :, :]).reshape(-1, atoms.shape[1])


def zns(
    scan_shape: tuple[int, int] = (32, 32),
    det_shape: tuple[int, int] = (64, 64),
    *,
    energy_kev: float = 60.0,
    semiangle_mrad: float = 31.0,
    det_pixel_mrad: float | None = None,
    scan_step_angstrom: float | None = None,
    thickness_angstrom: float = 76.0,
    slices_per_period: int = 2,
    absorption: float | None = None,
    frozen_phonons: int = 0,
    rms_displacement_angstrom: float = 0.087,
    lattice_constant: float = ZNS_LATTICE_CONSTANT,
    source_size_angstrom: float = 0.75,
    defocus_angstrom: float = 0.0,
    dose: float | None = None,
    seed: int = 0,
    dtype: Any = np.float32,
) -> Dataset4D:
    """A simulated 4D-STEM scan of ZnS viewed along [011] (see the module docstring).

    Parameters
    ----------
    scan_shape, det_shape
        Probe positions (rows, cols) and detector pixels (rows, cols).
    energy_kev, semiangle_mrad
        Beam energy and convergence semi-angle.
    det_pixel_mrad
        Angular size of a detector pixel; by default ``6 · semiangle / min(det_shape)``
        (2.91 mrad for 64 px and 31 mrad): the bright-field disk has a radius of a sixth of
        the detector, whose edges are at 3× the semi-angle.
    scan_step_angstrom
        Distance between probe positions; by default 0.18 Å (the 32 × 32 scan covers
        5.8 Å × 5.8 Å, more than one projected cell, 5.41 Å × 3.83 Å).
    thickness_angstrom
        Specimen thickness, rounded to a whole number of periods a/√2 along [011].
    slices_per_period
        Slices per period along the beam (2: one atomic layer per slice).
    absorption
        κ of the absorptive potential (imaginary part κ·V); default 0.1, or 0 with frozen
        phonons.
    frozen_phonons, rms_displacement_angstrom
        Number of frozen-phonon configurations (0: none, the absorptive model) and the rms
        displacement of every atom along each in-plane axis (0.087 Å: a Debye–Waller factor
        B = 8π²u² ≈ 0.6 Å², the order of ZnS at room temperature).
    lattice_constant
        a in Å.
    source_size_angstrom
        FWHM of the Gaussian effective source (partial spatial coherence).
    defocus_angstrom
        Defocus: > 0 puts the focus that far below the entrance surface.
    dose, seed, dtype
        As in :func:`.graphene.graphene`: electrons per probe position and Poisson counts
        (``seed``; also seeds the frozen phonons), or the fraction of the beam per pixel.

    Returns
    -------
    Dataset4D with numpy data (scan_y, scan_x, det_y, det_x), calibrated in Å and mrad.
    Probe (i, j) is at (i·step, j·step) in the scan frame; a Zn column sits at the scan
    position ``(scan_y // 2, scan_x // 2)``, its S partner a/4 further along +x.
    ``metadata["atoms"]`` holds the (y, x, Z) of every atomic column within 3 Å of the scan,
    in that frame; ``metadata["structure"]`` the crystal and ``metadata["simulation"]`` the
    parameters.
    """
    scan_shape = (int(scan_shape[0]), int(scan_shape[1]))
    det_shape = (int(det_shape[0]), int(det_shape[1]))
    if min(scan_shape) < 1 or min(det_shape) < 2:
        raise ValueError(
            f"scan_shape must be ≥ 1 and det_shape ≥ 2 pixels, got {scan_shape}, {det_shape}"
        )
    if np.dtype(dtype).kind != "f":
        raise ValueError(f"dtype must be a floating-point type, got {np.dtype(dtype)}")
    if source_size_angstrom < 0:
        raise ValueError(f"source_size_angstrom must be ≥ 0, got {source_size_angstrom}")
    if dose is not None and not dose > 0:
        raise ValueError(f"dose must be a positive number of electrons per pattern, got {dose}")
    if not thickness_angstrom > 0 or int(slices_per_period) < 1:
        raise ValueError(f"thickness_angstrom must be positive and slices_per_period ≥ 1, got "
                         f"{thickness_angstrom}, {slices_per_period}")
    if int(frozen_phonons) < 0 or rms_displacement_angstrom < 0:
        raise ValueError(f"frozen_phonons and rms_displacement_angstrom must be ≥ 0, got "
                         f"{frozen_phonons}, {rms_displacement_angstrom}")
    frozen_phonons = int(frozen_phonons)
    if absorption is None:
        absorption = 0.0 if frozen_phonons else 0.1
    if absorption < 0:
        raise ValueError(f"absorption must be ≥ 0, got {absorption}")
    if det_pixel_mrad is None:
        det_pixel_mrad = 6 * semiangle_mrad / min(det_shape)
    step = 0.18 if scan_step_angstrom is None else float(scan_step_angstrom)
    if not step > 0:
        raise ValueError(f"scan_step_angstrom must be positive, got {scan_step_angstrom}")
    a = float(lattice_constant)
    if not a > 0:
        raise ValueError(f"lattice_constant must be positive (Å), got {lattice_constant!r}")
    wavelength = electron_wavelength_angstrom(energy_kev)

    basis, (cell_y, cell_x, cell_z) = zincblende_011_cell(a)
    periods = max(1, round(thickness_angstrom / cell_z))
    slices_per_period = int(slices_per_period)
    dz = cell_z / slices_per_period
    # Atoms at the middle of their slice: shift z by half a slice.
    basis = basis.copy()
    basis[:, 2] = np.mod(basis[:, 2] + dz / 2, cell_z)

    side = max(_MIN_BOX, _FFT_PIXELS_PER_DETECTOR_PIXEL * wavelength / (det_pixel_mrad * 1e-3))
    repeats = (math.ceil(side / cell_y), math.ceil(side / cell_x))
    box = (repeats[0] * cell_y, repeats[1] * cell_x)
    layer = _tile(basis, (cell_y, cell_x), repeats)   # one period of the whole box

    # Probe positions over one cell that determine the data everywhere.
    probe_grid = probe_grid_for_cell((cell_y, cell_x), box, energy_kev, semiangle_mrad)
    iy, ix = np.meshgrid(np.arange(probe_grid[0]), np.arange(probe_grid[1]), indexing="ij")
    samples_at = np.stack([iy * cell_y / probe_grid[0], ix * cell_x / probe_grid[1]], axis=-1)

    options = dict(det_shape=det_shape, det_pixel_mrad=det_pixel_mrad, energy_kev=energy_kev,
                   semiangle_mrad=semiangle_mrad, defocus_angstrom=defocus_angstrom,
                   absorption=absorption, slice_thickness=dz)
    wavelength_k = 1e-3 / wavelength
    det_corner = det_pixel_mrad * wavelength_k * math.hypot(*det_shape) / 2
    grid = _grid_for(box, max(det_corner, semiangle_mrad * wavelength_k, _MIN_BAND_LIMIT)
                     / BAND_LIMIT_FRACTION)
    if not frozen_phonons:
        slices = slice_atoms(layer, dz, slices_per_period)
        samples = simulate_multislice(slices, box, samples_at, repeats=periods, grid=grid,
                                      **options)
    else:
        rng = np.random.default_rng([seed, 1])
        slab = np.concatenate([layer + [0.0, 0.0, p * cell_z, 0.0] for p in range(periods)])
        samples = np.zeros((*probe_grid, *det_shape))
        for _ in range(frozen_phonons):
            moved = slab.copy()
            moved[:, :2] += rng.normal(0.0, rms_displacement_angstrom, size=(len(slab), 2))
            slices = slice_atoms(moved, dz, periods * slices_per_period)
            samples += simulate_multislice(slices, box, samples_at, grid=grid, **options)
        samples /= frozen_phonons

    # The scan: a Zn column (the cell's origin) at scan position (scan_y // 2, scan_x // 2).
    first = (-(scan_shape[0] // 2) * step, -(scan_shape[1] // 2) * step)
    rows = first[0] + np.arange(scan_shape[0]) * step
    cols = first[1] + np.arange(scan_shape[1]) * step
    sigma = source_size_angstrom / (2 * math.sqrt(2 * math.log(2)))
    data = periodic_scan(samples, (cell_y, cell_x), rows, cols, sigma)
    np.clip(data, 0.0, None, out=data)   # rounding residues of the Fourier series
    if dose is not None:
        data = np.random.default_rng(seed).poisson(data * dose)
    data = np.ascontiguousarray(data, dtype=dtype)

    # Columns within 3 Å of the scan, in the scan frame.
    margin = 3.0
    low = (first[0] - margin, first[1] - margin)
    high = (rows[-1] + margin, cols[-1] + margin)
    start = (math.floor(low[0] / cell_y) - 1, math.floor(low[1] / cell_x) - 1)
    count = (math.ceil(high[0] / cell_y) - start[0] + 1, math.ceil(high[1] / cell_x) - start[1] + 1)
    columns = _tile(np.unique(basis[:, [0, 1, 3]], axis=0), (cell_y, cell_x), count)
    columns[:, 0] += start[0] * cell_y - first[0]
    columns[:, 1] += start[1] * cell_x - first[1]
    inside = ((columns[:, 0] >= -margin) & (columns[:, 0] <= high[0] - first[0])
              & (columns[:, 1] >= -margin) & (columns[:, 1] <= high[1] - first[1]))
    columns = columns[inside]
    columns = columns[np.lexsort((columns[:, 1], columns[:, 0]))]

    calibration = Calibration(
        scan_step=step, scan_unit="Å", det_pixel_size=float(det_pixel_mrad), det_unit="mrad",
        energy_kev=float(energy_kev), semiangle_mrad=float(semiangle_mrad),
        det_origin=((det_shape[0] - 1) / 2, (det_shape[1] - 1) / 2),
    )
    thickness = periods * cell_z
    name = (f"simulated ZnS [011] ({energy_kev:g} kV, {semiangle_mrad:g} mrad, "
            f"{thickness:.0f} Å)")
    structure = {
        "name": "ZnS (zincblende)",
        "zone_axis": "[011]",
        "axes": "x ∥ [100], y ∥ [0 1 -1], beam ∥ [011]",
        "lattice_constant_angstrom": a,
        "projected_cell_angstrom": (cell_y, cell_x),
        "period_along_beam_angstrom": cell_z,
        "dumbbell_angstrom": a / 4,
        "elements": {"Zn": ZINC, "S": SULFUR},
    }
    simulation = {
        "model": ("multislice, Kirkland projected potentials, "
                  + (f"frozen phonons ({frozen_phonons} configurations)" if frozen_phonons
                     else "absorptive potential")),
        "energy_kev": float(energy_kev),
        "wavelength_angstrom": wavelength,
        "interaction_constant_rad_per_volt_angstrom": interaction_constant(energy_kev),
        "semiangle_mrad": float(semiangle_mrad),
        "defocus_angstrom": float(defocus_angstrom),
        "det_pixel_mrad": float(det_pixel_mrad),
        "scan_step_angstrom": step,
        "thickness_angstrom": thickness,
        "requested_thickness_angstrom": float(thickness_angstrom),
        "periods": periods,
        "slices": periods * slices_per_period,
        "slice_thickness_angstrom": dz,
        "absorption": float(absorption),
        "frozen_phonons": frozen_phonons,
        "rms_displacement_angstrom": float(rms_displacement_angstrom) if frozen_phonons else None,
        "supercell_repeats": repeats,
        "box_angstrom": box,
        "grid": grid,
        "band_limit_mrad": band_limit(box, grid) * wavelength * 1e3,
        "probe_grid_per_cell": probe_grid,
        "source_size_angstrom": float(source_size_angstrom),
        "dose": None if dose is None else float(dose),
        "seed": int(seed),
    }
    return Dataset4D(
        data=data,
        calibration=calibration,
        metadata={"name": name, "atoms": columns, "structure": structure,
                  "simulation": simulation},
        source=None,
    )
