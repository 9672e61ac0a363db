"""``stem-rvae``: the headless pipeline from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _read(args):
    from .io import read

    options = {}
    if getattr(args, "dataset", None):
        options["dataset"] = args.dataset
    if getattr(args, "scan_shape", None):
        options["scan_shape"] = tuple(args.scan_shape)
    return read(args.file, **options)


def cmd_demo(args) -> int:
    from .pipeline import demo

    demo(args.out, defect=None if args.defect == "none" else args.defect)
    return 0


def cmd_info(args) -> int:
    ds = _read(args)
    print(f"file:        {ds.source}")
    print(f"format:      {ds.metadata.get('format')}")
    print(f"shape:       {ds.shape} (scan_y, scan_x, det_y, det_x), {ds.dtype}, {ds.nbytes / 2**30:.3g} GiB")
    for key, value in ds.calibration.to_dict().items():
        print(f"{key + ':':<16}{value}")
    return 0


def cmd_image(args) -> int:
    from .pipeline import overview_images, write_image_png, write_results

    ds = _read(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images = overview_images(ds)
    for name, image in images.items():
        print(write_image_png(image, out / f"{name}.png", f"{name.upper()} image", ds))
    print(write_results(out / "images.h5", ds, images))
    return 0


def cmd_com(args) -> int:
    from .pipeline import com

    ds = _read(args)
    options = {"mask": args.mask, "reference": None if args.reference == "none" else args.reference,
               "unit": args.unit}
    if args.radius is not None:
        options["radius"] = args.radius
    if args.inner is not None:
        options["inner"] = args.inner
    if args.outer is not None:
        options["outer"] = args.outer
    if args.threshold:
        options["threshold"] = args.threshold
    options["rotation"] = "auto" if args.rotation == "auto" else float(args.rotation)
    options["flip"] = {"auto": "auto", "yes": True, "no": False}[args.flip]
    if args.scheduler:
        options["client"] = args.scheduler
    _, files = com(ds, args.out, **options)
    for value in files.values():
        print(value)
    return 0


def cmd_run(args) -> int:
    from .pipeline import run

    changes = {"latent_dim": args.latent, "epochs": args.epochs, "learn_shift": True if args.shift else None,
               "seed": args.seed, "threads": args.threads, "device": args.device}
    run(args.file, args.out, dataset=args.dataset, bin_to=args.bin, subtract_mean=not args.no_subtract_mean,
        roi=args.roi, select_epoch=not args.last_epoch, **changes)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stem-rvae", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the pipeline on the built-in simulated graphene")
    p.add_argument("--out", default="out", help="output folder (default: out)")
    p.add_argument("--defect", default="vacancy", choices=["none", "vacancy", "si"])
    p.set_defaults(func=cmd_demo)

    def add_file(p):
        p.add_argument("file", help="4D-STEM file (HDF5/EMD, .npy, zarr, .mib, .blo, EMPAD .xml, .dm4 ...)")
        p.add_argument("--dataset", help="path of the 4D dataset inside an HDF5 file or zarr store")
        p.add_argument("--scan-shape", type=int, nargs=2, metavar=("NY", "NX"),
                       help="scan shape for files holding a flat stack of patterns")

    p = sub.add_parser("info", help="shape and calibration of a file (reads no data)")
    add_file(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("image", help="virtual images (sum, ADF) as PNG and HDF5")
    add_file(p)
    p.add_argument("--out", default="out")
    p.set_defaults(func=cmd_image)
    p = sub.add_parser("com", help="centre-of-mass / DPC maps (HDF5 + PNG)")
    add_file(p)
    p.add_argument("--out", default="out")
    p.add_argument("--mask", default="whole", choices=["whole", "disk", "annulus"])
    p.add_argument("--unit", default="bf", choices=["px", "mrad", "bf"],
                   help="unit of --radius/--inner/--outer (bf: multiples of the bright-field radius)")
    p.add_argument("--radius", type=float)
    p.add_argument("--inner", type=float)
    p.add_argument("--outer", type=float)
    p.add_argument("--threshold", type=float, default=0.0, help="ignore pixels below this fraction of the max")
    p.add_argument("--reference", default="mean", choices=["mean", "plane", "none"])
    p.add_argument("--rotation", default="auto", help="'auto' (minimum curl) or degrees")
    p.add_argument("--flip", default="auto", choices=["auto", "yes", "no"])
    p.add_argument("--scheduler", help="dask.distributed scheduler address (e.g. tcp://host:8786)")
    p.set_defaults(func=cmd_com)
    p = sub.add_parser("run", help="read → bin → subtract mean → COM → rVAE → results.h5 + overview PNG")
    add_file(p)
    p.add_argument("--bin", type=int, default=64, help="detector pixels after binning (default 64; 0: no binning)")
    p.add_argument("--no-subtract-mean", action="store_true", help="keep the mean pattern")
    p.add_argument("--latent", type=int, default=None, help="content latents (default: the engine's)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: about 2,400 optimisation steps)")
    p.add_argument("--shift", action="store_true", help="also learn a shift of each pattern")
    p.add_argument("--last-epoch", action="store_true",
                   help="keep the last epoch's model (default: the epoch whose latent map correlates "
                        "best with the COM magnitude, checked ~20 times, as in the study)")
    p.add_argument("--roi", help="boolean .npy mask (scan_y, scan_x) of the training positions")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--out", default="out", help="output folder, or the results file (RESULTS.h5)")
    p.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .io import ReadError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ReadError, ValueError, FileNotFoundError) as exc:
        print(f"stem-rvae: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
