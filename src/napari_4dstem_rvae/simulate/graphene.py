"""Graphene: the orthorhombic cell, periodic supercells with a centred atom, and the simulated,
calibrated 4D-STEM data set with an optional vacancy or substitutional Si."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..dataset import Calibration, Dataset4D, electron_wavelength_angstrom
from .potentials import interaction_constant
from .stem4d import _FFT_PIXELS_PER_DETECTOR_PIXEL, simulate_4dstem

#: Graphene lattice constant (Å).
GRAPHENE_LATTICE_CONSTANT = 2.46


DEFECTS = (None, "vacancy", "si")


# -- graphene --------------------------------------------------------------------------------
def graphene_cell(a: float = GRAPHENE_LATTICE_CONSTANT) -> tuple[np.ndarray, tuple[float, float]]:
    """The orthorhombic cell of graphene: 4 atoms (y, x) in Å and the cell (√3a, a) in Å.

    x is along the zigzag direction, y along the armchair direction; C–C bonds are a/√3.
    """
    height = math.sqrt(3) * a
    fractions = np.array([(0.0, 0.0), (1 / 3, 0.0), (0.5, 0.5), (5 / 6, 0.5)])
    return fractions * np.array([height, a]), (height, a)


def graphene_supercell(repeats: tuple[int, int], centre: tuple[float, float] = (0.0, 0.0),
                       a: float = GRAPHENE_LATTICE_CONSTANT
                       ) -> tuple[np.ndarray, tuple[float, float]]:
    """A periodic graphene supercell of ``repeats`` (rows, cols) orthorhombic cells.

    Returns the atoms as an (n, 3) array of (y, x, 6) in Å, inside the box, shifted so
    that an atom sits exactly at ``centre``, and the box (L_y, L_x) in Å, ready for
    :func:`simulate_4dstem`.
    """
    basis, (cell_y, cell_x) = graphene_cell(a)
    box = (repeats[0] * cell_y, repeats[1] * cell_x)
    iy, ix = np.meshgrid(np.arange(repeats[0]), np.arange(repeats[1]), indexing="ij")
    origins = np.stack([iy.ravel() * cell_y, ix.ravel() * cell_x], axis=-1)
    positions = (origins[:, None, :] + basis[None, :, :]).reshape(-1, 2)
    positions = np.mod(positions + np.asarray(centre), box)
    atoms = np.column_stack([positions, np.full(len(positions), 6.0)])
    return atoms, box


def graphene(
    scan_shape: tuple[int, int] = (32, 32),
    det_shape: tuple[int, int] = (64, 64),
    *,
    energy_kev: float = 60.0,
    semiangle_mrad: float = 31.0,
    det_pixel_mrad: float | None = None,
    scan_step_angstrom: float | None = None,
    defect: str | None = None,
    lattice_constant: float = GRAPHENE_LATTICE_CONSTANT,
    source_size_angstrom: float = 0.0,
    defocus_angstrom: float = 0.0,
    dose: float | None = None,
    seed: int = 0,
    dtype: Any = np.float32,
) -> Dataset4D:
    """A simulated 4D-STEM scan of monolayer graphene (see the module docstring for the physics).

    Parameters
    ----------
    scan_shape
        Probe positions (rows, cols).
    det_shape
        Detector pixels (rows, cols).
    energy_kev
        Beam energy (60 keV: below the knock-on threshold of graphene, as in the study).
    semiangle_mrad
        Convergence semi-angle of the probe-forming aperture.
    det_pixel_mrad
        Angular size of a detector pixel; by default the bright-field disk has a radius of
        a quarter of the detector (``4 · semiangle / min(det_shape)``: 1.94 mrad for 64 px
        and 31 mrad), so the detector reaches twice the semi-angle.
    scan_step_angstrom
        Distance between probe positions; by default 0.25 Å (the 32 × 32 scan then covers
        8 Å × 8 Å, about two orthorhombic cells tall and three wide, finer than the
        probe's Nyquist step λ / 4α = 0.39 Å).
    defect
        ``None``, ``"vacancy"`` (the carbon atom at the scan position
        ``(scan_y // 2, scan_x // 2)`` removed) or ``"si"`` (that atom replaced by Si).
    source_size_angstrom
        FWHM of the Gaussian effective source (partial spatial coherence), applied as a
        convolution over the scan axes.
    defocus_angstrom
        Probe defocus (> 0 underfocus).
    dose
        Electrons per probe position; if given, Poisson noise is drawn with ``seed`` and
        the data are counts. Otherwise each pattern holds the fraction of the beam per pixel.
    seed
        Seed of the noise generator.
    dtype
        Floating dtype of the data.

    Returns
    -------
    Dataset4D with numpy data (scan_y, scan_x, det_y, det_x), calibrated in Å and mrad.
    ``metadata["atoms"]`` holds the (y, x, Z) of every atom in Å, in the scan frame (the
    first probe position at (0, 0), probe (i, j) at (i·step, j·step));
    ``metadata["defect"]`` the defect and its position; ``metadata["simulation"]`` the
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
    if defect not in DEFECTS:
        raise ValueError(f"defect must be one of {DEFECTS}, got {defect!r}")
    if source_size_angstrom < 0:
        raise ValueError(f"source_size_angstrom must be ≥ 0, got {source_size_angstrom}")
    if dose is not None and not dose > 0:
        raise ValueError(f"dose must be a positive number of electrons per pattern, got {dose}")
    if det_pixel_mrad is None:
        det_pixel_mrad = 4 * semiangle_mrad / min(det_shape)
    step = 0.25 if scan_step_angstrom is None else float(scan_step_angstrom)
    if not step > 0:
        raise ValueError(f"scan_step_angstrom must be positive, got {scan_step_angstrom}")
    wavelength = electron_wavelength_angstrom(energy_kev)

    # Source size: simulate a margin of 3σ around the scan, convolve, crop.
    sigma = source_size_angstrom / (2 * math.sqrt(2 * math.log(2)))
    # The margin equals the radius of the discrete Gaussian kernel (truncated at 3σ).
    pad = int(3 * sigma / step + 0.5) if sigma > 0 else 0
    sim_shape = (scan_shape[0] + 2 * pad, scan_shape[1] + 2 * pad)

    # Box: holds the scan plus 6 Å of lattice on each side (the defect's periodic images
    # stay > 12 Å from the probe), and samples angles at half a detector pixel or finer.
    a = float(lattice_constant)
    if not a > 0:
        raise ValueError(f"lattice_constant must be positive (Å), got {lattice_constant!r}")
    (cell_y, cell_x) = graphene_cell(a)[1]
    side = max(max(sim_shape) * step + 12.0,
               _FFT_PIXELS_PER_DETECTOR_PIXEL * wavelength / (det_pixel_mrad * 1e-3))
    repeats = (math.ceil(side / cell_y), math.ceil(side / cell_x))
    box = (repeats[0] * cell_y, repeats[1] * cell_x)
    centre = (box[0] / 2, box[1] / 2)
    atoms, box = graphene_supercell(repeats, centre, a)

    # Probe (i, j) of the simulated scan sits at first + (i, j)·step; probe
    # (pad + scan_y//2, pad + scan_x//2) at the box centre, on an atom.
    first = (centre[0] - (pad + scan_shape[0] // 2) * step,
             centre[1] - (pad + scan_shape[1] // 2) * step)
    defect_info = None
    if defect is not None:
        target = int(np.argmin(np.hypot(atoms[:, 0] - centre[0], atoms[:, 1] - centre[1])))
        defect_info = {
            "kind": defect,
            "position_angstrom": (float(atoms[target, 0] - first[0] - pad * step),
                                  float(atoms[target, 1] - first[1] - pad * step)),
            "scan_index": (scan_shape[0] // 2, scan_shape[1] // 2),
        }
        if defect == "vacancy":
            atoms = np.delete(atoms, target, axis=0)
        else:
            atoms[target, 2] = 14.0

    iy, ix = np.meshgrid(np.arange(sim_shape[0]), np.arange(sim_shape[1]), indexing="ij")
    positions = np.stack([first[0] + iy * step, first[1] + ix * step], axis=-1)
    data = simulate_4dstem(
        atoms, box, positions, det_shape=det_shape, det_pixel_mrad=det_pixel_mrad,
        energy_kev=energy_kev, semiangle_mrad=semiangle_mrad,
        defocus_angstrom=defocus_angstrom,
    )
    if pad:
        from scipy.ndimage import gaussian_filter1d

        for axis in (0, 1):
            data = gaussian_filter1d(data, sigma / step, axis=axis, mode="nearest",
                                     truncate=3.0)
        data = data[pad:pad + scan_shape[0], pad:pad + scan_shape[1]]
    if dose is not None:
        rng = np.random.default_rng(seed)
        data = rng.poisson(data.astype(np.float64) * dose)
    data = np.ascontiguousarray(data, dtype=dtype)

    scan_first = (first[0] + pad * step, first[1] + pad * step)
    atoms_scan = atoms.copy()
    atoms_scan[:, 0] -= scan_first[0]
    atoms_scan[:, 1] -= scan_first[1]
    calibration = Calibration(
        scan_step=step, scan_unit="Å", det_pixel_size=float(det_pixel_mrad), det_unit="mrad",
        energy_kev=float(energy_kev), semiangle_mrad=float(semiangle_mrad),
        det_origin=((det_shape[0] - 1) / 2, (det_shape[1] - 1) / 2),
    )
    name = f"simulated graphene ({energy_kev:g} kV, {semiangle_mrad:g} mrad)"
    if defect is not None:
        name += f", {'Si dopant' if defect == 'si' else 'vacancy'}"
    simulation = {
        "model": "single-slice phase object, Kirkland projected potentials",
        "energy_kev": float(energy_kev),
        "wavelength_angstrom": wavelength,
        "interaction_constant_rad_per_volt_angstrom": interaction_constant(energy_kev),
        "semiangle_mrad": float(semiangle_mrad),
        "defocus_angstrom": float(defocus_angstrom),
        "det_pixel_mrad": float(det_pixel_mrad),
        "scan_step_angstrom": step,
        "lattice_constant_angstrom": a,
        "supercell_repeats": repeats,
        "box_angstrom": box,
        "defect": defect,
        "source_size_angstrom": float(source_size_angstrom),
        "dose": None if dose is None else float(dose),
        "seed": int(seed),
    }
    return Dataset4D(
        data=data,
        calibration=calibration,
        metadata={"name": name, "atoms": atoms_scan, "defect": defect_info,
                  "simulation": simulation},
        source=None,
    )
