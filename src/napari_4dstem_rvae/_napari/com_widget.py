"""Centre of mass / DPC dock widget.

Choose the data set, the mask, the reference and the scan rotation (auto: exact curl
minimisation, or manual); the maps come back as layers aligned with the ADF image:
COM x and y, magnitude, angle (cyclic colormap), a colour-wheel composite of direction and
magnitude, divergence and curl. Re-running updates the layers by name. With a dask
scheduler address the pass runs on that cluster's workers (the status names its dashboard).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
)

from ..processing.com import MASKS, REFERENCES, COMOptions
from ..processing.virtual import RADIUS_UNITS
from ..schema import MAPS, resolve_unit
from .common import chosen_layer, dataset_combo, reveal
from .fields import option_field, options_from
from .layers import ROLE_KEY, map_layer_data, scan_geometry, upsert_layer
from .proxies import unwrap
from .workers import WorkerMixin, friendly_error, notify_error, notify_warning


def colour_wheel(angle: np.ndarray, magnitude: np.ndarray, top: float | None = None) -> np.ndarray:
    """RGB (scan_y, scan_x, 3) in [0, 1]: hue = direction, value = magnitude / ``top`` (default:
    its 99th percentile)."""
    from matplotlib.colors import hsv_to_rgb

    hue = (np.mod(angle, 2 * np.pi)) / (2 * np.pi)
    if top is None:
        top = wheel_top(magnitude)
    value = np.clip(magnitude / (top if top > 0 else 1.0), 0, 1)
    hsv = np.stack([hue, np.ones_like(hue), value], axis=-1)
    return hsv_to_rgb(np.nan_to_num(hsv)).astype(np.float32)


def wheel_top(magnitude: np.ndarray) -> float:
    """The magnitude shown at full brightness: the 99th percentile (one hot pixel does not
    darken the whole map)."""
    finite = magnitude[np.isfinite(magnitude)]
    return float(np.percentile(finite, 99)) if finite.size else 1.0


def draw_wheel_legend(figure: Any, top: float, unit: str) -> None:
    """The colour-wheel key: direction as hue (x to the right, y down, as on the canvas),
    magnitude as brightness from 0 to ``top`` ``unit``."""
    figure.clear()
    ax = figure.add_subplot(111)
    n = 128
    yy, xx = np.mgrid[-1:1:n * 1j, -1:1:n * 1j]
    radius = np.hypot(xx, yy)
    rgb = colour_wheel(np.arctan2(yy, xx), radius, top=1.0)
    rgba = np.concatenate([rgb, (radius <= 1)[..., None].astype(np.float32)], axis=-1)
    ax.imshow(rgba, extent=(-1, 1, 1, -1), interpolation="bilinear")
    ax.annotate("", xy=(1.25, 0), xytext=(0, 0), arrowprops={"arrowstyle": "->", "color": "0.6"})
    ax.annotate("", xy=(0, 1.25), xytext=(0, 0), arrowprops={"arrowstyle": "->", "color": "0.6"})
    ax.text(1.3, 0, "+x", va="center", fontsize=8, color="0.6")
    ax.text(0, 1.35, "+y", ha="center", va="top", fontsize=8, color="0.6")
    ax.set_xlim(-1.5, 1.6)
    ax.set_ylim(1.7, -1.3)   # room below for the +y label
    ax.set_axis_off()
    ax.set_title(f"colour wheel: hue = direction,\nbrightness = magnitude 0–{top:.3g} {unit}", fontsize=8)


def com_layer_data(com: Any, dataset: Any, extra: dict | None = None) -> list[tuple]:
    """Layer data of every COM map of ``com`` (a :class:`COMResult`) over ``dataset``: x, y,
    magnitude (mrad when the detector is calibrated), angle, divergence, curl and the colour
    wheel, named ``"<data set> COM …"``."""
    maps = com.maps()
    info = {**com.attributes(), **(extra or {})}
    scan = dataset.calibration.scan_unit if dataset.calibration.scan_step else None
    layers = []
    for name in ("com_x", "com_y", "com_magnitude", "com_angle", "com_divergence", "com_curl"):
        spec = MAPS[name]
        layers.append(map_layer_data(spec, maps[name], dataset, unit=resolve_unit(spec.unit, com.map_unit, scan),
                                     extra=info, layer_name=f"{dataset.name} {spec.title}"))
    for _, kwargs, _ in layers:
        kwargs["visible"] = False  # one map at a time over the ADF image: the colour wheel first
    top = wheel_top(maps["com_magnitude"])
    rgb = colour_wheel(maps["com_angle"], maps["com_magnitude"], top)
    meta = dict(layers[0][1]["metadata"])
    meta[ROLE_KEY] = {**meta[ROLE_KEY], "map": "com_colour_wheel", "map_kind": "rgb", "wheel_top": top,
                      "title": "COM colour wheel"}
    layers.append((rgb, {"name": f"{dataset.name} COM colour wheel", "rgb": True, "metadata": meta,
                         "opacity": 0.8, "blending": "translucent", **scan_geometry(dataset)}, "image"))
    return layers


class COMWidget(WorkerMixin, Container):
    def __init__(self, napari_viewer: Any):
        super().__init__(labels=True)
        self.viewer = napari_viewer = unwrap(napari_viewer)
        self.layer = dataset_combo(napari_viewer)
        self.mask = option_field(COMOptions, "mask", choices=MASKS)
        self.unit = option_field(COMOptions, "unit", "radius unit", choices=RADIUS_UNITS,
                                 tooltip="bf: multiples of the bright-field disk radius")
        self.radius = option_field(COMOptions, "radius", "disk radius (0 = 1.2 bf)", minimum=0.0, maximum=1e4)
        self.inner = option_field(COMOptions, "inner", "annulus inner (0 = 1.25 bf)", minimum=0.0, maximum=1e4)
        self.outer = option_field(COMOptions, "outer", "annulus outer (0 = edge)", minimum=0.0, maximum=1e4)
        self.threshold = option_field(COMOptions, "threshold", "threshold (× max)", minimum=0.0,
                                      maximum=0.99, step=0.05)
        self.reference = option_field(COMOptions, "reference", choices=REFERENCES)
        self.auto_rotation = CheckBox(label="auto rotation (min curl)", value=COMOptions.rotation == "auto")
        self.rotation = FloatSpinBox(label="rotation (deg)", value=0.0, min=-360, max=360, step=1)
        self.flip = ComboBox(label="flip", choices=["auto", "no", "yes"], value="auto")
        self.scheduler = LineEdit(label="dask scheduler", value="")
        self.scheduler.tooltip = ("optional: the address of a dask.distributed scheduler (tcp://host:8786); the "
                                  "pass then runs on its workers, which must see the data set's file")
        self.run_button = PushButton(text="Compute COM")
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self._option_fields = [self.mask, self.unit, self.radius, self.inner, self.outer, self.threshold,
                               self.reference]
        self.extend([self.layer, *self._option_fields, self.auto_rotation, self.rotation, self.flip,
                     self.scheduler, self.run_button])
        self.native.layout().addWidget(self.status.native)  # full width, wrapped
        self._controls = [w for w in self if w is not self.status]
        self.mask.changed.connect(self._update_visibility)
        self.auto_rotation.changed.connect(self._update_visibility)
        self.run_button.clicked.connect(self.run)
        self._update_visibility()
        self.last_result = None
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.legend_figure = Figure(figsize=(2.6, 2.2), layout="constrained")
        self.legend_canvas = FigureCanvasQTAgg(self.legend_figure)
        self.legend_canvas.setFixedHeight(215)
        self.legend_canvas.setVisible(False)
        self.native.layout().addWidget(self.legend_canvas)

    def _update_visibility(self, *_: Any) -> None:
        self.radius.visible = self.mask.value == "disk"
        self.inner.visible = self.outer.visible = self.mask.value == "annulus"
        self.unit.visible = self.mask.value != "whole"
        self.rotation.visible = not self.auto_rotation.value

    def options(self) -> COMOptions:
        """The :class:`COMOptions` the form describes."""
        return options_from(COMOptions, self._option_fields,
                            rotation="auto" if self.auto_rotation.value else float(self.rotation.value),
                            flip={"auto": "auto", "no": False, "yes": True}[self.flip.value])

    def run(self):
        from ..processing import compute_com

        try:
            _, dataset = chosen_layer(self.viewer, self.layer)
        except ValueError as exc:
            notify_error(str(exc))
            return None
        options = self.options()
        address = self.scheduler.value.strip() or None
        self.status.value = "computing …" if address is None else f"computing on {address} …"
        cluster = {}

        def on_cluster(report):
            from ..pipeline import connect_scheduler

            with connect_scheduler(address, "dask scheduler", timeout=10) as client:
                cluster["dashboard"] = client.dashboard_link
                return compute_com(dataset, options, client=client, progress=report)

        def work():
            if address is None:
                return compute_com(dataset, options)
            # the pass runs in a helper thread; this generator hands its task counts to the Qt
            # side as they come (the status line follows the cluster's tasks)
            import queue
            from concurrent.futures import ThreadPoolExecutor

            counts: queue.Queue = queue.Queue()
            with ThreadPoolExecutor(1) as pool:
                future = pool.submit(on_cluster, lambda done, total: counts.put((done, total)))
                while not (future.done() and counts.empty()):
                    try:
                        yield counts.get(timeout=0.1)
                    except queue.Empty:
                        pass
                return future.result()

        def tasks(count):
            done, total = count
            self.status.value = (f"computing on {address} (dashboard {cluster.get('dashboard')}): "
                                 f"{done}/{total} tasks")

        def done(com):
            self.last_result = com
            for item in com_layer_data(com, dataset, {"options": options.describe()}):
                upsert_layer(self.viewer, item)
            draw_wheel_legend(self.legend_figure, wheel_top(com.maps()["com_magnitude"]), com.map_unit)
            self.legend_canvas.setVisible(True)
            self.legend_canvas.draw_idle()
            reveal(self.legend_canvas)
            problem = com.rotation.problem if com.rotation is not None else None
            how = "given" if com.rotation is None else "calibrated" if problem is None else "fallback"
            self.status.value = (f"rotation {com.rotation_deg:.2f}° ({how}), flip {'yes' if com.flip else 'no'}, "
                                 f"reference {com.reference}"
                                 + (f"; on {address} (dashboard {cluster.get('dashboard')})" if address else ""))
            if problem is not None:
                notify_warning(f"COM of '{dataset.name}': the automatic scan rotation is unreliable "
                               f"({problem}); 0° is used instead — set the rotation by hand if you know it.")

        def failed(exc):
            self.status.value = "failed"
            notify_error(f"COM of '{dataset.name}' failed: {friendly_error(exc)}")

        return self.run_worker(work, controls=self._controls, on_yielded=tasks,
                               on_returned=done, on_error=failed)
