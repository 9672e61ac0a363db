"""``stem-rvae``: the runs of :mod:`napari_4dstem_rvae.workflows` from the command line.

Every option is built from the options objects (:mod:`.arguments`), so the flags, their
defaults, choices and units are those of the API and the napari docks. Result paths go to
stdout, progress bars and log lines to stderr (:mod:`.render`). Exit status: 0 done, 1 the
run failed (one sentence on stderr), 2 the command line is wrong.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .arguments import add_options, given, options_from_args


class UsageError(ValueError):
    """The command line asks for something that cannot be (exit status 2)."""


def _version() -> str:
    from .. import __version__

    return f"stem-rvae (napari-4dstem-rvae) {__version__}"


# -- reading ---------------------------------------------------------------------------------
def add_file(p: argparse.ArgumentParser) -> None:
    """The file and what every 4D-STEM command may tell the reader: the dataset inside it,
    the scan shape of a flat stack, and a calibration overriding the file's."""
    from ..dataset import Calibration

    p.add_argument("file", help="4D-STEM file (HDF5/EMD, .npy, zarr, .mib, .blo, EMPAD .xml, .dm4 …)")
    p.add_argument("--dataset", help="path of the 4D dataset inside an HDF5 file or zarr store (default: the "
                                     "EMD/py4DSTEM datacube, else the largest 4D dataset)")
    p.add_argument("--scan-shape", type=int, nargs=2, metavar=("NY", "NX"),
                   help="scan shape of a file holding a flat stack of patterns")
    add_options(p.add_argument_group("calibration (overrides what the file says)"), Calibration)


def read_options(args: argparse.Namespace) -> dict[str, Any]:
    """Reader options from the shared flags (``--dataset``, ``--scan-shape``, calibration);
    a unit written after the scan step (``--scan-step 0.25Å``) sets the scan unit."""
    from ..dataset import Calibration

    options: dict[str, Any] = {}
    if getattr(args, "dataset", None):
        options["dataset"] = args.dataset
    if getattr(args, "scan_shape", None):
        options["scan_shape"] = tuple(args.scan_shape)
    calibration = given(Calibration, args)
    if "scan_step" in calibration:
        steps = calibration["scan_step"]
        if len(steps) not in (1, 2):
            raise UsageError(f"--scan-step takes one value or two (y x), got {len(steps)}")
        units = {unit for _, unit in steps if unit is not None}
        if len(units) > 1 or units & {"px", "mrad", "1/Å"}:
            raise UsageError(f"--scan-step: expected one length unit (Å, nm, pm, µm), got {sorted(units)}")
        values = tuple(value for value, _ in steps)
        calibration["scan_step"] = values[0] if len(values) == 1 else values
        if units:
            calibration.setdefault("scan_unit", units.pop())
    options.update(calibration)
    return options


def _read(args: argparse.Namespace) -> Any:
    from ..io import read

    return read(args.file, **read_options(args))


# -- commands --------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace, show: Any) -> int:
    from ..workflows.demo import demo_events

    return show(demo_events(args.out, defect=None if args.defect == "none" else args.defect, quick=args.quick))


def cmd_info(args: argparse.Namespace, show: Any) -> int:
    from ..units import format_bytes

    ds = _read(args)
    lines = [f"file:        {ds.source}", f"format:      {ds.metadata.get('format')}",
             f"shape:       {ds.shape} (scan_y, scan_x, det_y, det_x), {ds.dtype}, {format_bytes(ds.nbytes)}"]
    lines += [f"{key + ':':<16}{value}" for key, value in ds.calibration.to_dict().items()]
    print("\n".join(lines))
    return 0


def cmd_image(args: argparse.Namespace, show: Any) -> int:
    from ..workflows.com import ImageRun

    return show(ImageRun(args.file, args.out, read_options=read_options(args), client=args.scheduler).events())


def cmd_com(args: argparse.Namespace, show: Any) -> int:
    from ..processing.com import COMOptions
    from ..workflows.com import COMRun

    options = _options(COMOptions, args)
    return show(COMRun(args.file, args.out, options=options, read_options=read_options(args),
                       client=args.scheduler).events())


