"""Atom-resolved series (#12): simulator truth, atom finding judged against it, windows at the
frame edges, series readers (incl. a 2D image and frames of different sizes), the headless
pipeline and its results file, and the CLI as a user runs it."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from scipy.spatial import cKDTree

from napari_4dstem_rvae.workflows.atoms import analyse, find, frame_histograms, parse_length, windows_for
from napari_4dstem_rvae.io.common import ReadError
from napari_4dstem_rvae.io.series import read_series
from napari_4dstem_rvae.atoms import cut_windows, find_atoms, find_atoms_series, round_mask
from napari_4dstem_rvae.results import read_atom_results, write_atom_results
from napari_4dstem_rvae.series import ImageSeries
from napari_4dstem_rvae.simulate.haadf import haadf_series


@pytest.fixture(scope="module")
def small():
    return haadf_series(n_frames=2, shape=(160, 160), seed=3)


def _match(table, truth, pixel, tol=0.5):
    """Found ↔ true atoms within ``tol`` Å, per frame: (recall, precision, rms error in Å)."""
    found = matched = 0
    errors = []
    for f in np.unique(truth.frame):
        t = truth.in_frame(f)
        true = np.column_stack([truth.y[t], truth.x[t]])
        m = table.frame == f
        got = np.column_stack([table.y[m], table.x[m]]) * pixel
        d, _ = cKDTree(true).query(got, distance_upper_bound=tol)
        ok = np.isfinite(d)
        matched += ok.sum()
        found += len(got)
        errors.append(d[ok])
    recall = matched / len(truth.frame)
    return recall, matched / max(found, 1), float(np.sqrt(np.mean(np.concatenate(errors) ** 2)))


def test_simulator_truth_is_consistent(small):
    series, truth = small
    assert series.shape == (2, 160, 160) and series.pixel_size_angstrom == pytest.approx(0.16)
    assert len(truth.frame) > 300
    assert set(np.unique(truth.sublattice)) == {0, 1} and set(np.unique(truth.grain)) == {0, 1}
    assert (truth.z == 14).any() and (truth.z == 6).any()
    # graphene: interior atoms have three neighbours at 1.42 Å
    t = truth.in_frame(0)
    p = np.column_stack([truth.y[t], truth.x[t]])
    d = cKDTree(p).query(p, k=2)[0][:, 1]
    assert np.median(d) == pytest.approx(1.42, abs=0.02)
    assert np.median(truth.coordination) == 3
    # holes grow: fewer atoms in the later frame, edge distances shrink
    assert truth.in_frame(1).sum() < truth.in_frame(0).sum()
    # the noise-free rendering has its maxima at the atoms
    clean, _ = haadf_series(n_frames=1, shape=(160, 160), seed=3, noise=False)
    y, x = np.round(truth.y[t] / 0.16).astype(int), np.round(truth.x[t] / 0.16).astype(int)
    inside = (y > 2) & (y < 157) & (x > 2) & (x < 157)
    assert clean.data[0][y[inside], x[inside]].mean() > 2 * np.median(clean.data[0])


def test_find_atoms_against_the_truth(small):
    series, truth = small
    table = find_atoms_series(series)
    recall, precision, rms = _match(table, truth, 0.16)
    assert recall >= 0.98 and precision >= 0.98, (recall, precision)
    assert rms < 0.15
    # heavier atoms brighter: the class "heavy" holds the Si atoms
    true = np.column_stack([truth.frame, truth.y / 0.16, truth.x / 0.16])
    d, j = cKDTree(true).query(np.column_stack([table.frame * 1000.0, table.y, table.x]))
    heavy = table.class_names.index("heavy")
    is_si = truth.z[j] == 14
    assert (table.cls[is_si] == heavy).mean() > 0.9
    assert (table.cls[~is_si] != heavy).mean() > 0.99
    # frames linked: the same atom keeps its track id across the two frames
    assert table.track is not None and len(np.unique(table.track)) < len(table)


def test_no_atoms_is_a_clear_sentence():
    flat = ImageSeries(np.random.default_rng(0).poisson(5.0, (2, 64, 64)).astype(np.float32), 0.16, "Å")
    assert len(find_atoms(flat.frame(0), 0.16)) == 0
    with pytest.raises(ValueError, match="no atoms were found"):
        find(flat, "log")
    blank = ImageSeries(np.zeros((1, 64, 64), np.float32), 0.16, "Å")
    with pytest.raises(ValueError, match="no atoms were found"):
        find(blank)  # the U-Net (default for a calibrated series) draws none into a blank frame
    with pytest.raises(ValueError, match="too small to find"):
        find_atoms(flat.frame(0), 5.0)  # 5 Å pixels: atoms are a fraction of a pixel


def test_windows_at_the_edges_dropped_or_padded(small):
    series, truth = small
    table = find_atoms_series(series)
    with pytest.warns(UserWarning, match="left out"):
        w, keep, note = cut_windows(series, table, 5.0, 32, edge="drop")
    half = 5.0 / 0.16 / 2
    assert note["dropped_at_edge"] == len(table) - len(keep) > 0
    assert (table.y[keep] >= half - 0.5).all() and (table.x[keep] <= 159.5 - half).all()
    padded, all_idx, note2 = cut_windows(series, table, 5.0, 32, edge="pad")
    assert len(all_idx) == len(table) and note2["padded_at_edge"] == note["dropped_at_edge"]
    assert w.shape == (len(keep), 32, 32) and np.isfinite(padded).all()
    # a window is centred on its atom: its brightest spot is at the centre
    centre = w[:, 13:19, 13:19].mean()
    assert centre > w[:, :4, 14:18].mean() and w.mean(axis=0).argmax() in \
        [r * 32 + c for r in range(14, 18) for c in range(14, 18)]
    # round mask: a window rotated by 90° keeps its energy (no corners)
    mask = round_mask(32)
    assert mask[0, 0] == 0 and mask[16, 16] == 1 and np.allclose(mask, np.rot90(mask))
    with pytest.raises(ValueError, match="edge must be"):
        cut_windows(series, table, 5.0, edge="wrap")
    # auto (the default): this small field would lose more than a fifth of its atoms, so it pads
    # and says so; with a small window nearly every atom is inside, so it drops the few left
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, auto_idx, auto = cut_windows(series, table, 5.0, 32)
        assert auto["edge"] == "pad" and auto["edge_requested"] == "auto" and len(auto_idx) == len(table)
        assert auto["padded_at_edge"] == note["dropped_at_edge"]
        _, small_idx, small_note = cut_windows(series, table, 1.0, 8)
    assert small_note["edge"] == "drop" and len(small_idx) >= 0.8 * len(table)


def test_parse_length_and_windows_in_px():
    assert parse_length("1.5nm") == (15.0, "Å")
    assert parse_length("12Å") == (12.0, "Å") and parse_length("12A") == (12.0, "Å")
    assert parse_length("40px") == (40.0, "px") and parse_length(7) == (7.0, "Å")
    for bad in ("-3nm", "big", "3 parsecs"):
        with pytest.raises(ValueError, match="--window"):
            parse_length(bad)
    uncal = ImageSeries(np.zeros((1, 64, 64), np.float32))
    table = find(uncal, "points", points=[[0, 32, 32], [0, 20, 40]])
    with pytest.raises(ValueError, match="no pixel size"):
        windows_for(uncal, table, "5Å")
    w, keep, note = windows_for(uncal, table, "16px", 16)
    assert w.shape == (2, 16, 16) and note["side_px"] == 16


def test_read_series_formats(tmp_path, small):
    series, _ = small
    data = series.data
    # ImageJ TIFF written by tifffile, nm calibration and frame interval
    tif = tmp_path / "movie.tif"
    tifffile.imwrite(tif, data, imagej=True, resolution=(1 / 0.016, 1 / 0.016),
                     metadata={"unit": "nm", "finterval": 2.5, "axes": "TYX"})
    s = read_series(tif)
    assert s.shape == data.shape and s.pixel_size_angstrom == pytest.approx(0.16)
    assert s.frame_time == pytest.approx(2.5)
    np.testing.assert_array_equal(s.data, data)
    # calibration by hand overrides and is recorded
    s2 = read_series(tif, pixel_size=0.2, unit="Å")
    assert s2.pixel_size_angstrom == pytest.approx(0.2)
    assert any(p.get("step") == "calibration" for p in s2.provenance)
    # a single 2D image is a series of one frame
    np.save(tmp_path / "one.npy", data[0])
    one = read_series(tmp_path / "one.npy")
    assert one.shape == (1, 160, 160) and one.pixel_size is None
    # HDF5 and zarr
    with h5py.File(tmp_path / "movie.h5", "w") as f:
        f["frames"] = data
    assert read_series(tmp_path / "movie.h5").shape == data.shape
    import zarr

    z = zarr.open(str(tmp_path / "movie.zarr"), mode="w", shape=data.shape, dtype=data.dtype)
    z[:] = data
    assert read_series(tmp_path / "movie.zarr").shape == data.shape
    # frames of different sizes: one sentence naming the file and both sizes
    with tifffile.TiffWriter(tmp_path / "mixed.tif") as w:
        w.write(data[0])
        w.write(data[1][:100, :120])
    with pytest.raises(ReadError, match=r"mixed\.tif: frames of different sizes.*160×160.*100×120"):
        read_series(tmp_path / "mixed.tif")
    # a truncated TIFF and a missing file
    raw = tif.read_bytes()
    (tmp_path / "cut.tif").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ReadError, match="cut.tif"):
        read_series(tmp_path / "cut.tif").data.sum()
    with pytest.raises(ReadError, match="no such file"):
        read_series(tmp_path / "missing.tif")


def test_read_series_through_rosettasciio(tmp_path, small):
    """A HyperSpy file written by RosettaSciIO (another program's writer) with its axes."""
    from rsciio.hspy import file_writer

    series, _ = small
    axes = [{"name": "time", "size": 2, "scale": 1.5, "offset": 0, "units": "s", "navigate": True},
            {"name": "y", "size": 160, "scale": 0.016, "offset": 0, "units": "nm", "navigate": False},
            {"name": "x", "size": 160, "scale": 0.016, "offset": 0, "units": "nm", "navigate": False}]
    signal = {"data": series.data, "axes": axes, "original_metadata": {}, "tmp_parameters": {},
              "metadata": {"General": {"title": "movie"}, "Signal": {"signal_type": ""}},
              "attributes": {"_lazy": False}, "package_info": {"name": "test", "version": "0"},
              "learning_results": {}, "models": {}}
    file_writer(str(tmp_path / "movie.hspy"), signal)
    s = read_series(tmp_path / "movie.hspy")
    assert s.shape == (2, 160, 160) and s.pixel_size_angstrom == pytest.approx(0.16)


def test_analyse_and_results_roundtrip(tmp_path, small):
    series, truth = small
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = analyse(series, window=5.0, pixels=24, epochs=3, batch_size=128, seed=0, threads=1, edge="drop")
    cols = result.columns()
    n = len(result.table)
    for name in ("frame", "y", "x", "class", "angle", "angle_std", "latent_1", "latent_2", "shift_x", "shift_y",
                 "novelty", "missing_neighbour", "rim", "centre_excess", "pca_1", "gmm_cluster", "has_window", "y_angstrom"):
        assert name in cols and len(cols[name]) == n, name
    has = cols["has_window"]
    assert 0 < (~has).sum() < n // 2  # edge atoms without a window are kept, marked NaN
    assert np.isfinite(cols["angle"][has]).all() and np.isnan(cols["angle"][~has]).all()
    # the residual on the neighbours' ring marks the carbon atoms at the holes' edges (fewer than
    # 3 neighbours), the residual at the atom the Si — even after 3 epochs
    from sklearn.metrics import roc_auc_score

    idx = np.full(n, -1)
    for f in range(series.n_frames):
        m, a = np.flatnonzero(truth.frame == f), np.flatnonzero(cols["frame"] == f)
        d, j = cKDTree(np.column_stack([truth.y[m], truth.x[m]])).query(
            np.column_stack([cols["y"][a], cols["x"][a]]) * 0.16, distance_upper_bound=0.5)
        idx[a[np.isfinite(d)]] = m[j[np.isfinite(d)]]
    ok = has & (idx >= 0)
    t = idx[ok]
    carbon, under, si = truth.z[t] == 6, truth.coordination[t] < 3, truth.z[t] == 14
    assert under[carbon].sum() >= 10 and si.sum() >= 3
    assert roc_auc_score(under[carbon], cols["missing_neighbour"][ok][carbon]) > 0.9
    # the first row of a hole's rim, its atoms with three neighbours included: the neighbourhood's score
    rim, rim_score = truth.edge_distance[t] < 1.42, cols["rim"][ok]
    fine = carbon & np.isfinite(rim_score)
    assert roc_auc_score(rim[fine], rim_score[fine]) > max(0.9, roc_auc_score(rim[fine], cols["missing_neighbour"][ok][fine]))
    assert roc_auc_score(si, cols["centre_excess"][ok]) > 0.95
    hist, edges = frame_histograms(cols["angle"], cols["frame"], series.n_frames, 12, (-np.pi, np.pi))
    assert hist.shape == (2, 12) and np.allclose((hist * np.diff(edges)).sum(axis=1), 1.0)
    path = write_atom_results(tmp_path / "atoms.h5", result, series, {"window": "5Å"})
    back = read_atom_results(path)
    assert back.series_shape == series.shape and back.pixel_size_angstrom == pytest.approx(0.16)
    np.testing.assert_allclose(back.columns["angle"], cols["angle"], equal_nan=True)
    np.testing.assert_array_equal(back.columns["frame"], cols["frame"])
    assert back.class_names == result.table.class_names


def _cli(*args, timeout=300):
    exe = Path(sys.executable).with_name("stem-rvae")
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_cli_atoms(tmp_path, small):
    series, truth = small
    tif = tmp_path / "movie.tif"
    tifffile.imwrite(tif, series.data, imagej=True, resolution=(1 / 0.16, 1 / 0.16),
                     metadata={"unit": "angstrom", "axes": "TYX"})
    done = _cli("atoms", tif, "--window", "0.5nm", "--pixels", "24", "--epochs", "2", "--threads", "1",
                "--pixel-size", "0.16", "--out", tmp_path / "out.h5")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    back = read_atom_results(tmp_path / "out.h5")
    assert len(back.columns["angle"]) > 300
    assert (tmp_path / "out_overview.png").stat().st_size > 10000
    before = tif.read_bytes()
    # output = input: refused, input untouched
    same = _cli("atoms", tif, "--out", tif)
    assert same.returncode != 0 and "Traceback" not in same.stderr and tif.read_bytes() == before
    # no atoms: a clear sentence, no file left behind
    np.save(tmp_path / "flat.npy", np.random.default_rng(1).poisson(5.0, (2, 64, 64)).astype(np.float32))
    none = _cli("atoms", tmp_path / "flat.npy", "--pixel-size", "0.16", "--method", "log", "--out",
                tmp_path / "flat.h5")
    assert none.returncode != 0 and "no atoms were found" in none.stderr and "Traceback" not in none.stderr
    assert not (tmp_path / "flat.h5").exists()
    # a bad path
    bad = _cli("atoms", tmp_path / "nope.tif", "--out", tmp_path / "x.h5")
    assert bad.returncode != 0 and "nope.tif" in bad.stderr and "Traceback" not in bad.stderr


def test_windows_of_finely_sampled_frames_are_smoothed_before_resampling():
    """Frames sampled finer than the windows (real frames: 0.03–0.1 Å/px, a 5 Å window of 50–170
    px resampled to 32) are smoothed first, so that their pixel noise does not fold into the
    windows; coarse frames (windows resampled up) are sampled as they are."""
    from napari_4dstem_rvae.atoms.table import AtomTable

    rng = np.random.default_rng(1)
    noise = rng.normal(0.0, 1.0, (1, 400, 400)).astype(np.float32)
    centres = rng.uniform(120, 280, (50, 2))
    n = len(centres)
    table = AtomTable(frame=np.zeros(n, int), y=centres[:, 0], x=centres[:, 1], intensity=np.ones(n),
                      cls=np.zeros(n, int), score=np.ones(n))

    def spread(pixel_size: float) -> float:
        windows, _, _ = cut_windows(ImageSeries(noise, pixel_size, "Å"), table, 5.0, 32, round=False)
        return float(windows.std())

    assert spread(0.05) < 0.3          # 100 px → 32: smoothed over ≥ 0.2 Å (4 px) first
    assert spread(0.25) > 0.5          # 20 px → 32: bilinear samples of the raw noise


@pytest.mark.slow  # five short trainings
def test_a_model_that_learnt_nothing_trains_again_at_a_lower_sigma_then_warns(small, monkeypatch):
    """When the rVAE collapses (:func:`napari_4dstem_rvae.rvae.collapsed` names why), the atom
    run trains once more with the likelihood's σ at a third (on the real grain-boundary frame
    that collapses at the default, the angle then follows the bonds: docs/quality.md) and says
    so; a second collapse is a warning that the angle and latents are noise, the atoms stand.
    A σ the caller chose is kept."""
    from napari_4dstem_rvae import rvae
    from napari_4dstem_rvae.workflows import Message
    from napari_4dstem_rvae.workflows.atoms import AtomOptions, AtomRun

    series, _ = small
    seen = []

    def judged(history, config):
        seen.append((len(history), config.noise_std))
        return "latent KL 0.001" if verdicts.pop(0) else None

    monkeypatch.setattr(rvae, "collapsed", judged)
    for verdicts, warned in (([True, True], 2), ([True, False], 1)):
        seen.clear()
        run = AtomRun(series, options=AtomOptions(pixels=24, edge="drop", angle_from="encoder"),
                     rvae={"epochs": 1, "threads": 1, "seed": 0})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            said = [e.text for e in run.train_events() if isinstance(e, Message) and e.level == "warning"]
        assert seen == [(1, 4.5), (1, 1.5)]              # judged on each run's own history
        assert len(said) == warned and said[0].startswith("the rVAE learnt nothing from these windows with the "
                                                          "likelihood's σ at 4.5 × their RMS (latent KL 0.001)")
        assert said[0].endswith("training again with σ at 1.5 × their RMS")
        assert run.result.config.noise_std == 1.5 and len(run.result.table) > 0   # the retry's model, recorded
    assert said == [said[0]]                             # the retry learnt: no second warning
    verdicts = [True]
    seen.clear()
    run = AtomRun(series, options=AtomOptions(pixels=24, edge="drop", angle_from="encoder"),
                  rvae={"epochs": 1, "threads": 1, "seed": 0, "noise_std": 2.0})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        said = [e.text for e in run.train_events() if isinstance(e, Message) and e.level == "warning"]
    assert seen == [(1, 2.0)] and len(said) == 1 and said[0].startswith("the rVAE learnt nothing from these windows (")


def test_two_mode_share_of_an_angle():
    from napari_4dstem_rvae.atoms.windows import two_mode_share

    rng = np.random.default_rng(0)
    # two sublattices 60° apart (mod 120°), 3° spread, anywhere on the circle: all in two modes
    split = np.radians(rng.choice([17.0, 77.0], 2000) + rng.normal(0, 3, 2000) + 120 * rng.integers(0, 3, 2000))
    assert two_mode_share(split) > 0.99
    assert abs(two_mode_share(rng.uniform(-np.pi, np.pi, 20000)) - 1 / 3) < 0.03   # ±10° of 60°: a third
    assert two_mode_share(np.radians(rng.normal(40, 3, 500))) > 0.99                # one mode is within it too
    assert np.isnan(two_mode_share(np.array([np.nan])))


def test_a_run_whose_angle_does_not_split_trains_again_with_one_latent(small, monkeypatch):
    """Windows turned to their lattice leave the rVAE the two sublattices to tell apart; when its
    angle puts under 60 % of the atoms in two modes, the run trains once more with one latent (so
    that the angle has to split them) and keeps the run that splits them more, and says so. A seed
    or a latent size the caller chose is kept (no retry)."""
    from napari_4dstem_rvae.atoms import windows
    from napari_4dstem_rvae.workflows import Message
    from napari_4dstem_rvae.workflows.atoms import AtomOptions, AtomRun

    series, _ = small
    for shares, kept in (([0.5, 0.9], 1), ([0.5, 0.3], 0)):
        queue = list(shares)
        monkeypatch.setattr(windows, "two_mode_share", lambda angle, symmetry=3: queue.pop(0))
        run = AtomRun(series, options=AtomOptions(pixels=24, edge="drop", angle_from="encoder"),
                      rvae={"epochs": 1, "threads": 1})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            said = [e.text for e in run.train_events() if isinstance(e, Message) and e.level == "warning"]
        split = [s for s in said if "two modes" in s]
        assert len(split) == 1, said
        assert split[0].startswith("the rVAE's encoder puts 50% of the atoms' angles in two modes"), said
        assert not queue                                              # trained twice, judged twice
        assert run.result.windows_note["two_mode_share"] == shares[kept]
        assert run.result.config.latent_dim == (2, 1)[kept] and ("latent_2" in run.result.values) == (not kept)
        assert "one latent" in split[0] and run.result.config.seed == 0
    for chosen in ({"seed": 4}, {"latent_dim": 3}):
        queue = [0.5]
        run = AtomRun(series, options=AtomOptions(pixels=24, edge="drop", angle_from="encoder"),
                      rvae={"epochs": 1, "threads": 1, **chosen})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            said = [e.text for e in run.train_events() if isinstance(e, Message) and e.level == "warning"]
        assert not queue and not any("two modes" in s for s in said)
        assert run.result.config.seed == chosen.get("seed", 0) and run.result.config.latent_dim == chosen.get(
            "latent_dim", 2)
