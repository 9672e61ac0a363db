"""rVAE map quality on simulated data at the doses detectors deliver, judged against the
noise-free ground truth, with the baselines a microscopist would use in the same table.

    python benchmarks/bench_rvae_quality.py [--seeds 3] [--first-seed 1] [--parts perpattern,pooled,zns]
                                            [--threads 2] [--write docs/quality.md]

Data: :func:`napari_4dstem_rvae.simulate.graphene` (60 kV, 31 mrad, 64 × 64 detector pixels; a
perfect lattice, a single vacancy or a single substitutional Si at the centre) and
:func:`napari_4dstem_rvae.simulate.zns` (ZnS [011], 76 Å thick, multislice); clean
(fractions of the beam) or Poisson counts at 10⁵, 10⁴, 10³ electrons per pattern. Each seed
draws its own noise and trains its own model with ``stem-rvae run``'s defaults (only
``--pooling`` varies). Parts:

- ``perpattern`` — ``--pooling none`` on a 32 × 32 scan at 0.25 Å steps (a scan as coarse as
  the probe: nothing to pool), clean / 10⁵ / 10⁴;
- ``pooled`` — the default (``auto`` = lattice pooling for counts) on a 64 × 64 scan at 0.1 Å
  steps (scans finer than the probe, as usual), 10⁵ / 10⁴ / 10³;
- ``zns`` — ZnS [011], clean and 10⁴, the defaults.

Columns: ``|r|`` — the largest |Pearson r| between a latent map and the COM magnitude of the
noise-free data; ``rho`` — the Fisher–Lee circular correlation between the rVAE angle and the
noise-free COM angle; ``contrast`` / ``top1%`` — of the novelty map at the defect: |mean within
1.5 Å − median| / MAD beyond 4 Å, and the share of the map's top 1 % within 3 Å of the defect;
``s`` — seconds of the whole run. Baselines on the same noisy data: the COM magnitude
(``COM``), the COM vector field smoothed over 1 and 1.5 probe steps (``COM σ1``, ``COM σ1.5``);
for defects the residual of a 5-component PCA (Anscombe-transformed counts; ``PCA res``), the
same smoothed over 1 step (``PCA res σ1``), and the COM divergence, curl and |∇·COM| smoothed
over 1 step; and for the per-pattern part the Bayes bound (``bound``: the posterior mean of the
noise-free COM magnitude given each noisy pattern, exact Poisson likelihood, the simulator's
noise-free patterns of the *other* positions as the prior — what a map computed pattern by
pattern can be expected to reach).

Nothing is tuned on the reported numbers inside a run. Seed 0 chose the detector binning
(32 × 32) and seed 1 the pooling widths (0.1 Å, 0.25 Å), so seeds 2 and 3 are the unseen ones.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

DOSES = {"clean": None, "1e5": 1e5, "1e4": 1e4, "1e3": 1e3}
PARTS = {
    "perpattern": {"material": "graphene", "step": 0.25, "scan": 32, "doses": ("clean", "1e5", "1e4"),
                   "poolings": ("none",), "defects": ("none", "vacancy", "si")},
    "pooled": {"material": "graphene", "step": 0.1, "scan": 64, "doses": ("1e5", "1e4", "1e3"),
               "poolings": ("auto",), "defects": ("none", "vacancy", "si")},
    "zns": {"material": "zns", "step": None, "scan": 32, "doses": ("clean", "1e4"), "poolings": ("auto",),
            "defects": ("none",)},
}


# -- data -----------------------------------------------------------------------------------
def make_case(material: str, defect: str | None, dose: float | None, seed: int, scan: int,
              step: float | None) -> dict[str, Any]:
    """Noisy data set, noise-free COM maps, defect position (scan pixels)."""
    from napari_4dstem_rvae.processing import compute_com
    from napari_4dstem_rvae.simulate import graphene, zns

    if material == "zns":
        clean = zns(scan_shape=(scan, scan))
        noisy = clean if dose is None else zns(scan_shape=(scan, scan), dose=dose, seed=1000 + seed)
    else:
        options = {"scan_shape": (scan, scan), "det_shape": (64, 64), "defect": defect, "scan_step_angstrom": step}
        clean = graphene(**options)
        noisy = clean if dose is None else graphene(**options, dose=dose, seed=1000 + seed)
    com = compute_com(clean, rotation=0.0, flip=False)
    step = clean.calibration.scan_step_yx[0]
    info = clean.metadata.get("defect")
    where = None if info is None else tuple(v / step for v in info["position_angstrom"])
    return {"ds": noisy, "clean": clean, "com_magnitude": com.magnitude, "com_angle": com.angle, "defect": where,
            "step": step, "counts": dose is not None}


# -- metrics ----------------------------------------------------------------------------------
def fisher_lee(a: np.ndarray, b: np.ndarray) -> float:
    from napari_4dstem_rvae.stats import circular_correlation

    return circular_correlation(a, b)


def defect_metrics(values: np.ndarray | None, where: tuple[float, float] | None, step: float) -> tuple[float, float]:
    """(robust contrast at the defect, share of the map's top 1 % within 3 Å of it)."""
    if where is None or values is None:
        return float("nan"), float("nan")
    ny, nx = values.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    dist = np.hypot(yy - where[0], xx - where[1]) * step
    values = np.asarray(values, float)
    inside, outside = values[dist <= 1.5], values[dist > 4.0]
    mad = np.median(np.abs(outside - np.median(outside))) or 1e-12
    contrast = abs(np.nanmean(inside) - np.nanmedian(values)) / mad
    top = values >= np.nanquantile(values, 0.99)
    return float(contrast), float(np.mean(dist[top] <= 3.0))


def smoothed_com(com: Any, sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The microscopist's one-line baseline: the COM vector field smoothed by a Gaussian of
    ``sigma`` probe steps — ``(|COM|, ∇·COM, curl COM)`` of it."""
    from scipy.ndimage import gaussian_filter

    from napari_4dstem_rvae.processing.field import divergence_curl

    vy, vx = (gaussian_filter(v, sigma, mode="nearest") for v in (com.y, com.x))
    return (np.hypot(vy, vx), *divergence_curl(vy, vx, (1.0, 1.0)))


def r_max(latents: np.ndarray, truth: np.ndarray) -> float:
    return max(abs(float(np.corrcoef(z.ravel(), truth.ravel())[0, 1])) for z in latents)


# -- runs --------------------------------------------------------------------------------------
def run_rvae(case: dict[str, Any], pooling: str, seed: int, threads: int) -> dict[str, float]:
    from napari_4dstem_rvae.workflows import run

    start = time.perf_counter()
    result = run(case["ds"], None, pooling=pooling, threads=threads, seed=seed).result
    seconds = time.perf_counter() - start
    maps = result.maps
    contrast, top = defect_metrics(maps.novelty, case["defect"], case["step"])
    return {"r": r_max(maps.latents, case["com_magnitude"]), "rho": fisher_lee(maps.angle, case["com_angle"]),
            "contrast": contrast, "top": top, "s": seconds}


def baselines(case: dict[str, Any], bound: bool) -> dict[str, float]:
    from scipy.ndimage import gaussian_filter
    from sklearn.decomposition import PCA

    from napari_4dstem_rvae.processing import compute_com

    ds, truth, where, step = case["ds"], case["com_magnitude"], case["defect"], case["step"]
    r = (lambda m: abs(float(np.corrcoef(m.ravel(), truth.ravel())[0, 1])))
    com = compute_com(ds, rotation=0.0, flip=False)
    out = {"COM": r(com.magnitude)}
    for sigma in (1.0, 1.5):
        out[f"COM σ{sigma:g}"] = r(smoothed_com(com, sigma)[0])
    if where is not None:
        x = np.asarray(ds.data, np.float64).reshape(int(np.prod(ds.scan_shape)), -1)
        z = 2 * np.sqrt(x + 3 / 8) if case["counts"] else x
        pca = PCA(n_components=5, random_state=0).fit(z)
        residual = ((z - pca.inverse_transform(pca.transform(z))) ** 2).sum(1).reshape(ds.scan_shape)
        _, div, curl = smoothed_com(com, 1.0)
        for name, values in (("PCA res", residual), ("PCA res σ1", gaussian_filter(residual, 1.0, mode="nearest")),
                             ("div COM σ1", div), ("curl COM σ1", curl), ("|div COM| σ1", np.abs(div))):
            out[f"{name} contrast"], out[f"{name} top"] = defect_metrics(values, where, step)
    if bound and case["counts"] and int(np.prod(ds.scan_shape)) <= 1024:
        out["bound"] = bayes_bound(case)
    return out


def bayes_bound(case: dict[str, Any]) -> float:
    """|r| of the best any per-pattern map can do (module docstring; leave-one-out prior)."""
    n = int(np.prod(case["ds"].scan_shape))
    y = np.asarray(case["ds"].data, np.float64).reshape(n, -1)
    clean = np.asarray(case["clean"].data, np.float64).reshape(n, -1)
    rate = clean / clean.sum(1, keepdims=True) * y.sum(1).mean()
    log_like = y @ np.log(rate + 1e-12).T - rate.sum(1)[None]
    np.fill_diagonal(log_like, -np.inf)
    weights = np.exp(log_like - log_like.max(1, keepdims=True))
    weights /= weights.sum(1, keepdims=True)
    truth = case["com_magnitude"].ravel()
    return abs(float(np.corrcoef(weights @ truth, truth)[0, 1]))


# -- the table ---------------------------------------------------------------------------------
def _stat(values: list[float], digits: int = 3) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "–"
    return f"{min(values):.{digits}f}–{max(values):.{digits}f}" if len(values) > 1 else f"{values[0]:.{digits}f}"


def table(args: argparse.Namespace) -> list[str]:
    lines = ["| data | method | \\|r\\| | angle ρ | novelty contrast | top 1 % ≤ 3 Å | s |",
             "|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    done: list[str] = []
    for part_name in args.parts.split(","):
        part = PARTS[part_name]
        for defect in part["defects"]:
            for dose_name in part["doses"]:
                cases = [make_case(part["material"], None if defect == "none" else defect, DOSES[dose_name], seed,
                                   part["scan"], part["step"]) for seed in seeds]
                step = cases[0]["step"]
                label = f"{part['material']} {defect}, {dose_name}, {step:.2g} Å steps"
                rows = []
                for pooling in part["poolings"]:
                    runs = [run_rvae(case, pooling, seed, args.threads) for seed, case in zip(seeds, cases)]
                    rows.append(f"| {label} | rVAE, pooling {pooling} | {_stat([r['r'] for r in runs])} | "
                                f"{_stat([r['rho'] for r in runs], 2)} | {_stat([r['contrast'] for r in runs], 1)} | "
                                f"{_stat([r['top'] for r in runs], 2)} | {_stat([r['s'] for r in runs], 0)} |")
                    print(rows[-1], flush=True)
                base = [baselines(case, part_name == "perpattern") for case in cases]
                for name in base[0]:
                    if name.endswith(" top"):
                        continue
                    if name.endswith(" contrast"):
                        short = name[:-len(" contrast")]
                        rows.append(f"| {label} | {short} (baseline) | | | {_stat([b[name] for b in base], 1)} | "
                                    f"{_stat([b[short + ' top'] for b in base], 2)} | |")
                    else:
                        rows.append(f"| {label} | {name} (baseline) | {_stat([b[name] for b in base])} | | | | |")
                    print(rows[-1], flush=True)
                lines += rows
        done.append(part_name)
        if args.write:  # after each part, so that a long run stopped later keeps what it measured
            write_table(Path(args.write), lines, args, command=(
                f"python benchmarks/bench_rvae_quality.py --seeds {args.seeds} --first-seed {args.first_seed} "
                f"--parts {','.join(done)}"))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--parts", default="perpattern,pooled,zns")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", default=None, help="write the table into this Markdown file (between markers)")
    args = parser.parse_args()
    table(args)


def write_table(path: Path, lines: list[str], args: argparse.Namespace, *,
                marker: str = "bench_rvae_quality", command: str | None = None) -> None:
    """The table between the ``<!-- marker: start/end -->`` lines of ``path`` (created if absent).

    Each benchmark owns its marker, so several tables share one page without overwriting each other.
    """
    start, end = f"<!-- {marker}: start -->", f"<!-- {marker}: end -->"
    if command is None:
        command = (f"python benchmarks/bench_rvae_quality.py --seeds {args.seeds} --first-seed "
                   f"{args.first_seed} --parts {args.parts}")
    block = "\n".join([start, f"*`{command}` on {time.strftime('%Y-%m-%d')}, "
                              f"{args.threads} threads.*", "", *lines, end])
    text = path.read_text() if path.exists() else "# Quality\n\n"
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