def cmd_preprocess(args: argparse.Namespace, show: Any) -> int:
    from ..processing.chain import PreprocessOptions
    from ..workflows.preprocessing import PreprocessRun

    options = _options(PreprocessOptions, args)
    return show(PreprocessRun(args.file, args.out, options=options, read_options=read_options(args)).events())


def cmd_run(args: argparse.Namespace, show: Any) -> int:
    from ..processing.com import COMOptions
    from ..rvae.config import RVAEConfig
    from ..workflows.stem import RunOptions, STEMRun

    config = _options(RVAEConfig, args)
    resume = args.resume if args.resume is not None else not args.fresh
    run = STEMRun(args.file, args.out, config=config, options=_options(RunOptions, args),
                  com_options=_options(COMOptions, args), read_options=read_options(args), roi=args.roi,
                  resume=resume, client=args.scheduler, workers=args.workers)
    return show(run.events())


def cmd_atoms(args: argparse.Namespace, show: Any) -> int:
    from ..rvae.config import RVAEConfig
    from ..workflows.atoms import RVAE_FIELDS, AtomOptions, AtomRun

    options = _options(AtomOptions, args)
    reading: dict[str, Any] = {"dataset": args.dataset}
    if args.pixel_size is not None:
        size, unit = args.pixel_size
        if unit in ("px", "mrad", "1/Å"):
            raise UsageError(f"--pixel-size must be a length (0.16Å, 0.016nm; a bare number is Å), got {unit}")
        reading.update(pixel_size=size, unit=unit or "Å")
    rvae = {k: v for k, v in given(RVAEConfig, args, RVAE_FIELDS).items()}
    return show(AtomRun(args.file, args.out, options=options, rvae=rvae, read_options=reading).events())


def _options(cls: type, args: argparse.Namespace) -> Any:
    """The options object the flags describe; its own checks are usage errors."""
    try:
        return options_from_args(cls, args)
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None


