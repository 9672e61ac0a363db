"""The figure of the user guide's "which map at which dose": graphene with a single vacancy at
10⁵, 10⁴ and 10³ electrons per pattern, ``stem-rvae run``'s defaults, the rVAE's maps next
to the COM maps a microscopist computes from the same noisy data.

    python docs/make_dose_figure.py [--seed 2] [--threads 2] [--out docs/dose_maps.png]

The data are :mod:`benchmarks/bench_rvae_quality.py`'s ``pooled`` case (64 × 64 positions at
0.1 Å, 64 × 64 detector pixels, Poisson counts; seed 2 is one of its unseen seeds), so the
figure shows the runs that the table in docs/quality.md measures. Columns: the COM magnitude
(plain and smoothed over one probe step), the rVAE latent that follows the noise-free COM
magnitude best (its |r| in the title: chosen against the truth, as the table does), the
novelty, and the smoothed |∇·COM| (the COM baseline for a defect); the first row is the
noise-free COM magnitude and the rVAE's maps of the noise-free data are not shown. A circle
marks the vacancy (1.5 Å: where the table's contrast is taken). Each panel has its colour bar.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DOSES = (("10⁵", 1e5), ("10⁴", 1e4), ("10³", 1e3))


def panels(case: dict, result, truth: np.ndarray) -> list[tuple[str, np.ndarray, str]]:
    """(title, map, colour map) of one row."""
    from bench_rvae_quality import smoothed_com

    from napari_4dstem_rvae.processing import compute_com

    com = compute_com(case["ds"], rotation=0.0, flip=False)
    magnitude, div, _ = smoothed_com(com, 1.0)
    latents = result.maps.latents
    r = [abs(float(np.corrcoef(z.ravel(), truth.ravel())[0, 1])) for z in latents]
    k = int(np.argmax(r))
    return [("COM magnitude", com.magnitude, "magma"),
            ("COM magnitude, σ 1 step", magnitude, "magma"),
            (f"latent {k + 1}, |r| {r[k]:.3f}", latents[k], "viridis"),
            ("novelty", result.maps.novelty, "inferno"),
            ("|∇·COM|, σ 1 step", np.abs(div), "cividis")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "dose_maps.png"))
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent / "benchmarks"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    from bench_rvae_quality import make_case

    from napari_4dstem_rvae.workflows import run

    rows = []
    for label, dose in DOSES:
        case = make_case("graphene", "vacancy", dose, args.seed, 64, 0.1)
        start = time.perf_counter()
        result = run(case["ds"], None, threads=args.threads, seed=args.seed).result
        print(f"{label}: {time.perf_counter() - start:.0f} s", flush=True)
        rows.append((label, case, panels(case, result, case["com_magnitude"])))
    truth = rows[0][1]["com_magnitude"]
    fig, axes = plt.subplots(len(rows) + 1, 5, figsize=(17, 3.2 * (len(rows) + 1)), layout="constrained")
    fig.get_layout_engine().set(wspace=0.06)
    for ax in axes[0, 1:]:
        ax.set_axis_off()
    fig.text(0.3, 1 - 0.5 / (len(rows) + 1), "Graphene, a single vacancy (circle: 1.5 Å), 64 × 64 positions at "
             f"0.1 Å;\nstem-rvae run's defaults (seed {args.seed}). Each row: the same noisy data.\nThe latent "
             "shown is the one that follows the noise-free COM magnitude best.", fontsize=11, va="center")
    for i, (label, case, maps) in enumerate([("noise-free", rows[0][1], [("COM magnitude", truth, "magma")])] + rows):
        step = case["step"]
        ny, nx = truth.shape
        extent = (-0.5 * step, (nx - 0.5) * step, (ny - 0.5) * step, -0.5 * step)   # pixel i at i·step
        for j, (title, values, cmap) in enumerate(maps):
            ax = axes[i, j]
            values = np.asarray(values, float)
            low, high = np.nanpercentile(values, [0.5, 99.5])
            shown = ax.imshow(values, cmap=cmap, vmin=low, vmax=high, extent=extent, interpolation="nearest")
            bar = fig.colorbar(shown, ax=ax, shrink=0.85, pad=0.02)
            bar.ax.tick_params(labelsize=7)
            bar.locator = matplotlib.ticker.MaxNLocator(5)
            bar.update_ticks()
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("x (Å)", fontsize=8)
            ax.set_ylabel(f"{label}{'' if label == 'noise-free' else ' e⁻'}\ny (Å)" if j == 0 else "y (Å)",
                          fontsize=9 if j == 0 else 8)
            ax.tick_params(labelsize=7)
            if case["defect"] is not None:
                y, x = (v * step for v in case["defect"])
                ax.add_patch(plt.Circle((x, y), 1.5, fill=False, color="cyan", lw=1))
    tmp = Path(args.out).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
