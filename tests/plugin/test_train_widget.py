"""End-to-end: sample → rectangle → background training → angle/latent layers over the ADF."""

import numpy as np
import pytest
from helpers import PLUGIN, click, wait_for_worker

from napari_4dstem_rvae._napari.layers import find_dataset
from napari_4dstem_rvae._napari.regions import region_mask


@pytest.fixture
def trained_setup(make_napari_viewer, monkeypatch):
    import napari_4dstem_rvae._napari.train_widget as tw

    messages = []
    monkeypatch.setattr(tw, "notify_error", messages.append)
    viewer = make_napari_viewer()
    adf = viewer.open_sample(PLUGIN, "graphene_vacancy")[0]
    ds = find_dataset(adf)
    sy, sx = ds.calibration.scan_step_yx
    # rectangle over scan rows 4..15 and cols 6..19, in world coordinates (Å)
    rect = np.array([[4 * sy, 6 * sx], [4 * sy, 19 * sx], [15 * sy, 19 * sx], [15 * sy, 6 * sx]])
    shapes = viewer.add_shapes([rect], shape_type="rectangle", name="region")
    widget = viewer.window.add_plugin_dock_widget(PLUGIN, "4D-STEM analysis")[1].train
    widget.layer.value = adf.name
    widget.region.value = "region"
    widget.epochs.value = 3
    widget.batch_size.value = 32
    widget.threads.value = 1
    return viewer, adf, ds, shapes, widget, messages


@pytest.mark.slow
def test_training_in_region_gives_aligned_maps(trained_setup, qtbot):
    viewer, adf, ds, shapes, widget, messages = trained_setup
    mask = region_mask(shapes, ds)
    assert mask.sum() == 12 * 14
    assert widget.count.value.startswith(f"{12 * 14} of {32 * 32}")
    click(qtbot, widget.start_button)
    assert not widget.start_button.enabled and widget.stop_button.enabled  # parameters locked while running
    wait_for_worker(qtbot, widget)
    assert not messages, messages
    names = [f"rVAE angle · {ds.name}", f"rVAE latent 1 · {ds.name}", f"rVAE latent 2 · {ds.name}"]
    for name in names:
        layer = viewer.layers[name]
        assert layer.data.shape == ds.scan_shape
        np.testing.assert_allclose(layer.scale, adf.scale)
        np.testing.assert_allclose(layer.translate, adf.translate)
        assert np.isfinite(layer.data).all()
    assert viewer.layers[names[0]].colormap.name == "twilight_shifted"
    assert np.abs(viewer.layers[names[0]].data).max() <= 180.0 + 1e-3  # degrees
    # only positions inside the rectangle were used (train and test split)
    trainer = widget.session.trainer
    used = set(trainer.train_index.tolist()) | set(trainer.test_index.tolist())
    assert used == set(np.flatnonzero(mask.ravel()).tolist())
    assert widget.session.epochs_done == 3
    assert widget.start_button.enabled and not widget.stop_button.enabled
    assert viewer.layers[names[1]].metadata["napari_4dstem_rvae"]["epoch"] == 3


def test_stop_mid_training_then_resume(trained_setup, qtbot):
    viewer, adf, ds, shapes, widget, messages = trained_setup
    widget.epochs.value = 500
    click(qtbot, widget.start_button)
    qtbot.waitUntil(lambda: widget.session is not None and widget.session.epochs_done >= 1, timeout=60000)
    click(qtbot, widget.stop_button)
    wait_for_worker(qtbot, widget, timeout=60000)  # stops within the current step (no wall time asserted)
    done = widget.session.epochs_done
    assert 1 <= done < 500
    assert widget.resume_button.enabled and widget.start_button.enabled
    assert f"rVAE angle · {ds.name}" in viewer.layers  # the partial model's maps are shown
    state = {k: v.clone() for k, v in widget.session.trainer.model.state_dict().items()}
    click(qtbot, widget.resume_button)
    qtbot.waitUntil(lambda: widget.session.epochs_done >= done + 1, timeout=60000)
    click(qtbot, widget.stop_button)
    wait_for_worker(qtbot, widget)
    assert widget.session.epochs_done > done
    changed = any(not np.array_equal(v.numpy(), widget.session.trainer.model.state_dict()[k].numpy())
                  for k, v in state.items())
    assert changed  # resume continued the same model
    assert not messages


