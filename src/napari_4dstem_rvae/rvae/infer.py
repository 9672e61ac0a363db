"""Inference: every probe position encoded in batches → angle, shift and latent maps;
reconstructions with the inferred pose; a decoded latent traversal.

Data are streamed: numpy data are read batch by batch, dask data block of scan rows by
block; only one batch is on the device at a time.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..processing.novelty import detector_blocks, lattice_novelty, robust_z
from ..units import length_factor
from . import circular
from .data import as_patterns, check_finite
from .model import RVAE


@dataclass
class LatentMaps:
    """rVAE maps over the scan (posterior means and spreads), float32.

    Attributes
    ----------
    angle
        ``(scan_y, scan_x)`` rotation of each pattern in radians, wrapped to (−π, π],
        counter-clockwise on screen (see :mod:`napari_4dstem_rvae.rvae.model`).
    angle_std
        ``(scan_y, scan_x)`` posterior (circular) standard deviation of the angle (rad).
    latents, latents_std
        ``(k, scan_y, scan_x)`` content latents (dimensionless, prior N(0, 1)) and spreads.
    shift, shift_std
        ``(2, scan_y, scan_x)`` shift (x right, y down) in detector pixels and its spread,
        or ``None`` when the model has no shift.
    angle_concentration
        ``(scan_y, scan_x)`` mean resultant length of the angle's posterior, in [0, 1]: 1 for
        a certain angle, 0 for an angle the pattern does not determine.
    novelty
        ``(scan_y, scan_x)`` what breaks the symmetry of the scan at each probe position, as
        robust z-scores over the scan ((d − median) / (1.4826 · MAD)); ``None`` when not
        computed. For a crystal, the deviation of each pattern from the scan's periodic
        average (:mod:`napari_4dstem_rvae.processing.novelty`); when the scan shows no
        lattice, how poorly the model explains each pattern (:func:`novelty_scores`).
        ``novelty_reference`` says which (``"lattice"`` or ``"model"``).
    angle_symmetric
        ``(scan_y, scan_x)`` the angle modulo 2π/n (``config.angle_symmetry`` = n > 1), in
        (−π/n, π/n]; ``None`` otherwise.
    """

    angle: np.ndarray
    angle_std: np.ndarray
    latents: np.ndarray
    latents_std: np.ndarray
    shift: np.ndarray | None = None
    shift_std: np.ndarray | None = None
    angle_concentration: np.ndarray | None = None
    novelty: np.ndarray | None = None
    angle_symmetric: np.ndarray | None = None
    novelty_reference: str | None = None

    @property
    def scan_shape(self) -> tuple[int, int]:
        return tuple(self.angle.shape)  # type: ignore[return-value]

    def as_dict(self) -> dict[str, np.ndarray]:
        """Every map by its schema name (:data:`napari_4dstem_rvae.schema.RVAE_MAPS`), stacks whole."""
        from ..schema import RVAE_MAPS

        return {name: getattr(self, name) for name in RVAE_MAPS if getattr(self, name, None) is not None}

    def planes(self) -> dict[str, np.ndarray]:
        """Every map as 2D planes: stacks split and named as the schema numbers them, from 1
        (``latent_1``, ``latent_1_std``, ``shift_x`` …)."""
        from ..schema import MAPS

        out = {}
        for name, values in self.as_dict().items():
            spec = MAPS[name]
            if spec.is_stack:
                out.update({spec.plane_name(i): plane for i, plane in enumerate(values)})
            else:
                out[name] = values
        return out


def model_device(model: RVAE) -> torch.device:
    return model.coords.device


def to_device(values: Any, device: torch.device) -> torch.Tensor:
    """float32 ``values`` (numpy or a CPU tensor) on ``device``; to a GPU through pinned host
    memory, asynchronously (the CPU goes on preparing the next batch while it travels)."""
    tensor = torch.as_tensor(np.asarray(values, dtype=np.float32)) if not torch.is_tensor(values) else values
    if tensor.device == device:
        return tensor
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


#: Patterns encoded per batch when none is given: GPUs want larger batches than CPUs (the
#: novelty's decoding holds batch × 4,096 pixels × hidden units: 2 GiB at 1,024 and 128).
ENCODE_BATCH = {"cpu": 256, "cuda": 1024}


def _batches(data: Any, batch_size: int, index: np.ndarray | None = None, bad: list | None = None,
             ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(flat indices, float32 patterns (n, n_det))`` batches over ``index`` (default: all positions).

    Patterns holding NaN or Inf are a ValueError naming the first, unless ``bad`` is a list:
    then they are replaced by zeros and their flat indices appended to it (maps over the whole
    scan mark them instead of stopping)."""
    patterns = as_patterns(data)
    nx = patterns.scan_shape[1]

    def checked(block: np.ndarray, flat: np.ndarray) -> np.ndarray:
        if bad is None:
            check_finite(block, 0, nx, flat)
            return block
        rows = ~np.isfinite(block).all(axis=1)
        if rows.any():
            bad.extend(int(i) for i in flat[rows])
            block = block.copy()
            block[rows] = 0
        return block

    if index is not None:
        index = np.asarray(index, dtype=np.int64)
        for start in range(0, index.size, batch_size):
            chunk = index[start:start + batch_size]
            yield chunk, checked(patterns.read(chunk), chunk)
        return
    if not patterns.is_lazy:
        for start in range(0, patterns.n_positions, batch_size):
            stop = min(patterns.n_positions, start + batch_size)
            flat = np.arange(start, stop)
            yield flat, checked(patterns.take(flat), flat)
        return
    for first, stop, block in patterns.iter_blocks():
        block = checked(block, np.arange(first, stop))
        for start in range(0, stop - first, batch_size):
            part = block[start:start + batch_size]
            yield np.arange(first + start, first + start + len(part)), part


