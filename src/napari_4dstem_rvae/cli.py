"""``stem-rvae``: the headless pipeline from the command line."""

from __future__ import annotations

import argparse
import os
import sys


def _read_options(args) -> dict:
    """Reader options from the flags every command shares (``--dataset``, ``--scan-shape`` and
    the calibration overrides)."""
    options = {}
    if getattr(args, "dataset", None):
        options["dataset"] = args.dataset
    if getattr(args, "scan_shape", None):
        options["scan_shape"] = tuple(args.scan_shape)
    for name in ("scan_unit", "det_pixel_size", "det_unit", "energy_kev", "semiangle_mrad"):
        if getattr(args, name, None) is not None:
            options[name] = getattr(args, name)
    if getattr(args, "scan_step", None):
        step = args.scan_step
        options["scan_step"] = step[0] if len(step) == 1 else tuple(step)
    if getattr(args, "det_origin", None):
        options["det_origin"] = tuple(args.det_origin)
    return options


def _read(args):
    from .io import read

    return read(args.file, **_read_options(args))


def cmd_demo(args) -> int:
    from .pipeline import demo

    demo(args.out, defect=None if args.defect == "none" else args.defect, quick=args.quick)
    return 0


def cmd_info(args) -> int:
    from .units import format_bytes

    ds = _read(args)
    print(f"file:        {ds.source}")
    print(f"format:      {ds.metadata.get('format')}")
    print(f"shape:       {ds.shape} (scan_y, scan_x, det_y, det_x), {ds.dtype}, {format_bytes(ds.nbytes)}")
    for key, value in ds.calibration.to_dict().items():
        print(f"{key + ':':<16}{value}")
    return 0


def cmd_image(args) -> int:
    from .pipeline import images

    images(_read(args), args.out)
    return 0


def cmd_com(args) -> int:
    from .pipeline import com
    from .processing import COMOptions

    options = COMOptions(
        mask=args.mask, unit=args.unit, radius=args.radius, inner=args.inner, outer=args.outer,
        threshold=args.threshold or None, reference=None if args.reference == "none" else args.reference,
        rotation="auto" if args.rotation == "auto" else _degrees(args.rotation),
        flip={"auto": "auto", "yes": True, "no": False}[args.flip])
    extra = {"client": args.scheduler} if args.scheduler else {}
    _, files = com(_read(args), args.out, options, **extra)
    for value in files.values():
        print(value)
    return 0


def _degrees(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"--rotation must be 'auto' or an angle in degrees, got {text!r}") from None


def cmd_run(args) -> int:
    from .pipeline import run

    selection = "last" if args.last_epoch else args.epoch_selection
    changes = {"latent_dim": args.latent, "epochs": args.epochs, "learn_shift": True if args.shift else None,
               "seed": args.seed, "threads": args.threads, "device": args.device, "epoch_selection": selection,
               "likelihood": args.likelihood, "restarts": args.restarts, "angle_symmetry": args.symmetry,
               "train_positions": args.train_positions}
    resume = args.resume if args.resume is not None else not args.fresh
    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        raise ValueError(f"--checkpoint-every must be at least 1 epoch, got {args.checkpoint_every}")
    binning = {} if args.bin is None else {"bin_to": args.bin}
    run(args.file, args.out, read_options=_read_options(args), **binning, roi=args.roi,
        resume=resume, checkpoint_every=args.checkpoint_every, client=getattr(args, "scheduler", None),
        workers=getattr(args, "workers", None), reduced=args.reduced, **changes)
    return 0