def test_closing_viewer_during_training_stops_the_thread(trained_setup, qtbot):
    from qtpy.QtCore import QThreadPool

    viewer, adf, ds, shapes, widget, messages = trained_setup
    widget.epochs.value = 500
    viewer.window.add_dock_widget(widget, name="Train rVAE")
    click(qtbot, widget.start_button)
    qtbot.waitUntil(lambda: widget.session is not None and widget.session.trainer is not None
                    and widget.session.trainer.step >= 1, timeout=60000)
    worker = widget.worker
    viewer.close()
    qtbot.waitUntil(lambda: worker.done, timeout=120000)
    qtbot.waitUntil(lambda: QThreadPool.globalInstance().activeThreadCount() == 0, timeout=120000)


def test_errors_are_notifications_and_keep_layers(trained_setup, qtbot, monkeypatch):
    viewer, adf, ds, shapes, widget, messages = trained_setup
    n_layers = len(viewer.layers)
    # an empty region: outside the scan
    far = np.array([[100.0, 100.0], [100.0, 101.0], [101.0, 101.0], [101.0, 100.0]])
    viewer.add_shapes([far], shape_type="rectangle", name="far away")
    widget.region.value = "far away"
    assert "covers no probe position" in widget.count.value
    click(qtbot, widget.start_button)
    assert len(messages) == 1 and "covers no probe position" in messages[-1]
    # a Labels layer of another shape
    viewer.add_labels(np.ones((5, 5), int), name="other labels")
    widget.region.value = "other labels"
    click(qtbot, widget.start_button)
    assert "other labels" in messages[-1] and "32×32" in messages[-1]
    # running out of memory
    import napari_4dstem_rvae._napari.train_widget as tw

    def out_of_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(tw, "STEMRun", out_of_memory)
    widget.region.value = "region"
    click(qtbot, widget.start_button)
    wait_for_worker(qtbot, widget)
    assert "ran out of memory" in messages[-1] and "could not start" in messages[-1]
    assert len(viewer.layers) == n_layers + 2  # only the two region layers added by this test
    assert all(w.enabled for w in widget._parameters if w is not widget.resume_button)


def test_resume_refuses_a_changed_dataset(trained_setup, qtbot):
    viewer, adf, ds, shapes, widget, messages = trained_setup
    widget.epochs.value = 500
    click(qtbot, widget.start_button)
    qtbot.waitUntil(lambda: widget.session is not None and widget.session.epochs_done >= 1, timeout=60000)
    click(qtbot, widget.stop_button)
    wait_for_worker(qtbot, widget)
    # the layer now holds another data set (e.g. re-opened or reprocessed under the widget)
    from dataclasses import replace

    adf.metadata["dataset4d"] = replace(ds, data=ds.data * 2)
    click(qtbot, widget.resume_button)
    assert "data set changed" in messages[-1]


@pytest.mark.slow
def test_checkpoint_and_results_roundtrip(trained_setup, qtbot, tmp_path):
    import h5py

    viewer, adf, ds, shapes, widget, messages = trained_setup
    widget.epochs.value = 2
    click(qtbot, widget.start_button)
    wait_for_worker(qtbot, widget)
    widget.checkpoint_path.value = str(tmp_path / "model.pt")
    assert widget.save_checkpoint() == str(tmp_path / "model.pt")
    widget.results_path.value = str(tmp_path / "results.h5")
    click(qtbot, widget.save_results_button)                  # written in a worker, not the GUI thread
    wait_for_worker(qtbot, widget)
    assert widget.status.value == f"results saved: {tmp_path / 'results.h5'}"
    with h5py.File(tmp_path / "results.h5", "r") as f:
        assert f["angle"].shape == ds.scan_shape and f["latents"].shape == (2,) + ds.scan_shape
    angle_before = viewer.layers[f"rVAE angle · {ds.name}"].data.copy()
    viewer.layers.remove(f"rVAE angle · {ds.name}")
    widget.load_checkpoint()
    wait_for_worker(qtbot, widget)
    np.testing.assert_allclose(viewer.layers[f"rVAE angle · {ds.name}"].data, angle_before, atol=1e-3)
    # the results file reopens as layers aligned with the ADF image
    layers = viewer.open(str(tmp_path / "results.h5"), plugin=PLUGIN)
    assert {layer.name for layer in layers} >= {"rVAE angle · results", "rVAE latent 1 · results"}
    angle = viewer.layers["rVAE angle · results"]
    np.testing.assert_allclose(angle.scale, adf.scale)
    np.testing.assert_allclose(angle.data, angle_before, atol=1e-3)
    assert not messages