def name_positions(flat: list[int] | np.ndarray, scan_x: int, most: int = 5) -> str:
    """``"(row 0, col 0), (row 5, col 7) and 3 more"`` for flat probe indices."""
    flat = sorted(int(i) for i in flat)
    named = ", ".join(f"(row {i // scan_x}, col {i % scan_x})" for i in flat[:most])
    return named + (f" and {len(flat) - most} more" if len(flat) > most else "")


@torch.no_grad()
def encode_patterns(model: RVAE, patterns: Any) -> dict[str, np.ndarray]:
    """Posterior parameters of patterns ``(B, det_y, det_x)`` (data units, as the training data).

    Returns numpy arrays: ``angle``, ``angle_std`` ``(B,)`` rad, ``angle_concentration``;
    ``z``, ``z_std`` ``(B, k)``;
    ``shift``, ``shift_std`` ``(B, 2)`` in pixels (x, y) when the model has shifts.
    """
    x = to_device(patterns, model_device(model))
    post = model.encode(model.flatten(x))
    if "angle_s" in post:  # projected normal
        concentration = circular.mean_resultant_length(post["angle_s"])
        angle_std = torch.sqrt(-2.0 * torch.log(concentration.clamp_min(1e-12)))
    else:
        angle_std = post["angle_log_std"].exp()
        concentration = torch.exp(-0.5 * angle_std**2)  # of the wrapped normal
    out = {"angle": post["angle"], "angle_std": angle_std, "angle_concentration": concentration,
           "z": post["z"], "z_std": post["z_log_std"].exp()}
    if "shift" in post:
        out["shift"] = post["shift"] * model.coord_scale
        out["shift_std"] = post["shift_log_std"].exp() * model.coord_scale
    return {key: value.float().cpu().numpy() for key, value in out.items()}


#: Detector pixels decoded per pattern for the novelty map (a fixed random subset when there
#: are more; the deviance is scaled to all pixels). Fewer pixels add noise to the score.
NOVELTY_PIXELS = 4096
#: At most this many residual values are kept for the novelty map (float32: 1 GiB).
NOVELTY_VALUES = 2**28
#: On a CPU, at most this many pixel values are decoded for the novelty map of one scan: each
#: costs the decoder's whole MLP (measured: 114,000 atom windows of 32 × 32 decoded in full took
#: 160 s on 2 threads, 5 × the encoding; a 128 × 128 scan binned to 32 × 32 stays whole).
NOVELTY_DECODED_CPU = 2**24


