"""Physics-based simulation for sample data, tests and benchmarks: 4D-STEM of monolayer graphene
and of a thick ZnS crystal.

The default call reproduces the conditions of the published rVAE study of graphene
(Oxley, Ziatdinov, Kalinin et al.): 60 kV, aberration-free probe with a 31 mrad
convergence semi-angle, a 64 × 64 pixel detector, a 32 × 32 raster scan.

Physics (references: E. J. Kirkland, *Advanced Computing in Electron Microscopy*,
2nd ed., Springer 2010 — "Kirkland" below)

- **Wavelength and interaction constant.** Relativistic wavelength λ (0.0487 Å at
  60 kV, :func:`napari_4dstem_rvae.dataset.electron_wavelength_angstrom`) and
  σ = 2π / (λ V) · (m0c² + eV) / (2 m0c² + eV) in rad / (V·Å) (Kirkland ch. 5).
- **Projected atomic potential.** Kirkland's fit of the electron scattering factor
  (Kirkland appendix C, three Lorentzians plus three Gaussians),
  f_e(q) = Σ a_i / (q² + b_i) + Σ c_i exp(−d_i q²), q in 1/Å, coefficients for C (Z = 6),
  Si (Z = 14), S (Z = 16) and Zn (Z = 30). In real space the projected potential of one atom is
  v_z(r) = 4π² a0 e Σ a_i K0(2π r √b_i) + 2π² a0 e Σ (c_i/d_i) exp(−π² r² / d_i)
  (Kirkland ch. 5, :func:`atom_projected_potential`). Its 2D Fourier transform is
  2π a0 e f_e(q), which is how :func:`projected_potential` builds the potential of the
  whole periodic supercell: Σ_atoms 2π a0 e f_e(q) exp(−2πi q·r_j) on the FFT grid, cut at
  the Nyquist circle. This is exact for a periodic box, places atoms at sub-pixel
  positions exactly and avoids the logarithmic singularity of K0 at r = 0.
- **Transmission function.** Single slice, phase-object approximation:
  t(r) = exp(iσ v_z(r)) (Kirkland ch. 5–6). Valid for a monolayer: one atom thick, the
  phase of a carbon atom peaks at ≈ 0.25 rad at the default sampling, and propagation
  within the atom's thickness is negligible at 60 kV. |t| = 1, so the total intensity is
  conserved; :func:`transmission_function` computes t on a 2× finer grid and keeps its
  spectrum below the band limit q_max (see *Sampling*), which removes only the
  scattering beyond q_max (< 0.1 % of the beam for graphene with the defaults).
- **Probe.** ψ(r − r_p) = IFFT[A(k) exp(−iχ(k)) exp(−2πi k·r_p)] with a circular aperture
  A of semi-angle α (edge anti-aliased over one reciprocal pixel), χ(k) = −π λ Δf k² (no
  spherical aberration; Δf > 0 is underfocus, Kirkland's convention, ch. 3), normalised
  to unit total intensity. The Fourier phase ramp makes sub-pixel probe positions exact.
- **Diffraction pattern.** I(k) = |FFT[ψ(r − r_p) t(r)]|² with orthonormal FFTs, so
  Σ_k I(k) = 1 over the whole FFT box. Forward FFT convention exp(−2πi k·r): a wave whose
  phase grows towards +y/+x in real space lands at +row/+col of the detector. A positive
  (attractive) atomic potential deflects the beam *towards* the atom, so the centre of
  mass of a pattern points, in detector (row, col), towards the atom in real space (y, x).
  There is no scan rotation or flip between the scan and the detector.
- **Detector.** The FFT box samples angles in steps of λ / L. The box side L is chosen
  (a whole number of rectangular graphene cells) so that this step is at most half a
  detector pixel; the intensity is then integrated onto detector pixels of the requested
  angular size (area-weighted rebinning, which conserves intensity). The direct beam
  (zero angle) is at the geometric centre of the detector, ``((det_y−1)/2, (det_x−1)/2)``.
  Intensity scattered beyond the detector edge is lost, as on a real detector (≤ 0.15 %
  of the beam for the default field of view of 2α).
- **Sampling.** t is band-limited at q_max and the probe at k_α = α/λ, so the product
  ψ·t holds frequencies up to q_max + k_α, which the periodic FFT wraps to
  ≥ 2 k_Nyquist − q_max − k_α. The grid is chosen so that q_max reaches the detector
  corners while the wrapped frequencies stay beyond the detector edge
  (2 k_Nyquist ≥ k_edge + k_corner + k_α: 0.27 Å pixels, 192 × 192 for the defaults).
  Within the band the potential's spectrum is exactly Kirkland's f_e(q); the hard cut
  only makes the real-space potential ring weakly (≲ 0.1 V·Å).
- **Partial spatial coherence.** A finite source of Gaussian profile (FWHM
  ``source_size_angstrom``) is an incoherent sum of patterns over probe positions. It is
  applied as a Gaussian convolution of the 4D data over the two scan axes, computed on a
  scan padded by 3σ on each side (then cropped), so the edges of the scan are exact.
- **Noise.** With ``dose`` (electrons per probe position), each pattern is multiplied by the
  dose and replaced by a Poisson draw (``seed``); the data are then electron counts.
  Without it, they are the fraction of the incident beam per pixel (each pattern sums to
  ≈ 1).

Graphene: lattice constant a = 2.46 Å, orthorhombic cell a × √3a with 4 atoms, x along
the zigzag direction (a) and y along the armchair direction (√3a). The periodic
supercell is a whole number of such cells. One carbon atom sits exactly at the scan
position ``(scan_y // 2, scan_x // 2)``; the ``defect`` options remove it (vacancy) or
replace it by silicon.

Thick specimens: :func:`zns` simulates zincblende ZnS viewed along [011] (the study's
Fig. 4: 60 kV, 31 mrad, 76 Å thick, a 0.75 Å FWHM source) by multislice
(:mod:`.multislice`: slices of Kirkland projected potentials, Fresnel propagation between
them, both band-limited to ⅔ of the grid's Nyquist frequency, an absorptive potential or
frozen phonons), for the periodic crystal exactly from a Nyquist-sampled grid of probe
positions over one cell, the partial coherence applied exactly in Fourier space (:mod:`.zns`).

Modules: :mod:`.potentials` (beam constants, Kirkland potentials, transmission function),
:mod:`.stem4d` (probe, patterns, detector rebinning, partial coherence, noise),
:mod:`.graphene` (lattice, defects, the calibrated data set), :mod:`.multislice` (slices,
propagator, absorptive transmission, multislice patterns, periodic scans), :mod:`.zns`
(the zincblende [011] cell and the ZnS data set).

Only numpy is imported at module level; scipy is imported inside functions.
"""