def test_checkpoint_path_set_before_start_keeps_the_training_while_it_runs(trained_setup, qtbot, tmp_path):
    """The widget's checkpoints are the CLI's: written (atomically, checksummed) while training
    runs, so after a crash Load checkpoint + Resume continues from the last one."""
    from napari_4dstem_rvae.rvae import read_checkpoint

    viewer, adf, ds, shapes, widget, messages = trained_setup
    widget.epochs.value = 200
    path = tmp_path / "running.pt"
    widget.checkpoint_path.value = str(path)
    click(qtbot, widget.start_button)
    qtbot.waitUntil(lambda: path.exists() and read_checkpoint(path)["epoch"] >= 10, timeout=120000)
    saved = read_checkpoint(path)["epoch"]     # written during the run, before any Stop
    assert saved % 10 == 0                     # every total/20 epochs
    click(qtbot, widget.stop_button)
    wait_for_worker(qtbot, widget)
    widget.session = None                      # as after a crash: nothing in memory
    widget.load_checkpoint()
    wait_for_worker(qtbot, widget)
    assert widget.session.epochs_done >= saved and widget.resume_button.enabled
    done = widget.session.epochs_done
    click(qtbot, widget.resume_button)
    qtbot.waitUntil(lambda: widget.session.epochs_done >= done + 2, timeout=60000)
    click(qtbot, widget.stop_button)
    wait_for_worker(qtbot, widget)
    assert not messages, messages


@pytest.mark.slow
def test_explore_click_reconstruction_and_lasso_selection(trained_setup, qtbot):
    from types import SimpleNamespace

    from napari_4dstem_rvae._napari.explore import SELECTION_LAYER

    viewer, adf, ds, shapes, widget, messages = trained_setup
    widget.epochs.value = 2
    click(qtbot, widget.start_button)
    wait_for_worker(qtbot, widget)
    panel = widget.explore
    sy, sx = ds.calibration.scan_step_yx
    panel._on_click(viewer, SimpleNamespace(type="mouse_press", position=(10 * sy, 7 * sx)))
    assert panel.current == (10, 7)
    pattern, recon = panel.show_position(10, 7)
    np.testing.assert_allclose(pattern, widget.session.prepared.pattern(10, 7))
    assert recon.shape == pattern.shape and np.isfinite(recon).all()
    # the reconstruction is closer to its own pattern than to a distant one
    other = widget.session.prepared.pattern(0, 0)
    assert np.abs(recon - pattern).mean() <= np.abs(recon - other).mean() + 1e-6
    assert "angle" in panel.info.text() and "latents" in panel.info.text()
    # lasso selection in latent space -> highlighted probe positions on the canvas
    latents = widget.maps["latents"]
    inside = np.flatnonzero(latents[0].ravel() > np.median(latents[0]))
    panel.select(inside)
    points = viewer.layers[SELECTION_LAYER]
    assert len(points.data) == inside.size
    np.testing.assert_allclose(points.data[:, 0] * 32 + points.data[:, 1], inside)
    np.testing.assert_allclose(points.scale, adf.scale)
    grid = panel.show_traversal(n=3)
    assert grid.shape == (3, 3) + widget.session.prepared.det_shape


@pytest.mark.slow
def test_widget_keeps_the_epoch_the_shared_selection_rule_picks(trained_setup, qtbot):
    """The Train widget, the CLI and the API choose the maps' epoch by one rule (rvae.selection)."""
    viewer, adf, ds, shapes, widget, messages = trained_setup
    widget.epochs.value = 4
    widget.correlate_every.value = 1                        # |r| followed live (plotted)
    click(qtbot, widget.start_button)
    wait_for_worker(qtbot, widget)
    trainer = widget.session.trainer
    assert trainer.config.epoch_selection == "held_out"  # the default, as in stem-rvae run
    best = min(trainer.history, key=lambda record: record["test_loss"])
    assert trainer.selected_epoch == best["epoch"]
    layer = viewer.layers[f"rVAE latent 1 · {ds.name}"]
    assert layer.metadata["napari_4dstem_rvae"]["epoch"] == best["epoch"]
    assert viewer.layers[f"rVAE novelty · {ds.name}"].data.shape == ds.scan_shape
    assert not messages


