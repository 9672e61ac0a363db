"""Results: the one owner of files of maps and of figures.

- :mod:`.files` — the results-file layout (HDF5): :func:`write_results` (images, COM maps,
  rVAE maps with their parameters and history), :func:`write_layer_maps` (maps saved from
  napari layers); atomic writes, each under its own claim of the output.
- :mod:`.reading` — :func:`read_results` (this format and those of version 0.1),
  :func:`is_results_file`.
- :mod:`.claim` — :func:`claim_output`, the output guard (never an input, a folder or a
  foreign file; one writer per path, re-entrant in its thread), :func:`same_or_inside`.
- :mod:`.atoms` — the per-atom table of the atom-resolved workflow and its figure.
- :mod:`.figures` — PNG figures styled from the map schema.
- :mod:`.tiff` — ImageJ TIFF stacks.

Every map is declared once in :mod:`napari_4dstem_rvae.schema` (re-exported here): name,
unit, kind, colormap, description. The computations name their outputs with its keys; this
package writes, reads and draws them by those keys.
"""

from __future__ import annotations

from ..atomic import atomic_path
from ..schema import KINDS, MAPS, MapSpec, resolve_unit, spec_for
from .atoms import AtomFile, atoms_figure, is_atom_results, read_atom_results, write_atom_results
from .figures import com_figure, image_figure, overview_figure
from .claim import claim_output, same_or_inside
from .files import versions, write_layer_maps, write_results
from .reading import FORMAT_VERSION, RESULTS_MARK, ResultsFile, StoredMap, is_results_file, read_results
from .tiff import write_tiff

__all__ = [
    "AtomFile", "atoms_figure", "is_atom_results", "read_atom_results", "write_atom_results",
    "FORMAT_VERSION", "KINDS", "MAPS", "MapSpec", "RESULTS_MARK", "ResultsFile", "StoredMap", "atomic_path",
    "claim_output", "same_or_inside",
    "com_figure", "image_figure", "is_results_file", "overview_figure", "read_results", "resolve_unit",
    "spec_for", "versions", "write_layer_maps", "write_results", "write_tiff",
]