def novelty_pixels(model: RVAE, n_positions: int) -> torch.Tensor | None:
    """The detector pixels decoded for the novelty map of ``n_positions`` patterns (sorted
    indices, a fixed random subset; None: all): at most :data:`NOVELTY_PIXELS`, and fewer when
    the residuals of the whole scan would exceed :data:`NOVELTY_VALUES` values or, on a CPU,
    the decoding :data:`NOVELTY_DECODED_CPU` (measured at the study's scale of atom windows:
    128 of 1024 pixels changed the novelty's Si AUC from 0.869 to 0.860 and its AUC for
    under-coordinated carbon not at all, docs/performance.md)."""
    budget = NOVELTY_VALUES if model_device(model).type != "cpu" else min(NOVELTY_VALUES, NOVELTY_DECODED_CPU)
    if n_positions * model.n_pixels > budget:  # bounded memory / time for the residuals of large scans
        keep = max(64, budget // n_positions)
    elif model.n_pixels > NOVELTY_PIXELS:
        keep = NOVELTY_PIXELS
    else:
        return None
    pick = torch.randperm(model.n_pixels, generator=torch.Generator().manual_seed(0))[:keep]
    return torch.sort(pick).values


def encode_batch(model: RVAE, frames: np.ndarray, novelty: bool = False,
                 pixels: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """:func:`encode_patterns` of finite patterns ``(B, det_y, det_x)``, and with ``novelty``
    their standardised residuals at ``pixels`` (``"residuals"``, ``(B, P)``) and their sums
    over a grid of detector blocks (``"blocks"``, for the lattice novelty)."""
    device = model_device(model)
    x = to_device(frames, device)  # one transfer for the encoding and the residuals
    post = encode_patterns(model, x)
    if novelty:
        post["blocks"] = detector_blocks(frames)
        res = model.residuals(x, None if pixels is None else pixels.to(device))
        post["residuals"] = res.float().cpu().numpy()
    return post


def scan_step_angstrom(data: Any) -> float | None:
    """The scan step of ``data`` (Dataset4D or patterns) in Å (the smaller of y and x), or
    ``None`` when it is not calibrated in a length unit."""
    calibration = getattr(data, "calibration", None)
    if calibration is None or calibration.scan_step is None:
        return None
    factor = length_factor(calibration.scan_unit)
    return None if factor is None else factor * min(calibration.scan_step_yx)


def maps_from(values: dict[str, np.ndarray], scan_shape: tuple[int, int], model: RVAE, bad: Any = (),
              step_angstrom: float | None = None) -> LatentMaps:
    """The :class:`LatentMaps` of per-position values (the keys of :func:`encode_batch`, flat
    over the scan); positions in ``bad`` (their patterns held NaN/Inf) are NaN in every map and
    named in a warning. ``step_angstrom``: the scan step, for the novelty's pooling."""
    sy, sx = scan_shape
    n, k = sy * sx, model.config.latent_dim
    bad = np.asarray(bad, dtype=np.int64)
    if bad.size:
        for key in ("angle", "angle_std", "angle_concentration", "z", "z_std", "shift", "shift_std"):
            if key in values:
                values[key][bad] = np.nan
    novelty_map, reference = None, None
    keep = np.ones(n, bool)
    keep[bad] = False
    if "blocks" in values and keep.any():
        lattice = lattice_novelty(values["blocks"], (sy, sx), step_angstrom, counts=bool(model.count_data), valid=keep)
        if lattice is not None:
            novelty_map, reference = lattice.novelty.ravel(), "lattice"
    if novelty_map is None and "residuals" in values:
        novelty_map, reference = np.full(n, np.nan, np.float32), "model"
        if keep.any():
            novelty_map[keep] = novelty_scores(values["residuals"][keep])
    if bad.size:
        warnings.warn(f"{bad.size} pattern(s) hold NaN or Inf values, at {name_positions(bad, sx)}: "
                      "their map values are NaN (repair or exclude them)", stacklevel=3)
    symmetry = int(getattr(model.config, "angle_symmetry", 1))
    angle, shift, shift_std = values["angle"], values.get("shift"), values.get("shift_std")
    return LatentMaps(
        angle=angle.reshape(sy, sx), angle_std=values["angle_std"].reshape(sy, sx),
        latents=np.ascontiguousarray(values["z"].T.reshape(k, sy, sx)),
        latents_std=np.ascontiguousarray(values["z_std"].T.reshape(k, sy, sx)),
        shift=None if shift is None else np.ascontiguousarray(shift.T.reshape(2, sy, sx)),
        shift_std=None if shift_std is None else np.ascontiguousarray(shift_std.T.reshape(2, sy, sx)),
        angle_concentration=values["angle_concentration"].reshape(sy, sx),
        novelty=None if novelty_map is None else novelty_map.reshape(sy, sx),
        angle_symmetric=None if symmetry <= 1 else symmetric_angle(angle, symmetry).reshape(sy, sx),
        novelty_reference=reference,
    )


def encode(model: RVAE, data: Any, batch_size: int | None = None, novelty: bool = False,
           progress: Any = None) -> LatentMaps:
    """Encode every probe position of ``data`` (Dataset4D, numpy or dask, 4D) to maps.

    The model's detector shape must match the data's; data are streamed in batches of
    ``batch_size`` patterns (default :data:`ENCODE_BATCH` for the model's device; lazy data
    block of scan rows by block). ``novelty``: also the
    novelty map (each pattern decoded with its posterior means; costs about as much as the
    encoding again). ``progress(done, total)``: patterns encoded so far.
    """
    patterns = as_patterns(data)
    if patterns.det_shape != model.det_shape:
        raise ValueError(f"data have patterns of {patterns.det_shape} pixels; the model was trained on "
                         f"{model.det_shape}")
    if batch_size is None:
        batch_size = ENCODE_BATCH.get(model_device(model).type, ENCODE_BATCH["cpu"])
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    n = patterns.n_positions
    pixels = novelty_pixels(model, n) if novelty else None
    values: dict[str, np.ndarray] = {}
    was_training = model.training
    model.eval()
    bad: list[int] = []
    done = 0
    if progress is not None:
        progress(0, n)
    try:
        for index, block in _batches(patterns, batch_size, bad=bad):
            post = encode_batch(model, block.reshape(len(block), *patterns.det_shape), novelty, pixels)
            done += len(block)
            if progress is not None:
                progress(done, n)
            for key, value in post.items():
                if key not in values:
                    values[key] = np.empty((n, *value.shape[1:]), np.float32)
                values[key][index] = value
    finally:
        model.train(was_training)
    return maps_from(values, patterns.scan_shape, model, bad, scan_step_angstrom(patterns))


def novelty_scores(residuals: np.ndarray) -> np.ndarray:
    """The novelty of each pattern: the squared length of its standardised residual ``(n, P)``
    (what the model does not explain, in units of the noise — for counts the Pearson
    residuals, so the counting noise adds the same ≈ P ± √(2P) everywhere), as robust
    z-scores over the scan.

    Measured (benchmarks/bench_rvae_quality.py): patterns of another structure injected into
    a scan rank first; a single vacancy or dopant in graphene is only weakly marked, because
    the model's own misfit of the lattice patterns is of the same size (see the README). A
    projection of the residuals on their leading principal directions, which collects a
    coherent defect and drops the noise, works with an exact lattice model (contrast 25 at
    10⁵ e⁻) but not yet with the rVAE's reconstructions; it is not used.
    """
    r = np.asarray(residuals, np.float64)
    return robust_z((r * r).sum(1))


def symmetric_angle(angle: np.ndarray, n: int) -> np.ndarray:
    """The angle modulo 2π/n, in (−π/n, π/n]."""
    period = 2 * math.pi / n
    return (np.pi / n - np.mod(np.pi / n - np.asarray(angle), period)).astype(np.float32)


@torch.no_grad()
def decode(model: RVAE, latents: Any, angle: Any = 0.0, shift: Any = None) -> np.ndarray:
    """Decode content latents ``(B, k)`` at angles ``(B,)`` rad (counter-clockwise on screen)
    and shifts ``(B, 2)`` (x, y pixels) to patterns ``(B, det_y, det_x)`` in data units."""
    device = model_device(model)
    z = torch.as_tensor(np.atleast_2d(np.asarray(latents, dtype=np.float32)), device=device)
    if z.shape[1] != model.config.latent_dim:
        raise ValueError(f"latents must have {model.config.latent_dim} columns, got shape {tuple(z.shape)}")
    theta = torch.as_tensor(np.broadcast_to(np.asarray(angle, dtype=np.float32), (z.shape[0],)).copy(),
                            device=device)
    delta = None
    if shift is not None:
        delta = torch.as_tensor(np.broadcast_to(np.asarray(shift, dtype=np.float32), (z.shape[0], 2)).copy(),
                                device=device) / model.coord_scale
    out = []
    for start in range(0, z.shape[0], 64):  # bounded memory: 64 × pixels × hidden per chunk
        sl = slice(start, start + 64)
        out.append(model.unflatten(model.decode(z[sl], theta[sl], None if delta is None else delta[sl])))
    return torch.cat(out).float().cpu().numpy()


def reconstruct(model: RVAE, patterns: Any, pose: bool = True) -> np.ndarray:
    """Reconstruct patterns ``(B, det_y, det_x)`` (or one ``(det_y, det_x)``) from their posterior means.

    With ``pose=True`` each is decoded with its inferred angle (and shift); with ``False``
    in the canonical orientation (angle 0, no shift), which shows the content alone.
    """
    patterns = np.asarray(patterns, dtype=np.float32)
    single = patterns.ndim == 2
    if single:
        patterns = patterns[None]
    if patterns.shape[1:] != model.det_shape:
        raise ValueError(f"patterns have shape {patterns.shape[1:]}, the model expects {model.det_shape}")
    post = encode_patterns(model, patterns)
    if pose:
        out = decode(model, post["z"], post["angle"], post.get("shift"))
    else:
        out = decode(model, post["z"], 0.0, None)
    return out[0] if single else out


def reconstruct_positions(model: RVAE, data: Any, positions: Any, pose: bool = True) -> np.ndarray:
    """Reconstruct the patterns at probe positions ``[(row, col), ...]`` of ``data``."""
    patterns = as_patterns(data)
    positions = np.atleast_2d(np.asarray(positions, dtype=np.int64))
    sy, sx = patterns.scan_shape
    if positions.shape[1] != 2 or (positions < 0).any() or (positions[:, 0] >= sy).any() \
            or (positions[:, 1] >= sx).any():
        raise ValueError(f"positions must be (row, col) pairs inside the scan {patterns.scan_shape}")
    frames = patterns.read(positions[:, 0] * sx + positions[:, 1])
    return reconstruct(model, frames.reshape(-1, *patterns.det_shape), pose=pose)


def traverse(model: RVAE, n: int = 7, span: float = 2.0, latents: tuple[int, int] = (0, 1),
             center: Any = None, angle: float = 0.0) -> np.ndarray:
    """Decoded latent traversal: ``(n, n, det_y, det_x)`` patterns in data units.

    Latent ``latents[0]`` varies along the rows and ``latents[1]`` along the columns of the
    grid, each over ``[−span, span]`` (prior standard deviations) about ``center`` (default:
    zeros, length k); the other latents stay at ``center``. All at the same ``angle`` (rad).
    For a model with one content latent, the grid is ``(1, n, ...)``.
    """
    k = model.config.latent_dim
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}")
    base = np.zeros(k, np.float32) if center is None else np.asarray(center, dtype=np.float32)
    if base.shape != (k,):
        raise ValueError(f"center must have {k} values, got shape {base.shape}")
    values = np.linspace(-span, span, n, dtype=np.float32) if n > 1 else np.zeros(1, np.float32)
    if k == 1:
        grid = np.repeat(base[None], n, 0)
        grid[:, 0] += values
        return decode(model, grid, angle).reshape(1, n, *model.det_shape)
    i, j = latents
    if not (0 <= i < k and 0 <= j < k and i != j):
        raise ValueError(f"latents must be two different indices in [0, {k}), got {latents}")
    grid = np.repeat(base[None], n * n, 0)
    rows, cols = np.meshgrid(values, values, indexing="ij")
    grid[:, i] += rows.ravel()
    grid[:, j] += cols.ravel()
    return decode(model, grid, angle).reshape(n, n, *model.det_shape)


def wrap_angle(angle: Any) -> np.ndarray:
    """Angles wrapped to (−π, π]."""
    angle = np.asarray(angle)
    return np.pi - np.mod(np.pi - angle, 2 * math.pi)
