"""Atoms in atom-resolved images (Kalinin et al., Sci. Adv. 7, eabd5084, 2021): found, refined,
classified, followed over frames, and the windows around them cut for the rVAE.

- :mod:`.table` — :class:`AtomTable` (one row per atom per frame) and the Z-contrast classes;
- :mod:`.find` — the classical finder: band-pass, peaks, sub-pixel refinement;
- :mod:`.unet` — the study's finder: a small U-Net trained on this package's simulator
  (torch; loaded only when used);
- :mod:`.track` — atoms linked over frames;
- :mod:`.windows` — windows around atoms, the rVAE's input.

The atom-resolved run that uses them is :class:`napari_4dstem_rvae.workflows.AtomRun`.
"""

from .find import band_pass_z, find_atoms, find_atoms_series, pixel_noise
from .table import ATOM_FWHM, MIN_SPACING, AtomTable, atom_intensity, classify_intensity, empty_table
from .track import link_frames
from .windows import cut_windows, round_mask, window_pixels_for

__all__ = ["ATOM_FWHM", "MIN_SPACING", "AtomTable", "atom_intensity", "band_pass_z", "classify_intensity",
           "cut_windows", "empty_table", "find_atoms", "find_atoms_series", "link_frames", "pixel_noise",
           "round_mask", "window_pixels_for"]
