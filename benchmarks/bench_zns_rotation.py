"""How far the patterns of ZnS [011] change over the scan as rotated copies of one another — the
assumption of the rVAE's angle — against the crystal's thickness, with the rVAE's angle beside it.

    python benchmarks/bench_zns_rotation.py [--thickness 8,20,40,76] [--rvae] [--seed 2]
                                            [--threads 2] [--write docs/quality.md]

Data: :func:`napari_4dstem_rvae.simulate.zns` (60 kV, 31 mrad, source 0.75 Å FWHM, 32 × 32
positions), noise-free, the detector binned 2 × 2 to 32 × 32 pixels as ``stem-rvae run`` does.
For each thickness, from the patterns minus their scan mean (no training):

- ``isotropic`` — the share of the variance in principal components that a quarter turn of the
  detector leaves alike (|r| > 0.7 between a component and itself turned by 90°): changes of the
  pattern that no rotation can express (the bright field dimming as the beam channels);
- ``best pair ρ`` — the largest |circular correlation| (Fisher–Lee) between the COM angle of the
  noise-free data and the phase ``atan2(u_j, u_i)`` of any pair among the six leading
  components: how well a rotation of one pattern-shaped change could follow the COM angle at all
  (a thin specimen's dipole pair gives ≈ 1);
- ``blurred 5 px`` — the same with the patterns blurred by a Gaussian of 5 detector pixels
  (about the disk's radius), which keeps every pattern's centre of mass.

With ``--rvae`` the run's defaults are trained on each (``angle ρ``: the rVAE angle against the
COM angle; ``|r|``: the best latent against the COM magnitude), ~2 min each on 2 threads.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def components(patterns: np.ndarray, k: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores ``(n, k)``, components ``(k, h, w)``, variance shares) of the centred patterns."""
    n, h, w = patterns.shape
    centred = patterns.reshape(n, -1) - patterns.reshape(n, -1).mean(0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    return u[:, :k] * s[:k], vt[:k].reshape(k, h, w), s ** 2 / (s ** 2).sum()


def rotation_measures(patterns: np.ndarray, com_angle: np.ndarray) -> tuple[float, float]:
    from napari_4dstem_rvae.stats import circular_correlation

    scores, comps, share = components(patterns, 12)
    iso = [abs(float(np.corrcoef(np.rot90(c).ravel(), c.ravel())[0, 1])) > 0.7 for c in comps]
    isotropic = float(sum(s for s, i in zip(share[:12], iso) if i))
    side = com_angle.shape
    best = max(abs(circular_correlation(np.arctan2(scores[:, j], scores[:, i]).reshape(side), com_angle))
               for i in range(6) for j in range(i + 1, 6))
    return isotropic, float(best)


def row(thickness: float, args: argparse.Namespace) -> dict[str, float]:
    from scipy.ndimage import gaussian_filter

    from napari_4dstem_rvae.processing import compute_com
    from napari_4dstem_rvae.simulate import zns

    ds = zns(scan_shape=(32, 32), thickness_angstrom=thickness)
    com = compute_com(ds, rotation=0.0, flip=False)
    data = np.asarray(ds.data, np.float64)
    sy, sx, dy, dx = data.shape
    patterns = data.reshape(sy * sx, dy // 2, 2, dx // 2, 2).sum((2, 4))
    out = {"thickness": ds.metadata["simulation"]["thickness_angstrom"]}
    out["isotropic"], out["pair"] = rotation_measures(patterns, com.angle)
    out["isotropic blurred"], out["pair blurred"] = rotation_measures(gaussian_filter(patterns, (0, 5, 5)), com.angle)
    if args.rvae:
        from napari_4dstem_rvae.stats import circular_correlation
        from napari_4dstem_rvae.workflows import run

        start = time.perf_counter()
        maps = run(ds, None, threads=args.threads, seed=args.seed).result.maps
        out["s"] = time.perf_counter() - start
        out["rho"] = circular_correlation(maps.angle, com.angle)
        out["r"] = max(abs(float(np.corrcoef(z.ravel(), com.magnitude.ravel())[0, 1])) for z in maps.latents)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--thickness", default="8,20,40,76", help="crystal thicknesses (Å), comma-separated")
    parser.add_argument("--rvae", action="store_true", help="train the run's defaults on each thickness too")
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", default=None, help="write the table into this Markdown file (between markers)")
    args = parser.parse_args()
    head = "| thickness (Å) | isotropic share | best pair ρ | isotropic, blurred 5 px | best pair ρ, blurred 5 px |"
    rule = "|---|---|---|---|---|"
    if args.rvae:
        head += " rVAE angle ρ | rVAE latent \\|r\\| | s |"
        rule += "---|---|---|"
    lines = [head, rule]
    print("\n".join(lines), flush=True)
    for thickness in (float(t) for t in args.thickness.split(",")):
        got = row(thickness, args)
        line = (f"| {got['thickness']:.1f} | {got['isotropic']:.2f} | {got['pair']:.2f} | "
                f"{got['isotropic blurred']:.2f} | {got['pair blurred']:.2f} |")
        if args.rvae:
            line += f" {got['rho']:+.2f} | {got['r']:.3f} | {got['s']:.0f} |"
        lines.append(line)
        print(line, flush=True)
    if args.write:
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_rvae_quality import write_table

        command = f"python benchmarks/bench_zns_rotation.py --thickness {args.thickness}" + \
            (f" --rvae --seed {args.seed}" if args.rvae else "")
        write_table(Path(args.write), lines, args, marker="bench_zns_rotation", command=command)


if __name__ == "__main__":
    main()
