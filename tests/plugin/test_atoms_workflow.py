"""The atom-resolved workflow through the Plugins menu: the sample series, Find atoms, Train,
the Points layer with per-atom features aligned with the image, the histogram dock with one
curve per frame; every step twice (layers updated by name, not piled up)."""

import numpy as np
import pytest
from helpers import PLUGIN, click, wait_for_worker

#: Finding atoms and training on the series can take minutes on a loaded machine.
TIMEOUT_MS = 240_000


#: Frames of the user's movie in the UI test (every step runs twice on it).
FRAMES = 3


def imagej_movie(path, n_frames: int, shape: tuple[int, int]):
    """A simulated movie at 0.16 Å per pixel written as an ImageJ TIFF (pixel size in its tags)."""
    import tifffile

    from napari_4dstem_rvae.simulate.haadf import haadf_series

    series, _ = haadf_series(n_frames=n_frames, shape=shape)
    tifffile.imwrite(path, series.data, imagej=True, resolution=(1 / 0.016, 1 / 0.016),
                     metadata={"unit": "nm", "axes": "TYX"})
    return path


def atoms_tab(viewer, monkeypatch):
    """The Atoms tab of the plugin's dock and the list its error notifications go to."""
    import napari_4dstem_rvae._napari.atoms_widget as aw

    messages = []
    monkeypatch.setattr(aw, "notify_error", messages.append)
    dock = viewer.window.add_plugin_dock_widget(PLUGIN, "4D-STEM analysis")[1]
    dock.show_tab("Atoms")
    return dock.atoms, messages


@pytest.fixture
def atoms_setup(make_napari_viewer, monkeypatch):
    viewer = make_napari_viewer()
    image = viewer.open_sample(PLUGIN, "haadf_series")[0]
    return (viewer, image, *atoms_tab(viewer, monkeypatch))


@pytest.fixture
def movie_setup(make_napari_viewer, monkeypatch, tmp_path):
    """A user's own movie: 3 frames of 192 × 192 px at 0.16 Å in an ImageJ TIFF, opened through
    the plugin (a quarter of the sample's field and half its frames: every step runs twice)."""
    path = imagej_movie(tmp_path / "movie.tif", FRAMES, (192, 192))
    viewer = make_napari_viewer()
    image = viewer.open(str(path), plugin=PLUGIN)[0]
    return (viewer, image, *atoms_tab(viewer, monkeypatch))


@pytest.mark.slow
def test_find_train_points_and_histograms_twice(movie_setup, qtbot):
    from napari_4dstem_rvae._napari.atoms_widget import HISTOGRAM_DOCK

    viewer, image, widget, messages = movie_setup
    assert widget.layer.value == image.name
    dock = widget.native.parent()
    while dock is not None and not hasattr(dock, "browser"):
        dock = dock.parent()
    assert dock is not None and dock.browser.isHidden()      # no diffraction pattern for a series
    dock.show_tab("Train")
    assert not dock.browser.isHidden()
    dock.show_tab("Atoms")
    widget.epochs.value = 1
    for round_ in range(2):
        if round_ == 1:      # the second round reads the angle from the encoder (Advanced: *angle from*)
            widget.form.angle_from.value = "encoder"
        click(qtbot, widget.find_button)
        wait_for_worker(qtbot, widget, TIMEOUT_MS)
        assert not messages, messages
        points = viewer.layers[f"{image.name} atoms"]
        n_found = len(points.data)
        assert n_found > FRAMES * 250                   # ~350 atoms per frame
        np.testing.assert_allclose(points.scale, image.scale)
        np.testing.assert_allclose(points.translate, image.translate)
        # the points sit on bright atoms of the image (frame, y, x in the same pixel grid)
        frame0 = np.asarray(image.data[0])
        at = np.round(points.data[points.data[:, 0] == 0][:, 1:]).astype(int)
        assert frame0[at[:, 0], at[:, 1]].mean() > np.percentile(frame0, 90)
        click(qtbot, widget.train_button)
        wait_for_worker(qtbot, widget, TIMEOUT_MS)
        assert not messages, messages
        features = points.features
        if round_ == 1:      # the encoder's angle asked for: the decoder is not read
            assert "angle_from" not in widget.atom_run.result.windows_note
        assert widget.atom_run.options.angle_from == ("encoder" if round_ else "auto")
        # the seed and the latent size left at their defaults are not the user's choice (as on the
        # command line): the split retry may train with one latent
        assert "seed" not in widget.atom_run.rvae and "latent_dim" not in widget.atom_run.rvae
        latents = widget.atom_run.result.config.latent_dim
        for column in ("angle", "angle mod 120°", "latent_1", "shift_x", "novelty", "missing_neighbour",
                       "centre_excess", "class", "pca_1", "gmm_cluster") + (("latent_2",) if latents > 1 else ()):
            assert column in features, column
        has = features["has_window"].to_numpy()
        assert np.isfinite(features["angle"].to_numpy()[has]).all() and has.sum() > 0.8 * n_found
        widget.colour_by.value = "latent_1"
        assert points.face_color.shape == (n_found, 4)
        assert sum(1 for layer in viewer.layers if layer.name == f"{image.name} atoms") == 1
        docks = [name for name in viewer.window.dock_widgets if name == HISTOGRAM_DOCK]
        assert len(docks) == 1
        plot = widget._histograms
        assert len(plot.curves["angle mod 120° (°)"]) == FRAMES   # one curve per frame
        assert len(plot.scatter.get_offsets()) == has.sum()   # the latent space: every window
        # the colours' key: a colour bar of the chosen feature over its range (none for categories)
        latent = features["latent_1"].to_numpy()[has]
        norm = plot.colour_bar.mappable.norm
        assert plot.colour_bar.ax.get_ylabel() == "latent_1"
        assert norm.vmin <= np.percentile(latent, 5) and norm.vmax >= np.percentile(latent, 95)
        widget.colour_by.value = "class"
        assert plot.colour_bar is None
        widget.colour_by.value = "missing_neighbour"
        assert plot.colour_bar.ax.get_ylabel() == "missing_neighbour"
        assert plot.traversal.shape == ((5 * 33 - 1) if latents > 1 else 32, 5 * 33 - 1)
        assert np.isfinite(plot.traversal).any()
        # the atoms followed over the frames: a Tracks layer aligned with the points and the image
        tracks = viewer.layers[f"{image.name} tracks"]
        assert tracks._type_string == "tracks"
        np.testing.assert_allclose(tracks.scale, image.scale)
        np.testing.assert_allclose(tracks.translate, image.translate)
        assert set(tracks.data[:, 1].astype(int)) == set(range(FRAMES))             # every frame
        on_points = {tuple(p) for p in np.round(points.data, 6)}
        assert {tuple(v) for v in np.round(tracks.data[:, 1:], 6)} <= on_points   # the vertices are atoms
        assert {"class", "lifetime", "mean angle"} <= set(tracks.features.columns)
        # the dynamics: per-frame curves (atoms, tracks begun and ended, dopant hops)
        assert len(plot.dynamics_lines["atoms"].get_xdata()) == FRAMES
        np.testing.assert_array_equal(plot.dynamics_lines["atoms"].get_ydata(),
                                      np.bincount(points.data[:, 0].astype(int), minlength=FRAMES))
    assert len(viewer.layers) == 3                 # the series, its atoms and their tracks, nothing piled up


