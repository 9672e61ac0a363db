"""Centre of mass / DPC dock widget.

Choose the data set, the mask, the reference and the scan rotation (auto: exact curl
minimisation, or manual); the maps come back as layers aligned with the ADF image:
COM x and y, magnitude, angle (cyclic colormap), a colour-wheel composite of direction and
magnitude, divergence and curl. Re-running updates the layers by name. With a dask
scheduler address the pass runs on that cluster's workers (the status names its dashboard).
"""

from __future__ import annotations

from typing import Any

from magicgui.widgets import Container, Label, LineEdit, PushButton

from ..results.colours import colour_wheel, draw_wheel_legend, wheel_top
from ..schema import MAPS, map_names, resolve_unit
from ..workflows import COMOptions, COMRun, Done, Message, Progress
from .common import chosen_layer, dataset_combo, reveal
from .fields import OptionForm
from .layers import COM_KEY, ROLE_KEY, layer_name, map_layer_data, scan_geometry, upsert_layer
from .progress import ProgressBars
from .proxies import unwrap
from .workers import WorkerMixin, friendly_error, notify_error, notify_warning
from .plots import themed


def com_layer_data(com: Any, dataset: Any, extra: dict | None = None) -> list[tuple]:
    """Layer data of every COM map of ``com`` (a :class:`COMResult`) over ``dataset``: x, y,
    magnitude (mrad when the detector is calibrated), angle, divergence, curl and the colour
    wheel, named ``"<data set> COM …"``."""
    maps = com.maps()
    info = {**com.attributes(), **(extra or {})}
    scan = dataset.calibration.scan_unit if dataset.calibration.scan_step else None
    layers = []
    for name in map_names("com", shown=True):
        spec = MAPS[name]
        layers.append(map_layer_data(spec, maps[name], dataset, unit=resolve_unit(spec.unit, com.map_unit, scan),
                                     extra=info, layer_name=layer_name(spec.title, dataset.name)))
    for _, kwargs, _ in layers:
        kwargs["visible"] = False  # one map at a time over the ADF image: the colour wheel first
    top = wheel_top(maps["com_magnitude"])
    rgb = colour_wheel(maps["com_angle"], maps["com_magnitude"], top)
    meta = dict(layers[0][1]["metadata"])
    meta[ROLE_KEY] = {**meta[ROLE_KEY], "map": "com_colour_wheel", "map_kind": "rgb", "wheel_top": top,
                      "title": "COM colour wheel"}
    layers.append((rgb, {"name": layer_name("COM colour wheel", dataset.name), "rgb": True, "metadata": meta,
                         "opacity": 0.8, "blending": "translucent", **scan_geometry(dataset)}, "image"))
    return layers


class COMWidget(WorkerMixin, Container):
    @themed
    def __init__(self, napari_viewer: Any):
        super().__init__(labels=True)
        self.viewer = napari_viewer = unwrap(napari_viewer)
        self.layer = dataset_combo(napari_viewer)
        self.form = OptionForm(COMOptions)
        for widget in self.form.fields:
            setattr(self, widget.name, widget)
        self.scheduler = LineEdit(label="dask scheduler", value="")
        self.scheduler.tooltip = ("optional: the address of a dask.distributed scheduler (tcp://host:8786); the "
                                  "pass then runs on its workers, which must see the data set's file")
        self.run_button = PushButton(text="Compute COM")
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self.extend([self.layer, self.form, self.form.advanced, self.scheduler, self.run_button])
        self.native.layout().addWidget(self.status.native)  # full width, wrapped
        self._controls = [w for w in self if w is not self.status]
        self.mask.changed.connect(self._update_visibility)
        self.run_button.clicked.connect(self.run)
        self._update_visibility()
        self.last_result = None
        self.bars = ProgressBars()
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

    def options(self) -> COMOptions:
        """The :class:`COMOptions` the form describes."""
        return self.form.options()

    def run(self) -> Any:
        try:
            layer, dataset = chosen_layer(self.viewer, self.layer)
            options = self.options()
        except ValueError as exc:
            notify_error(str(exc))
            return None
        address = self.scheduler.value.strip() or None
        self.status.value = "computing …" if address is None else f"computing on {address} …"
        com_run = COMRun(dataset, options=options, client=address)

        def shown(event: Any) -> None:
            if isinstance(event, Progress):
                self.status.value = f"{event.stage}: {event.done}/{event.total} {event.unit}" + \
                    (f" on {event.where}" if event.where else "")
                self.bars.update(event)   # last: making a bar may deliver the next event first
            elif isinstance(event, Message):
                self.status.value = event.text
            elif isinstance(event, Done):
                self.bars.close()
                self._shown(layer, dataset, options, com_run)

        def failed(exc: BaseException) -> None:
            self.bars.close()
            self.status.value = "failed"
            notify_error(f"COM of '{dataset.name}' failed: {friendly_error(exc)}")

        return self.run_worker(com_run.events, controls=self._controls, on_yielded=shown, on_error=failed)

    @themed
    def _shown(self, layer: Any, dataset: Any, options: COMOptions, com_run: COMRun) -> None:
        com = self.last_result = com_run.result
        unwrap(layer).metadata[COM_KEY] = {"dataset": dataset, "options": options, "result": com}
        for item in com_layer_data(com, dataset, {"options": options.describe()}):
            upsert_layer(self.viewer, item)
        draw_wheel_legend(self.legend_figure, wheel_top(com.maps()["com_magnitude"]), com.map_unit)
        self.legend_canvas.setVisible(True)
        self.legend_canvas.draw_idle()
        reveal(self.legend_canvas)
        problem = com.rotation.problem if com.rotation is not None else None
        how = "given" if com.rotation is None else "calibrated" if problem is None else "fallback"
        self.status.value = (f"rotation {com.rotation_deg:.2f}° ({how}), flip {'yes' if com.flip else 'no'}, "
                             f"reference {com.reference}" + (f"; on {com_run.where}" if com_run.where else ""))
        if problem is not None:
            notify_warning(f"COM of '{dataset.name}': the automatic scan rotation is unreliable "
                           f"({problem}); 0° is used instead — set the rotation by hand if you know it.")
