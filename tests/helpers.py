"""Helpers the tests share (imported as ``helpers``; ``tests/`` is on pytest's path): the
plugin's name, clicking a real button and waiting for a dock's worker, small synthetic 4D data,
and the check that an import stays light."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

#: The plugin's name as napari knows it (npe2 manifest).
PLUGIN = "napari-4dstem-rvae"


# -- clicks and workers ------------------------------------------------------------------------
def click(qtbot, button) -> None:
    """A left click on a magicgui button, as a user's."""
    from qtpy.QtCore import Qt

    qtbot.mouseClick(button.native, Qt.MouseButton.LeftButton)


def click_enabled(qtbot, button) -> None:
    """:func:`click`, after checking the button is enabled: a user could not click a disabled
    one, and Qt would swallow the click silently."""
    assert button.enabled, f"button {button.text!r} is disabled"
    click(qtbot, button)


def wait_for_worker(qtbot, widget, timeout: int = 120_000) -> None:
    """Wait until the widget's current worker has finished (its callbacks have run)."""
    qtbot.waitUntil(lambda: widget.worker is not None and widget.worker.done, timeout=timeout)
    qtbot.wait(20)


# -- synthetic data ---------------------------------------------------------------------------
def soft_disk(det_shape, center, radius, supersample: int = 8) -> np.ndarray:
    """A disk, each pixel weighted by the fraction of it inside (supersampled)."""
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    rows = np.arange(det_shape[0])[:, None, None, None] + offsets[None, None, :, None]
    cols = np.arange(det_shape[1])[None, :, None, None] + offsets[None, None, None, :]
    inside = (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius**2
    return inside.mean(axis=(2, 3))


def shifted_disks(ny: int = 8, nx: int = 9, k: int = 32, radius: float = 6.0, seed: int = 0,
                  scale: float = 1000.0) -> tuple[np.ndarray, np.ndarray]:
    """A 4D scan of bright-field disks whose centres move by known amounts: (data float32
    (ny, nx, k, k), centres (ny, nx, 2))."""
    rng = np.random.default_rng(seed)
    centres = (k - 1) / 2 + rng.uniform(-2, 2, size=(ny, nx, 2))
    data = np.empty((ny, nx, k, k), np.float32)
    for i in range(ny):
        for j in range(nx):
            data[i, j] = scale * soft_disk((k, k), centres[i, j], radius, supersample=4)
    return data, centres


def cube(shape=(3, 4, 6, 8), dtype=np.uint16, start: int = 0) -> np.ndarray:
    """Distinct values along every axis (modulo the dtype's range for small types)."""
    n = int(np.prod(shape))
    values = np.arange(start, start + n) % (256 if np.dtype(dtype).itemsize == 1 else 60001)
    return values.astype(dtype).reshape(shape)


# -- imports ----------------------------------------------------------------------------------
def loaded_after_import(module: str, watched) -> set[str]:
    """Which of ``watched`` (top-level package names) a fresh process has loaded after
    ``import module``."""
    code = (f"import sys, {module}; "
            f"print(','.join(m for m in {tuple(watched)!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    return set(out.split(",")) - {""}