from __future__ import annotations

from .graphene import (
    DEFECTS,
    GRAPHENE_LATTICE_CONSTANT,
    graphene,
    graphene_cell,
    graphene_supercell,
)
from .potentials import (
    BOHR_RADIUS_ANGSTROM,
    ELECTRON_CHARGE_VOLT_ANGSTROM,
    KIRKLAND_COEFFICIENTS,
    atom_projected_potential,
    electron_scattering_factor,
    interaction_constant,
    projected_potential,
    transmission_function,
)
from .multislice import (
    band_limit,
    fresnel_propagator,
    multislice,
    periodic_scan,
    probe_grid_for_cell,
    simulate_multislice,
    slice_atoms,
    slice_transmission,
)
from .stem4d import simulate_4dstem
from .zns import ZNS_LATTICE_CONSTANT, zincblende_011_cell, zns

__all__ = [
    "BOHR_RADIUS_ANGSTROM", "ELECTRON_CHARGE_VOLT_ANGSTROM", "KIRKLAND_COEFFICIENTS", "DEFECTS", "GRAPHENE_LATTICE_CONSTANT", "atom_projected_potential", "electron_scattering_factor",
    "graphene", "graphene_cell", "graphene_supercell", "interaction_constant", "projected_potential",
    "simulate_4dstem", "transmission_function",
    "ZNS_LATTICE_CONSTANT", "band_limit", "fresnel_propagator", "multislice", "periodic_scan",
    "probe_grid_for_cell", "simulate_multislice", "slice_atoms", "slice_transmission",
    "zincblende_011_cell", "zns",
]
