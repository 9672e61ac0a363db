"""The napari side of the plugin (the only code that imports napari, Qt or magicgui).

Manifest commands (``napari.yaml``): the reader (:mod:`.reader`), sample data
(:mod:`.sample_data`), writers (:mod:`.writers`) and the dock widgets — diffraction browser
(:mod:`.browser`), open (:mod:`.open_widget`), preprocess, COM, virtual detector and
train (``*_widget``). Widgets only translate between layers and the core: layer data from
and to the package's objects (:mod:`.layers`, :mod:`.regions`), fields from the core's
options objects (:mod:`.fields`), long work in thread workers (:mod:`.workers`).
"""
