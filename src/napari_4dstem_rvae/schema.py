"""The one map schema: every map the package produces, declared once.

A *map* is an array over the scan, ``(scan_y, scan_x)``, or a stack of them
``(k, scan_y, scan_x)`` (the content latents). Each is declared here with its name (the
key in result objects and results files), a title for people, its unit, its kind and
default colormap, and a sentence saying what it is. Computations name their outputs with
these keys; the results-file writer and reader, the TIFF writer, the figures and the
napari layers all style a map from its :class:`MapSpec`, so a map looks and reads the same
everywhere.

Units may hold two placeholders resolved per data set by :func:`resolve_unit`:
``{det}`` — the detector's angular unit (``mrad`` when calibrated, else ``px``) — and
``{scan}`` — the scan unit (``Å``, ``nm`` … or ``probe step``).

Kinds and what they mean for display:

- ``angle`` — cyclic, over (−180°, 180°] (maps stored in radians are shown in degrees);
- ``diverging`` — signed around zero (COM components, divergence, curl, latents);
- ``sequential`` — non-negative magnitudes;
- ``spread`` — posterior standard deviations (uncertainties);
- ``image`` — intensities (virtual detectors), grey;
- ``mask`` — booleans (valid positions, training region).

No imports beyond numpy; every stage may use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: Display rules per kind: colormap, symmetric limits, and how a map overlays the ADF image
#: (opacity and blending: maps are translucent so the atoms stay visible underneath; images of
#: virtual detectors are opaque; masks add light where they are 1).
KINDS: dict[str, dict] = {
    "angle": {"colormap": "twilight_shifted", "limits": (-180.0, 180.0), "opacity": 0.7, "blending": "translucent"},
    "diverging": {"colormap": "coolwarm", "symmetric": True, "opacity": 0.7, "blending": "translucent"},
    "sequential": {"colormap": "viridis", "opacity": 0.7, "blending": "translucent"},
    "spread": {"colormap": "magma", "opacity": 0.7, "blending": "translucent"},
    "image": {"colormap": "gray", "opacity": 1.0, "blending": "translucent_no_depth"},
    "mask": {"colormap": "gray", "limits": (0.0, 1.0), "opacity": 0.4, "blending": "additive"},
}


@dataclass(frozen=True)
class MapSpec:
    """How one map is named, stored and shown.

    Attributes
    ----------
    name
        Key in result objects and results files (``"com_magnitude"``).
    title
        Short label for layers and figures (``"COM magnitude"``).
    unit
        Unit of the stored values; may contain ``{det}`` / ``{scan}`` (see the module doc).
    kind
        One of :data:`KINDS`.
    description
        One sentence for the docs, tooltips and file attributes.
    group
        Group of the results file that holds it (``"images"``, ``"com"``, ``"rvae"``).
    planes
        For stacks: titles of the planes (``"latent {i}"`` numbered from 1, or a tuple).
    colormap
        Overrides the kind's colormap.
    aliases
        Other names the map is known by (older files, short forms).
    shown
        Shown by default as a layer and a figure panel (posterior spreads, mask intensities
        and validity masks are stored, not shown).
    """

    name: str
    title: str
    unit: str
    kind: str
    description: str
    group: str = ""
    planes: str | tuple[str, ...] | None = None
    colormap: str | None = None
    aliases: tuple[str, ...] = field(default=())
    shown: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"MapSpec {self.name!r}: kind must be one of {sorted(KINDS)}, got {self.kind!r}")

    @property
    def is_stack(self) -> bool:
        return self.planes is not None

    @property
    def cmap(self) -> str:
        return self.colormap or KINDS[self.kind]["colormap"]

    def plane_title(self, i: int) -> str:
        """Title of plane ``i`` (0-based) of a stack."""
        if isinstance(self.planes, tuple):
            return self.planes[i] if i < len(self.planes) else f"{self.title} {i + 1}"
        if isinstance(self.planes, str):
            return self.planes.format(i=i + 1)
        return self.title

    def plane_titles(self, n: int) -> list[str]:
        return [self.plane_title(i) for i in range(n)] if self.is_stack else [self.title]

    def plane_name(self, i: int) -> str:
        """Key of plane ``i`` (0-based) of a stack as a flat map: ``latent_1`` (numbered from 1,
        like the titles), ``latent_1_std``, ``shift_x`` …"""
        title = self.plane_title(i).replace("rVAE ", "")
        return "_".join(title.replace("spread", "std").split())


def _spec(*args, **kwargs) -> MapSpec:
    return MapSpec(*args, **kwargs)


#: Every map, by name.
MAPS: dict[str, MapSpec] = {s.name: s for s in (
    # real-space images from virtual detectors
    _spec("sum", "total intensity", "counts", "image", "Sum of every detector pixel.", "images"),
    _spec("adf", "ADF", "counts", "image",
          "Annular dark field: scattering outside 1.25 × the bright-field disk radius.", "images"),
    _spec("bf", "BF", "counts", "image", "Bright field: intensity inside the bright-field disk.", "images"),
    _spec("virtual", "virtual detector", "counts", "image", "A virtual detector chosen by the user.", "images"),
    # centre of mass / DPC
    _spec("com_x", "COM x", "{det}", "diverging",
          "Centre-of-mass shift along the scan's x (columns), after reference, flip and rotation.", "com",
          aliases=("x",)),
    _spec("com_y", "COM y", "{det}", "diverging",
          "Centre-of-mass shift along the scan's y (rows), after reference, flip and rotation.", "com",
          aliases=("y",)),
    _spec("com_magnitude", "COM magnitude", "{det}", "sequential",
          "Length of the centre-of-mass shift, √(x² + y²).", "com", aliases=("magnitude",)),
    _spec("com_angle", "COM angle", "rad", "angle",
          "Direction of the centre-of-mass shift, atan2(y, x), from +x towards +y.", "com"),
    _spec("com_divergence", "COM divergence", "{det}/{scan}", "diverging",
          "∂x COMx + ∂y COMy: negative at atom columns (the beam is pulled towards them).", "com",
          aliases=("divergence",)),
    _spec("com_curl", "COM curl", "{det}/{scan}", "diverging",
          "∂x COMy − ∂y COMx: zero for a deflection by a potential; what is left is noise or a "
          "wrong scan rotation.", "com", aliases=("curl",)),
    _spec("com_intensity", "COM mask intensity", "counts", "image",
          "Summed intensity inside the COM mask.", "com", shown=False),
    _spec("com_valid", "COM valid", "1", "mask",
          "Positions with intensity inside the COM mask (elsewhere the shift is 0).", "com",
          aliases=("valid",), shown=False),
    # rVAE
    _spec("angle", "rVAE angle", "rad", "angle",
          "Rotation of each pattern relative to the decoder's canonical pattern (posterior mean), "
          "counter-clockwise on screen about the direct beam.", "rvae", aliases=("rotation",)),
    _spec("angle_std", "rVAE angle spread", "rad", "spread",
          "Posterior standard deviation of the angle: large where the rotation is ill-defined.", "rvae", shown=False),
    _spec("latents", "rVAE latent", "1", "diverging",
          "Content latents (posterior means, prior N(0, 1)): what differs between patterns once "
          "their rotation is taken out.", "rvae", planes="rVAE latent {i}"),
    _spec("latents_std", "rVAE latent spread", "1", "spread",
          "Posterior standard deviations of the content latents.", "rvae", planes="rVAE latent {i} spread", shown=False),
    _spec("shift", "rVAE shift", "px", "diverging",
          "Shift of each pattern (x right, y down), detector pixels.", "rvae",
          planes=("rVAE shift x", "rVAE shift y")),
    _spec("shift_std", "rVAE shift spread", "px", "spread",
          "Posterior standard deviations of the shift.", "rvae",
          planes=("rVAE shift x spread", "rVAE shift y spread"), shown=False),
    _spec("angle_concentration", "rVAE angle certainty", "1", "sequential",
          "Mean resultant length of the angle's posterior, 0–1: 1 where the pattern fixes its "
          "rotation, 0 where it does not (e.g. a nearly round pattern).", "rvae"),
    _spec("angle_symmetric", "rVAE angle mod symmetry", "rad", "angle",
          "The angle modulo 2π/n, n the lattice's rotational symmetry: rotations by a symmetry "
          "of the lattice look alike.", "rvae"),
    _spec("novelty", "rVAE novelty", "robust SD", "sequential",
          "What breaks the symmetry of the scan at each probe position, as robust z-scores: for "
          "a crystal, how far each pattern departs from the scan's lattice-periodic average "
          "(counting noise accounted for, pooled over 0.5 Å); for a scan without a lattice, how "
          "poorly the trained model explains the pattern. High at what the rest of the scan "
          "does not show: vacancies, dopants, contamination.", "rvae", colormap="inferno"),
    _spec("roi_mask", "rVAE training region", "1", "mask",
          "Probe positions the rVAE was trained on (train and test).", "rvae", shown=False),
)}

def map_names(group: str, *, shown: bool | None = None, kinds: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """Names of the maps of ``group`` (``"images"``, ``"com"``, ``"rvae"``) in declaration order;
    only those ``shown`` by default (or not) and of ``kinds`` when given. Every list of maps
    (file groups, layers, figure panels, the rVAE's map object) is derived from this."""
    return tuple(name for name, spec in MAPS.items() if spec.group == group
                 and (shown is None or spec.shown == shown) and (kinds is None or spec.kind in kinds))


#: The rVAE's maps of every probe position (:class:`~napari_4dstem_rvae.rvae.LatentMaps` has an
#: attribute of each name); the training region is the run's, not the model's.
RVAE_MAPS = tuple(name for name in map_names("rvae") if name != "roi_mask")

_ALIASES = {alias: spec.name for spec in MAPS.values() for alias in spec.aliases}
# Names written by version 0.1 (napari-4dstem-rvae ≤ 0.1.0) -> (map, factor to its unit)
LEGACY = {"com_x_mrad": "com_x", "com_y_mrad": "com_y", "com_magnitude_mrad": "com_magnitude",
          "latent": "latents", "rotation_std": "angle_std"}


def spec_for(name: str) -> MapSpec:
    """The spec of a map by name, alias or a layer-like name (``"latent 2"``, ``"COM x"``).

    Unknown names get a generic spec of kind ``image`` titled with the name (a map of
    another program keeps its name and is shown in grey).
    """
    key = str(name).strip()
    if key in MAPS:
        return MAPS[key]
    if key in _ALIASES:
        return MAPS[_ALIASES[key]]
    if key in LEGACY:
        return MAPS[LEGACY[key]]
    low = key.lower()
    for spec in MAPS.values():
        if low == spec.title.lower():
            return spec
    if re.fullmatch(r"(rvae )?latents?[ _]\d+", low):
        return MAPS["latents"]
    if re.fullmatch(r"(rvae )?latents?(_std)?[ _]\d+(_std| spread)", low) or "latent" in low and "spread" in low:
        return MAPS["latents_std"]
    return MapSpec(key, key, "", "image", f"Map '{key}'.")


def resolve_unit(unit: str, det_unit: str | None = None, scan_unit: str | None = None) -> str:
    """A unit with its placeholders filled: ``{det}`` -> ``det_unit`` (``"px"`` if None),
    ``{scan}`` -> ``scan_unit`` (``"probe step"`` if None)."""
    return unit.replace("{det}", det_unit or "px").replace("{scan}", scan_unit or "probe step")


def shown_in_degrees(spec: MapSpec) -> bool:
    """Maps stored in radians (angles and their spreads) are shown in degrees."""
    return spec.unit == "rad"


def display_values(spec: MapSpec, values):
    """Values as shown to people (float64): radians in degrees, everything else unchanged."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    return np.degrees(values) if shown_in_degrees(spec) else values


def display_unit(spec: MapSpec, unit: str) -> str:
    """The unit of :func:`display_values` (``"°"`` for radians)."""
    return "°" if shown_in_degrees(spec) else unit


def contrast_limits(spec: MapSpec, displayed) -> tuple[float, float] | None:
    """Default contrast limits of displayed values: fixed for angles and masks, symmetric about
    zero for diverging maps, the finite range otherwise; ``None`` when undetermined."""
    import numpy as np

    style = KINDS[spec.kind]
    if "limits" in style:
        return tuple(style["limits"])  # type: ignore[return-value]
    values = np.asarray(displayed, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if not finite.size:
        return None
    if style.get("symmetric"):
        bound = float(np.abs(finite).max()) or 1.0
        return (-bound, bound)
    low, high = float(finite.min()), float(finite.max())
    return (low, high) if high > low else None