def test_points_layer_by_hand_and_no_atoms(atoms_setup, qtbot, tmp_path):
    viewer, image, widget, messages = atoms_setup
    # a hand-made Points layer (world coordinates, as napari's tools make it)
    pixel = image.scale[-1]
    marks = viewer.add_points(np.array([[0, 40 * pixel, 50 * pixel], [1, 100 * pixel, 120 * pixel]]), name="mine")
    widget.method.value = "points"
    widget.points_layer.value = "mine"
    click(qtbot, widget.find_button)
    wait_for_worker(qtbot, widget, TIMEOUT_MS)
    points = viewer.layers[f"{image.name} atoms"]
    np.testing.assert_allclose(points.data[:, 1:], [[40, 50], [100, 120]], atol=1e-6)
    # an empty image: no atoms, one sentence, nothing added
    viewer.add_image(np.zeros((64, 64), np.float32), name="blank")
    widget.layer.value = "blank"
    widget.method.value = "log"
    click(qtbot, widget.find_button)
    wait_for_worker(qtbot, widget, TIMEOUT_MS)
    assert "blank atoms" not in viewer.layers
    del marks


def test_tiff_series_and_atom_results_open_through_the_plugin(make_napari_viewer, tmp_path):
    from napari_4dstem_rvae.cli import main

    path = imagej_movie(tmp_path / "movie.tif", 2, (128, 128))
    viewer = make_napari_viewer()
    image = viewer.open(str(path), plugin=PLUGIN)[0]
    assert image.data.shape == (2, 128, 128)
    np.testing.assert_allclose(image.scale[-2:], [0.16, 0.16])  # Å per pixel, from the ImageJ tags
    assert main(["atoms", str(path), "--epochs", "1", "--window", "4Å", "--threads", "1",
                 "--out", str(tmp_path / "atoms.h5")]) == 0
    viewer.open(str(tmp_path / "atoms.h5"), plugin=PLUGIN)
    points = viewer.layers["atoms atoms"]
    assert points.data.shape[1] == 3 and len(points.data) > 100
    np.testing.assert_allclose(points.scale[-2:], image.scale[-2:])
    assert "latent_1" in points.features and "angle mod 120°" in points.features


def test_unet_choice_in_the_dock(atoms_setup, qtbot):
    viewer, image, widget, messages = atoms_setup
    widget.method.value = "unet"
    for _ in range(2):
        click(qtbot, widget.find_button)
        wait_for_worker(qtbot, widget, TIMEOUT_MS)
        assert not messages, messages
        points = viewer.layers[f"{image.name} atoms"]
        assert len(points.data) > 6 * 1000
        names = points.features["class name"]
        assert set(names) <= {"C", "Si"} and (names == "Si").any()
    assert [layer._type_string for layer in viewer.layers] == ["image", "points", "tracks"]


def test_histogram_dock_with_one_latent(qtbot):
    """A run the split retry kept with one latent: the latent space shows latent 1 against the
    angle, with the colours' key, and the decoded windows as one row."""
    import warnings

    from napari_4dstem_rvae._napari.atom_plots import FrameHistograms
    from napari_4dstem_rvae.simulate.haadf import haadf_series
    from napari_4dstem_rvae.workflows.atoms import AtomOptions, AtomRun

    series, _ = haadf_series(n_frames=2, shape=(96, 96), seed=3)
    run = AtomRun(series, options=AtomOptions(pixels=16, edge="drop"),
                  rvae={"epochs": 1, "threads": 1, "latent_dim": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in run.events():
            pass
    plot = FrameHistograms()
    qtbot.addWidget(plot)
    plot.show_result(run.result, series.n_frames, "latent_1")
    has = run.result.columns()["has_window"]
    assert len(plot.scatter.get_offsets()) == has.sum()
    assert plot.scatter_axes.get_ylabel() == "angle mod 120° (°)"
    assert plot.colour_bar.ax.get_ylabel() == "latent_1"
    assert plot.traversal.shape[0] < plot.traversal.shape[1] / 2       # a row of decoded windows