def cmd_atoms(args) -> int:
    from .atom_pipeline import PRESETS, parse_length, run_atoms

    if args.preset not in PRESETS:
        raise ValueError(f"--preset must be one of {sorted(PRESETS)}, got {args.preset!r}")
    read_options: dict = {"dataset": args.dataset}
    if args.pixel_size is not None:
        size, unit = parse_length(args.pixel_size, "--pixel-size")
        if unit == "px":
            raise ValueError("--pixel-size must be a length (e.g. 0.16Å or 0.016nm), not pixels")
        read_options.update(pixel_size=size, unit="Å")
    if args.pixels < 8:
        raise ValueError(f"--pixels must be at least 8, got {args.pixels}")
    changes = {"epochs": args.epochs, "latent_dim": args.latent, "seed": args.seed, "threads": args.threads,
               "device": args.device}
    if args.epochs is not None and args.epochs < 1:
        raise ValueError(f"--epochs must be at least 1 (an untrained model maps nothing), got {args.epochs}")
    files = run_atoms(args.file, args.out, read_options=read_options, window=args.window, pixels=args.pixels,
                      method=args.method, preset=args.preset, edge=args.edge, window_from=args.window_from,
                      **changes)
    for value in files.values():
        print(value)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .rvae.config import LIKELIHOODS
    from .rvae.selection import EPOCH_SELECTIONS

    parser = argparse.ArgumentParser(prog="stem-rvae", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="the whole pipeline on built-in simulated graphene (simulate, write, read, "
                                    "images, COM, rVAE; ~3 min on 2 cores, --quick under 1 min)")
    p.add_argument("--out", default="out", help="output folder (default: out)")
    p.add_argument("--defect", default="vacancy", choices=["none", "vacancy", "si"])
    p.add_argument("--quick", action="store_true",
                   help="a 16 × 16 scan and a short training: the whole chain in under a minute")
    p.set_defaults(func=cmd_demo)

    def add_file(p):
        p.add_argument("file", help="4D-STEM file (HDF5/EMD, .npy, zarr, .mib, .blo, EMPAD .xml, .dm4 ...)")
        p.add_argument("--dataset", help="path of the 4D dataset inside an HDF5 file or zarr store")
        p.add_argument("--scan-shape", type=int, nargs=2, metavar=("NY", "NX"),
                       help="scan shape for files holding a flat stack of patterns")
        cal = p.add_argument_group("calibration (overrides what the file says)")
        cal.add_argument("--scan-step", type=float, nargs="+", metavar="STEP",
                         help="distance between probe positions: one value, or STEP_Y STEP_X")
        cal.add_argument("--scan-unit", help="unit of --scan-step: Å (or A), nm, pm, µm (or um)")
        cal.add_argument("--det-pixel-size", type=float, help="angular size of a detector pixel")
        cal.add_argument("--det-unit", help="unit of --det-pixel-size: mrad or 1/Å (or 1/A)")
        cal.add_argument("--energy-kev", type=float, help="beam energy in keV")
        cal.add_argument("--semiangle-mrad", type=float, help="probe convergence semi-angle in mrad")
        cal.add_argument("--det-origin", type=float, nargs=2, metavar=("ROW", "COL"),
                         help="detector pixel of the direct beam (zero angle)")

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
    p.add_argument("--bin", type=int, default=None,
                   help="detector pixels after binning (default 32, processing.chain.RVAE_DETECTOR_PIXELS; "
                        "0: no binning)")
    p.add_argument("--latent", type=int, default=None, help="content latents (default: the engine's)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: about 2,400 optimisation steps)")
    p.add_argument("--shift", action="store_true", help="also learn a shift of each pattern")
    p.add_argument("--epoch-selection", default=None, choices=list(EPOCH_SELECTIONS),
                   help="which epoch's model gives the maps (default: held_out, the lowest loss on the held-out "
                        "positions; com_correlation: the study's rule, the epoch whose latent map correlates best "
                        "with the COM magnitude)")
    p.add_argument("--likelihood", default=None, choices=list(LIKELIHOODS),
                   help="noise model of the reconstruction (default auto: a Gaussian with the counting-noise "
                        "scale for counts, chosen by measurement; see the README)")
    p.add_argument("--restarts", type=int, default=None,
                   help="models started, the one with the lowest held-out loss continues (default: the engine's)")
    p.add_argument("--symmetry", type=int, default=None, metavar="N",
                   help="also map the angle modulo 360°/N (the lattice's N-fold symmetry, e.g. 6 for graphene)")
    p.add_argument("--last-epoch", action="store_true", help="same as --epoch-selection last")
    p.add_argument("--roi", help="boolean .npy mask (scan_y, scan_x) of the training positions")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--out", default="out", help="output folder, or the results file (RESULTS.h5)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", metavar="CHECKPOINT", default=None,
                       help="continue the training saved in CHECKPOINT (by default a run continues from "
                            "RESULTS.checkpoint.pt beside its output when that exists and fits)")
    again.add_argument("--fresh", action="store_true",
                       help="start afresh, ignoring (and replacing) a checkpoint of an earlier run")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="EPOCHS",
                   help="epochs between checkpoints (default: about 20 checkpoints per training)")
    p.add_argument("--train-positions", type=int, default=None, metavar="N",
                   help="train on N positions of the region, a subsample stratified over the scan (default: as many "
                        "as the step budget visits, 153,600; every position with --epochs); maps cover the whole scan")
    p.add_argument("--reduced", default="auto", choices=["auto", "always", "never"],
                   help="write the binned patterns once to RESULTS.reduced.zarr and train and encode from it: "
                        "when they exceed the memory budget (auto, default), always, or never (re-read the file)")
    cluster = p.add_mutually_exclusive_group()
    cluster.add_argument("--scheduler", help="dask.distributed scheduler address (e.g. tcp://host:8786): the COM "
                                             "pass and the encoding of every pattern run on its workers")
    cluster.add_argument("--workers", type=int, default=None, metavar="N",
                         help="the same on a local cluster of N worker processes")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("atoms", help="atom-resolved image series: atoms → windows → rVAE → per-atom angle and "
                                     "latents (HDF5 table + overview PNG)")
    p.add_argument("file", help="image series or image: TIFF stack, .npy, HDF5/EMD, zarr, .dm3/.dm4, Velox .emd")
    p.add_argument("--dataset", help="path of the image dataset inside an HDF5 file or zarr store")
    p.add_argument("--pixel-size", help="pixel size overriding the file's, e.g. 0.16Å or 0.016nm")
    p.add_argument("--window", default="5Å", help="side of the window around each atom: 5Å (default), 1.5nm, 40px")
    p.add_argument("--pixels", type=int, default=32, help="window pixels after resampling (default 32)")
    p.add_argument("--method", default="auto", choices=["auto", "log", "unet"],
                   help="atom finding: unet (the study's network, trained on simulated images, shipped with the "
                        "package), log (band-pass and peaks), auto (default: unet when the pixel size is known, "
                        "else log)")
    p.add_argument("--window-from", default="frames", choices=["frames", "probabilities"],
                   help="cut the windows from the raw frames (default) or from the U-Net's class probabilities")
    p.add_argument("--edge", default="drop", choices=["drop", "pad"],
                   help="windows crossing the frame edge: dropped (default) or padded")
    p.add_argument("--preset", default="default", help="rVAE settings: default or study (the published ones)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--latent", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--out", default="out", help="output folder, or the results file (RESULTS.h5)")
    p.set_defaults(func=cmd_atoms)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings for people: one line, no source location."""
    text = " ".join(str(message).split())
    print(f"stem-rvae: warning: {text}", file=sys.stderr if file is None else file)


def main(argv: list[str] | None = None) -> int:
    import warnings

    from .io import ReadError

    args = build_parser().parse_args(argv)
    shown = warnings.showwarning
    warnings.showwarning = _one_line_warning
    try:
        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and args.func is not cmd_run:
            raise ValueError(f"torchrun starts several processes for `stem-rvae run` only; run "
                             f"`stem-rvae {args.command}` as one process")
        return int(args.func(args) or 0)
    except (ReadError, ValueError, FileNotFoundError) as exc:
        print(f"stem-rvae: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
