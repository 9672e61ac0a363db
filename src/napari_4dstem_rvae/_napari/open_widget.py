"""'Open 4D-STEM file' widget: what a file name alone cannot decide.

Which 4D dataset of an HDF5 file or zarr store to open, and the layout of a raw binary
file (scan and detector shape, dtype, header/footer bytes, endianness).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton, SpinBox

from .calibration import CalibrationFields
from .proxies import unwrap

DTYPES = ["uint8", "uint16", "uint32", "int8", "int16", "int32", "float32", "float64"]


class OpenWidget(Container):
    def __init__(self, napari_viewer: Any):
        super().__init__(labels=True)
        self.viewer = napari_viewer = unwrap(napari_viewer)
        self.path = FileEdit(label="file", mode="r", filter="*")
        self.dataset = ComboBox(label="dataset", choices=[], nullable=True)
        self.scan_y = SpinBox(label="scan rows", min=0, max=1_000_000, value=0)
        self.scan_x = SpinBox(label="scan cols", min=0, max=1_000_000, value=0)
        self.det_y = SpinBox(label="detector rows", min=0, max=100_000, value=0)
        self.det_x = SpinBox(label="detector cols", min=0, max=100_000, value=0)
        self.dtype = ComboBox(label="dtype (raw)", choices=DTYPES, value="uint16")
        self.byteorder = ComboBox(label="byte order (raw)", choices=["little", "big"], value="little")
        self.file_header = SpinBox(label="file header bytes", min=0, max=2**31 - 1, value=0)
        self.frame_header = SpinBox(label="frame header bytes", min=0, max=2**31 - 1, value=0)
        self.frame_footer = SpinBox(label="frame footer bytes", min=0, max=2**31 - 1, value=0)
        self.open_button = PushButton(text="Open")
        self.status = Label(value="")
        self.raw = Container(widgets=[self.det_y, self.det_x, self.dtype, self.byteorder, self.file_header,
                                      self.frame_header, self.frame_footer], labels=True)
        self.calibration = CalibrationFields()
        self.extend([self.path, self.dataset, self.scan_y, self.scan_x])
        from superqt import QCollapsible

        self.raw_section = QCollapsible("Raw binary layout")
        self.raw_section.addWidget(self.raw.native)
        self.calibration_section = QCollapsible("Calibration (overrides the file)")
        self.calibration_section.addWidget(self.calibration.native)
        layout = self.native.layout()
        layout.addWidget(self.raw_section)
        layout.addWidget(self.calibration_section)
        layout.addWidget(self.open_button.native)
        layout.addWidget(self.status.native)
        self.status.native.setWordWrap(True)
        self.path.changed.connect(self._path_changed)
        self.open_button.clicked.connect(self.open)

    def _path_changed(self, *_: Any) -> None:
        from ..workflows import detect_format, list_datasets

        path = str(self.path.value)
        fmt = detect_format(path) if Path(path).exists() else None
        choices: list[str] = []
        if fmt in ("hdf5", "zarr"):
            try:
                choices = [name for name, shape in list_datasets(path, (3, 4))]
            except Exception as exc:  # listing is a convenience: report, keep the form usable
                self.status.value = str(exc)
        self.dataset.choices = choices
        self.dataset.value = choices[0] if choices else None
        self.status.value = {None: "Unknown type: give the raw binary layout.",
                             "raw": "Raw binary: give its layout."}.get(fmt, f"Format: {fmt}")
        if fmt in (None, "raw"):
            self.raw_section.expand(animate=False)

    def options(self) -> dict[str, Any]:
        """Reader options from the form (zeros mean 'not given')."""
        from ..workflows import detect_format

        path = str(self.path.value)
        options: dict[str, Any] = {}
        if self.dataset.value:
            options["dataset"] = self.dataset.value
        if self.scan_y.value and self.scan_x.value:
            options["scan_shape"] = (self.scan_y.value, self.scan_x.value)
        options.update(self.calibration.given())
        if detect_format(path) in (None, "raw"):
            options.update(
                format="raw", det_shape=(self.det_y.value, self.det_x.value), dtype=self.dtype.value,
                byteorder="<" if self.byteorder.value == "little" else ">",
                file_header_bytes=self.file_header.value, frame_header_bytes=self.frame_header.value,
                frame_footer_bytes=self.frame_footer.value)
        return options

    def open(self) -> list:
        """Read the file with the chosen options and add its real-space layer."""
        from ..workflows import ReadError, read
        from .reader import layer_data_for
        from .workers import warnings_as_notifications

        path = str(self.path.value)
        try:
            dataset = warnings_as_notifications(read, path, **self.options())
        except ReadError as exc:
            self._error(str(exc))
            return []
        except Exception as exc:
            self._error(f"{path}: could not be read ({type(exc).__name__}: {exc})")
            return []
        added = []
        for item in layer_data_for(dataset):
            data, kwargs, _ = item
            added.append(self.viewer.add_image(data, **kwargs))
        self.status.value = f"Opened {dataset.name}: {dataset.shape}" if added else self.status.value
        return added

    def _error(self, message: str) -> None:
        from napari.utils.notifications import show_error

        self.status.value = message
        show_error(message)

