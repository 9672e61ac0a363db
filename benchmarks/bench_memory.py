"""Peak resident memory (RSS) of ``compute_com`` on a memory-mapped ``.npy`` file larger than
the memory budget (issue: a batch scheduler that limits RSS must not kill a streamed
reduction because the pages of a mapping kept open count as resident memory).

Writes a float32 ``.npy`` of ``--factor`` × ``--budget-mib`` (default 4 × 512 MiB = 2 GiB),
then runs ``io.read`` + ``compute_com`` in a fresh subprocess per mode and prints each
one's peak RSS (``ru_maxrss``) against the budget:

- ``reader``: the package as it is (each chunk read through a mapping released after the
  copy);
- ``baseline``: the same reader with one mapping kept open for the whole pass (the reader
  before this fix): its file-backed pages stay resident and RSS grows with the file.

Both modes run one after the other (never at the same time: the machine is shared). The
file is freshly written, so it is read from the page cache, which is not the process's
RSS.

Usage::

    python benchmarks/bench_memory.py                    # 2 GiB file, 512 MiB budget
    python benchmarks/bench_memory.py --budget-mib 256 --factor 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

CHILD = r"""
import json, sys, time, warnings
import numpy as np
from napari_4dstem_rvae import io
from napari_4dstem_rvae.io import common
from napari_4dstem_rvae.processing.com import compute_com

if sys.argv[2] == "baseline":
    kept = {}
    original = common.MemmapSource._array
    def _array(self):  # one mapping kept open for the whole pass (the old reader)
        if id(self) not in kept:
            kept[id(self)] = original(self)
        return kept[id(self)]
    common.MemmapSource._array = _array
    common.MemmapSource.__getitem__ = lambda self, index: np.array(self._array()[index])

def status_mib(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) / 1024

def rss_mib():
    return status_mib("VmRSS")

start = rss_mib()
ds = io.read(sys.argv[1])
t = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    result = compute_com(ds, rotation="none") if False else compute_com(ds)
seconds = time.perf_counter() - t
peak = status_mib("VmHWM")  # this process's peak RSS (ru_maxrss would carry the parent's over exec)
print(json.dumps({"start": start, "peak": peak, "end": rss_mib(), "seconds": seconds,
                  "finite": bool(np.isfinite(result.magnitude).all())}))
"""


def write_file(path: str, size_bytes: int, det: int) -> tuple[int, ...]:
    n = max(1, int(np.sqrt(size_bytes / (det * det * 4))))
    shape = (n, n, det, det)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
              "shape": shape}
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:det, :det] - det / 2
    disk = ((yy**2 + xx**2) < (det / 5) ** 2).astype(np.float32) * 20
    with open(path, "wb") as fh:  # written row by row: this process stays small
        np.lib.format.write_array_header_1_0(fh, header)
        for _ in range(n):
            fh.write(rng.poisson(disk, size=(n, det, det)).astype(np.float32).tobytes())
    return shape


def run(path: str, mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, path, mode], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-mib", type=float, default=512)
    parser.add_argument("--factor", type=float, default=4.0, help="file size / budget")
    parser.add_argument("--det", type=int, default=128)
    args = parser.parse_args()
    budget = args.budget_mib
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "big.npy")
        shape = write_file(path, int(args.factor * budget * 2**20), args.det)
        size = os.path.getsize(path) / 2**20
        print(f"file {shape} float32: {size:.0f} MiB = {size / budget:.1f} × the budget of {budget:.0f} MiB")
        results = {mode: run(path, mode) for mode in ("reader", "baseline")}
    for mode, r in results.items():
        verdict = "under" if r["peak"] < budget else "OVER"
        print(f"{mode:9s} peak RSS {r['peak']:7.0f} MiB ({verdict} the budget; {r['peak'] / budget:.2f} × budget), "
              f"after imports {r['start']:.0f} MiB, at the end {r['end']:.0f} MiB, {r['seconds']:.1f} s, "
              f"maps finite: {r['finite']}")
    ratio = results["baseline"]["peak"] / results["reader"]["peak"]
    print(f"peak RSS baseline / reader: {ratio:.1f} ×")


if __name__ == "__main__":
    main()