@pytest.mark.slow
def test_final_maps_encoded_on_a_dask_scheduler_equal_those_made_here(trained_setup, qtbot, monkeypatch):
    from distributed import LocalCluster

    from napari_4dstem_rvae.rvae import distributed

    viewer, adf, ds, shapes, widget, messages = trained_setup
    widget.epochs.value = 2
    monkeypatch.setattr(distributed, "TASK_BYTES", 1)              # one task per scan row: 32 tasks
    seen = []                                                      # the progress the user sees (napari's)
    monkeypatch.setattr(widget.bars, "update", lambda event, _update=widget.bars.update: (seen.append(event),
                                                                                        _update(event)))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        widget.scheduler.value = cluster.scheduler_address
        click(qtbot, widget.start_button)
        wait_for_worker(qtbot, widget)
        assert not messages, messages
        assert f"maps encoded on {cluster.scheduler_address} (dashboard http" in widget.status.value
        assert cluster.scheduler.task_prefixes                     # the workers encoded the patterns
    # napari's progress followed the cluster's tasks as they finished (COM pass, then encoding)
    encoding = [(e.done, e.total) for e in seen if e.stage == "encoding"]
    assert [done for done, _ in encoding] == list(range(0, ds.scan_shape[0] + 1))
    assert {total for _, total in encoding} == {ds.scan_shape[0]}
    assert any(e.stage == "COM" and e.done == e.total for e in seen)
    assert not widget.bars.bars                                   # every bar closed at the end
    assert widget.progress.maximum() == widget.session.total_epochs
    here = widget.session.maps(novelty=True)                       # the same model, encoded in this process
    n_layers = len(viewer.layers)
    np.testing.assert_allclose(viewer.layers[f"rVAE latent 1 · {ds.name}"].data, here["latents"][0],
                               rtol=1e-5, atol=1e-5)
    # the novelty (robust SDs) refits the lattice on float32 block sums batched differently: to 0.1 %
    np.testing.assert_allclose(viewer.layers[f"rVAE novelty · {ds.name}"].data, here["novelty"], rtol=1e-3, atol=0.1)
    # a scheduler that does not answer: one message naming it, the layers kept
    widget.scheduler.value = "tcp://127.0.0.1:9"
    click(qtbot, widget.start_button)
    wait_for_worker(qtbot, widget)
    assert len(messages) == 1 and "tcp://127.0.0.1:9: no dask scheduler answers there" in messages[0], messages
    assert len(viewer.layers) == n_layers


@pytest.mark.slow
def test_the_train_tab_and_the_cli_write_the_same_results_file(trained_setup, qtbot, tmp_path):
    """One run for both doors: for the same data and options the Train tab's Save results and
    ``stem-rvae run`` write files with the same groups, attributes and maps; the tab's save
    refuses to write over the data set's own file."""
    import h5py

    from napari_4dstem_rvae.cli import main
    from napari_4dstem_rvae.io import save_dataset

    viewer, adf, ds, shapes, widget, messages = trained_setup
    source = save_dataset(ds, tmp_path / "scan.h5")
    opened = viewer.open(source, plugin=PLUGIN)[0]
    widget.layer.value = opened.name
    widget.region.value = None
    widget.epochs.value = 2
    click(qtbot, widget.start_button)
    wait_for_worker(qtbot, widget)
    widget.results_path.value = str(tmp_path / "tab.h5")
    click(qtbot, widget.save_results_button)
    wait_for_worker(qtbot, widget)
    assert not messages, messages
    assert main(["run", source, "--epochs", "2", "--batch-size", "32", "--threads", "1",
                 "--out", str(tmp_path / "cli.h5")]) == 0

    def structure(path):
        seen = {}
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, item: seen.update({name: (type(item).__name__, sorted(item.attrs))}))
            seen["/"] = ("File", sorted(f.attrs))
            parameters = sorted(__import__("json").loads(f.attrs["parameters_json"]))
        return seen, parameters

    tab, cli = structure(tmp_path / "tab.h5"), structure(tmp_path / "cli.h5")
    assert tab == cli
    assert {"images/sum", "images/adf", "com/com_x", "rvae/latents", "rvae/novelty"} <= set(tab[0])
    # the data set's own file is never the results file
    before = (tmp_path / "scan.h5").read_bytes()
    widget.results_path.value = source
    click(qtbot, widget.save_results_button)
    wait_for_worker(qtbot, widget)
    assert len(messages) == 1 and "is the input" in messages[0]
    assert (tmp_path / "scan.h5").read_bytes() == before