def _length(text: str) -> tuple[float, str | None]:
    from ..units import parse_quantity

    try:
        return parse_quantity(text, "--pixel-size")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- the parser -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from ..processing.chain import PreprocessOptions
    from ..processing.com import COMOptions
    from ..rvae.config import RVAEConfig
    from ..workflows.atoms import RVAE_FIELDS, AtomOptions
    from ..workflows.stem import RunOptions

    parser = argparse.ArgumentParser(prog="stem-rvae", description="4D-STEM and atom-resolved image series: "
                                     "COM/DPC maps and rotationally invariant VAE maps, headless.")
    parser.add_argument("--version", action="version", version=_version())
    # -v/-q before or after the command (stem-rvae -q run … or stem-rvae run … -q); after it, the
    # defaults are suppressed so that a command without them keeps what was given before it
    common = argparse.ArgumentParser(add_help=False)
    for target, default in ((parser, (0, False)), (common, (argparse.SUPPRESS, argparse.SUPPRESS))):
        talk = target.add_mutually_exclusive_group()
        talk.add_argument("-v", "--verbose", action="count", default=default[0],
                          help="say more on stderr (every epoch; -vv: debugging detail)")
        talk.add_argument("-q", "--quiet", action="store_true", default=default[1],
                          help="print only the paths of the files written (and errors)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", parents=[common], help="the whole pipeline on built-in simulated graphene (~2 min on 2 cores; "
                                    "--quick under 1 min)")
    p.add_argument("--out", default="out", help="output folder (default: out)")
    p.add_argument("--defect", default="vacancy", choices=["none", "vacancy", "si"],
                   help="the defect in the simulated lattice (default: vacancy)")
    p.add_argument("--quick", action="store_true", help="a 16 × 16 scan and a short training")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("info", parents=[common], help="shape and calibration of a file (reads no data)")
    add_file(p)
    p.set_defaults(func=cmd_info)

    def add_out(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument("--out", default="out", help=f"output folder, or the {what} file itself (NAME.h5); "
                                                    "default: out")

    def add_scheduler(p: Any) -> None:
        p.add_argument("--scheduler", metavar="ADDRESS",
                       help="dask.distributed scheduler (tcp://host:8786): the passes over the data run on its "
                            "workers, which must see the file")

    p = sub.add_parser("image", parents=[common], help="virtual images (sum, ADF) as HDF5 and PNG")
    add_file(p)
    add_out(p, "images")
    add_scheduler(p)
    p.set_defaults(func=cmd_image)

    p = sub.add_parser("com", parents=[common], help="centre-of-mass / DPC maps (HDF5 + PNG)")
    add_file(p)
    add_out(p, "COM results")
    add_options(p.add_argument_group("centre of mass"), COMOptions)
    add_scheduler(p)
    p.set_defaults(func=cmd_com)

    p = sub.add_parser("preprocess", parents=[common], help="crop, bin, repair, centre, transform, subtract the mean, PCA: a new "
                                          "4D-STEM file (EMD 1.0 HDF5)")
    add_file(p)
    p.add_argument("--out", required=True, help="the new file (NAME.h5); never the input")
    add_options(p.add_argument_group("preprocessing"), PreprocessOptions)
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("run", parents=[common], help="read → COM → bin → rVAE → results.h5 + overview PNG")
    add_file(p)
    add_out(p, "results")
    add_options(p.add_argument_group("data for the rVAE"), RunOptions)
    add_options(p.add_argument_group("rVAE"), RVAEConfig)
    add_options(p.add_argument_group("centre of mass (for the latent–COM correlation and the results file)"),
                COMOptions)
    p.add_argument("--roi", help="boolean .npy mask (scan_y, scan_x) of the training positions")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", metavar="CHECKPOINT", default=None,
                       help="continue the training saved in CHECKPOINT (by default a run continues from "
                            "RESULTS.checkpoint.pt beside its output when that exists and fits)")
    again.add_argument("--fresh", action="store_true",
                       help="start afresh, ignoring (and replacing) a checkpoint of an earlier run")
    cluster = p.add_mutually_exclusive_group()
    add_scheduler(cluster)
    cluster.add_argument("--workers", type=int, default=None, metavar="N",
                         help="the COM pass and the encoding on a local cluster of N worker processes")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("atoms", parents=[common], help="atom-resolved image series: atoms → windows → rVAE → per-atom angle and "
                                     "latents (HDF5 table + overview PNG)")
    p.add_argument("file", help="image series or image: TIFF stack, .npy, HDF5/EMD, zarr, .dm3/.dm4, Velox .emd")
    p.add_argument("--dataset", help="path of the image dataset inside an HDF5 file or zarr store")
    p.add_argument("--pixel-size", type=_length, metavar="SIZE",
                   help="pixel size overriding the file's: 0.16Å, 0.016nm (a bare number is Å)")
    add_out(p, "atom results")
    add_options(p.add_argument_group("atoms and windows"), AtomOptions)
    add_options(p.add_argument_group("rVAE (over the preset)"), RVAEConfig, only=RVAE_FIELDS)
    p.set_defaults(func=cmd_atoms)

    return parser


def main(argv: list[str] | None = None) -> int:
    import warnings

    from ..io import ReadError
    from .render import Renderer

    parser = build_parser()
    args = parser.parse_args(argv)
    other_rank = int(os.environ.get("RANK", "0") or 0) > 0   # torchrun: rank 0 speaks for all
    renderer = Renderer(verbosity=-1 if args.quiet or other_rank else args.verbose)
    shown = warnings.showwarning
    warnings.showwarning = renderer.warning
    try:
        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and args.func is not cmd_run:
            raise UsageError(f"torchrun starts several processes for `stem-rvae run` only; run "
                             f"`stem-rvae {args.command}` as one process")
        return int(args.func(args, renderer.show) or 0)
    except UsageError as exc:
        parser.exit(2, f"stem-rvae {args.command}: error: {' '.join(str(exc).split())}\n")
    except (ReadError, ValueError, FileNotFoundError, OSError, MemoryError) as exc:
        text = "ran out of memory" if isinstance(exc, MemoryError) else " ".join(str(exc).split())
        renderer.error(text)
        return 1
    except KeyboardInterrupt:
        renderer.error("interrupted; a run continues from its checkpoint when started again")
        return 130
    finally:
        renderer.close()
        warnings.showwarning = shown
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
