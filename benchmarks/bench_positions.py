"""Atom positions (#23): how close the atoms the package finds lie to the true ones, against
Atomap's 2D-Gaussian refinement of the same atoms, in the same run.

    python benchmarks/bench_positions.py [--seeds 3] [--threads 2] [--atomap-python PYTHON]
                                         [--write docs/quality.md]

Frames: simulated HAADF frames of Si-doped graphene (256 × 256 px, two grains, 2 % Si, holes;
:func:`~napari_4dstem_rvae.simulate.haadf.haadf_series`) in three cases — the U-Net's home
(0.16 Å/px, 30 counts per carbon atom), a finer and fainter one whose probe has a tail (0.10 Å/px,
15 counts; a quarter of each atom's counts spread 3 × wider, as a real probe's aberrations and
the detector's point spread do) and the study's sampling (0.25 Å/px, 40 counts); Poisson and
read noise.

Per frame: the package's finder as the workflow runs it (``find`` with the default options: the
U-Net for a calibrated frame, the lattice completion) timed in this process, on ``--threads``
threads (after one untimed call that imports and loads the network); the band-pass finder (``--method log``); and **Atomap** (Nord et al., Adv. Struct. Chem.
Imaging 3, 9, 2017; GPL-3.0, run as a baseline in the interpreter ``--atomap-python`` — by
default this one — through ``benchmarks/atomap_refine.py``): ``Sublattice`` on the package's found
positions, ``refine_atom_positions_using_2d_gaussian`` — Atomap's most precise step, timed alone
(its import not counted; one process, as it runs). The errors are distances to the true atom
(matched within 0.5 Å) over the atoms every method kept, in Å: median and root mean square.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

CASES = (  # name, pixel size (Å), counts per carbon atom, probe tail (fraction of counts)
    ("0.16 Å/px, 30 counts", 0.16, 30.0, 0.0),
    ("0.10 Å/px, 15 counts, probe tail", 0.10, 15.0, 0.25),
    ("0.25 Å/px, 40 counts", 0.25, 40.0, 0.0),
)


def frame(pixel: float, counts: float, tail: float, seed: int):
    """One simulated frame (an ImageSeries of one frame) and its true positions (pixels)."""
    from scipy import ndimage

    from napari_4dstem_rvae.series import ImageSeries
    from napari_4dstem_rvae.simulate.haadf import haadf_series

    background, read_noise = 2.0, 1.0
    clean, truth = haadf_series(n_frames=1, shape=(256, 256), pixel_size=pixel, counts_carbon=counts, seed=seed,
                                background=background, noise=False)
    signal = np.asarray(clean.frame(0), np.float64) - background
    if tail:
        sigma = 3 * 1.0 / 2.355 / pixel  # three times the probe's σ (probe FWHM 1 Å)
        signal = (1 - tail) * signal + tail * ndimage.gaussian_filter(signal, sigma)
    rng = np.random.default_rng(seed + 1000)
    noisy = rng.poisson(np.maximum(signal + background, 0)) + rng.normal(0, read_noise, signal.shape)
    series = ImageSeries(noisy[None].astype(np.float32), pixel_size=pixel, unit="Å")
    return series, np.column_stack([truth.y, truth.x]) / pixel


def errors(found: np.ndarray, truth: np.ndarray, pixel: float) -> tuple[np.ndarray, np.ndarray]:
    """Distance (Å) of each found atom to the nearest true one, and whether it is within 0.5 Å."""
    from scipy.spatial import cKDTree

    d, _ = cKDTree(truth).query(found, distance_upper_bound=0.5 / pixel)
    ok = np.isfinite(d)
    return np.where(ok, d * pixel, np.nan), ok


def atomap(python: str, image: np.ndarray, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, float] | str:
    """Atomap's refinement of ``(y, x)`` (see the module docstring), or why it could not run."""
    worker = Path(__file__).with_name("atomap_refine.py")
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(src, image=image, y=y, x=x)
        done = subprocess.run([python, str(worker), src, dst], capture_output=True, text=True)
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["?"])[-1]
            return f"Atomap did not run in {python}: {last}"
        out = np.load(dst)
        return np.column_stack([out["y"], out["x"]]), float(out["seconds"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--atomap-python", default=sys.executable,
                        help="an interpreter with atomap installed (pip install atomap; GPL-3.0)")
    parser.add_argument("--write", type=Path, help="write the table between the bench_positions markers of this file")
    args = parser.parse_args(argv)

    from napari_4dstem_rvae.atoms.finding import find
    from napari_4dstem_rvae.rvae.runtime import torch_threads
    from napari_4dstem_rvae.workflows.atoms import AtomOptions

    options = AtomOptions().find_options()
    with warnings.catch_warnings():  # imports and the network's weights loaded before any timing
        warnings.simplefilter("ignore")
        for method in ("auto", "log"):
            find(frame(*CASES[0][1:], 0)[0], method, **options)
    lines = ["| frames | atoms | package (default finder) median / RMS error, s per frame | band-pass (`--method log`) "
             "median / RMS, s | Atomap 2D Gaussians median / RMS, s per frame | Atomap ÷ package, time |",
             "|---|---|---|---|---|---|"]
    for name, pixel, counts, tail in CASES:
        acc: dict[str, list] = {k: [] for k in ("ours", "log", "atomap")}
        secs: dict[str, list] = {k: [] for k in acc}
        n_atoms, note = 0, ""
        for seed in range(args.seeds):
            series, truth = frame(pixel, counts, tail, seed)
            with warnings.catch_warnings(), torch_threads(args.threads):
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                ours = find(series, "auto", **options)
                secs["ours"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                log = find(series, "log", **options)
                secs["log"].append(time.perf_counter() - t0)
            found = np.column_stack([ours.y, ours.x])
            result = atomap(args.atomap_python, np.asarray(series.frame(0), np.float64), ours.y, ours.x)
            e_ours, ok = errors(found, truth, pixel)
            e_log, ok_log = errors(np.column_stack([log.y, log.x]), truth, pixel)
            if isinstance(result, str):
                note = result
                keep = ok
            else:
                refined, seconds = result
                secs["atomap"].append(seconds)
                e_atomap, ok_atomap = errors(refined, truth, pixel)
                keep = ok & ok_atomap
                acc["atomap"].append(e_atomap[keep])
            acc["ours"].append(e_ours[keep])
            acc["log"].append(e_log[ok_log])
            n_atoms += int(keep.sum())
            print(f"{name}, seed {seed}: {int(keep.sum())} atoms; package median {np.median(e_ours[keep]):.3f} Å "
                  f"({secs['ours'][-1]:.2f} s), band-pass {np.median(e_log[ok_log]):.3f} Å"
                  + ("" if isinstance(result, str) else
                     f", Atomap {np.median(acc['atomap'][-1]):.3f} Å ({secs['atomap'][-1]:.2f} s)"), flush=True)

        def cell(key: str) -> str:
            if not acc[key]:
                return "not run"
            e = np.concatenate(acc[key])
            return f"{np.median(e):.3f} / {np.sqrt(np.mean(e**2)):.3f} Å, {np.mean(secs[key]):.2f} s"

        ratio = (f"{np.sum(secs['atomap']) / np.sum(secs['ours']):.0f}×" if secs["atomap"] else "—")
        lines.append(f"| {name} | {n_atoms} | {cell('ours')} | {cell('log')} | {cell('atomap')} | {ratio} |")
        if note:
            print(note)
    if note:
        lines.append(f"\n{note}")
    print("\n".join(lines))
    if args.write:
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_rvae_quality import write_table

        write_table(args.write, lines, args, marker="bench_positions",
                    command=f"python benchmarks/bench_positions.py --seeds {args.seeds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
