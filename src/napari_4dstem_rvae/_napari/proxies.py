"""napari hands widgets opened from the Plugins menu a ``PublicOnlyProxy`` of the viewer, whose
layers, events and attributes come back proxied too (and so do this package's own objects,
whose module name starts with "napari"). Widgets unwrap the viewer once, at construction, so
that they behave exactly as when built directly with a plain viewer."""

from __future__ import annotations

from typing import Any


def unwrap(obj: Any) -> Any:
    """The object behind any number of napari proxies (the object itself if it is not one)."""
    try:
        from napari.utils._proxies import PublicOnlyProxy
    except ImportError:  # pragma: no cover - napari without proxies
        return obj
    while isinstance(obj, PublicOnlyProxy):
        obj = obj.__wrapped__
    return obj


def layer_kind(layer: Any) -> str:
    """``"shapes"``, ``"labels"``, ``"image"`` … of a layer, proxied or not."""
    layer = unwrap(layer)
    return str(getattr(layer, "_type_string", type(layer).__name__)).lower()
