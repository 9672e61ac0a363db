"""rVAE engine vs a straightforward reference implementation, on simulated graphene.

Run: ``python benchmarks/bench_rvae.py [--scan 32] [--epochs N] [--ref-seconds S] [--quick]``

Data: :func:`napari_4dstem_rvae.simulate.graphene` (60 kV, 31 mrad, 64 × 64 pixel
patterns, 32 × 32 = 1,024 probe positions by default), mean pattern subtracted as in the
study; COM magnitude and angle from :func:`napari_4dstem_rvae.processing.compute_com`.

Engines (same architecture: encoder and decoder of 2 × 128 tanh units, 2 content latents,
rotation only, Gaussian likelihood):

- **ours** — :mod:`napari_4dstem_rvae.rvae` with its defaults.
- **reference** — written the way the existing tools do it: the decoder MLP evaluated at
  every detector pixel on coordinates concatenated with z, a ``DataLoader`` over a
  ``TensorDataset``, data scaled to unit standard deviation, Adam; run with our learning
  rate, batch size and rotation prior, so that only the implementation differs
  (``--ref-lr 1e-4 --ref-batch 32`` gives atomai's settings).
- **atomai** — its ``rVAE`` if installed (not a dependency; skipped otherwise).

Printed: seconds per epoch (median of epochs interleaved between the engines in one
process, so machine load affects both alike) and their ratio; for the quality runs, each in
a fresh process: the max |r| between a latent map and the COM magnitude (and the angle–COM
angle circular correlation) against wall time, and the peak resident memory of that process
(and how much training added to it).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import time
from typing import Any

import numpy as np


# --------------------------------------------------------------------------------------
# data
def make_data(scan: int, seed: int = 0) -> dict[str, Any]:
    from napari_4dstem_rvae.processing import compute_com, subtract_mean_pattern
    from napari_4dstem_rvae.simulate import graphene

    ds = graphene(scan_shape=(scan, scan), det_shape=(64, 64), seed=seed)
    com = compute_com(ds)
    sub = subtract_mean_pattern(ds)
    return {"data": np.ascontiguousarray(np.asarray(sub.data, dtype=np.float32)),
            "com_magnitude": np.hypot(com.x, com.y), "com_angle": np.arctan2(com.y, com.x)}


def correlations(latents: np.ndarray, angle: np.ndarray, data: dict[str, Any]) -> tuple[float, float]:
    from napari_4dstem_rvae.rvae import circular_correlation, pearson_r

    r = max(abs(pearson_r(z, data["com_magnitude"])) for z in latents)
    return r, circular_correlation(angle, data["com_angle"])


def rss_mb() -> float:
    """Peak resident memory of this process so far (MB). On Linux VmHWM, which starts afresh
    with the process (ru_maxrss would carry the parent's peak over fork + exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def current_rss_mb() -> float:
    """Resident memory now (MB; Linux), else the peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return rss_mb()


# --------------------------------------------------------------------------------------
# the reference implementation (the anchors' way)
class Reference:
    """spatial-VAE as the existing packages write it: concatenated [x′; z] at every pixel."""

    def __init__(self, data: np.ndarray, latent_dim: int = 2, hidden: int = 128, lr: float = 2e-3,
                 batch_size: int = 64, rotation_prior: float = math.pi, seed: int = 0,
                 test_fraction: float = 0.25):
        import torch
        from torch import nn

        self.torch = torch
        sy, sx, ky, kx = data.shape
        flat = data.reshape(sy * sx, ky * kx)
        self.scale = float(flat.std())
        self.x_all = torch.from_numpy(flat / self.scale)
        rng = np.random.default_rng(seed)
        order = rng.permutation(sy * sx)
        train = np.sort(order[int(round(test_fraction * sy * sx)):])
        self.shape = (sy, sx)
        gen = torch.Generator().manual_seed(seed)
        self.loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(self.x_all[train]), batch_size=batch_size, shuffle=True,
            generator=gen)
        # coordinate grid in [-1, 1], as atomai/pyroVED build it
        xs = torch.linspace(-1, 1, kx)
        ys = torch.linspace(1, -1, ky)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        self.grid = torch.stack([gx.ravel(), gy.ravel()], 1)
        self.k = latent_dim
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.encoder = nn.Sequential(nn.Linear(ky * kx, hidden), nn.Tanh(), nn.Linear(hidden, hidden),
                                         nn.Tanh(), nn.Linear(hidden, 2 * (1 + latent_dim)))
            self.decoder = nn.Sequential(nn.Linear(2 + latent_dim, hidden), nn.Tanh(),
                                         nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        params = list(self.encoder.parameters()) + list(self.decoder.parameters())
        self.opt = torch.optim.Adam(params, lr=lr)
        self.prior = rotation_prior
        self.gen = torch.Generator().manual_seed(seed + 1)

    def epoch(self) -> float:
        torch = self.torch
        total = 0.0
        for (x,) in self.loader:
            out = self.encoder(x)
            mu, log_std = out[:, :1 + self.k], out[:, 1 + self.k:]
            sample = mu + torch.randn(mu.shape, generator=self.gen) * log_std.exp()
            theta, z = sample[:, 0], sample[:, 1:]
            c, s = torch.cos(theta), torch.sin(theta)
            rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
            coords = torch.einsum("pi,bij->bpj", self.grid, rot)             # every pixel
            inputs = torch.cat([coords, z[:, None].expand(-1, coords.shape[1], -1)], -1)
            recon = self.decoder(inputs).squeeze(-1)
            nll = 0.5 * ((x - recon) ** 2).sum(1)
            var = (2 * log_std).exp()
            kl_z = 0.5 * (var[:, 1:] + mu[:, 1:] ** 2 - 1 - 2 * log_std[:, 1:]).sum(1)
            kl_t = (math.log(self.prior) - log_std[:, 0] + (var[:, 0] + mu[:, 0] ** 2) / (2 * self.prior**2)
                    - 0.5)
            loss = (nll + kl_z + kl_t).mean()
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            total += float(loss.detach()) * x.shape[0]
        return total / len(self.loader.dataset)

    def maps(self) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        with torch.no_grad():
            out = torch.cat([self.encoder(self.x_all[i:i + 256]) for i in range(0, len(self.x_all), 256)])
        angle = out[:, 0].numpy().reshape(self.shape)
        latents = out[:, 1:1 + self.k].numpy().T.reshape(self.k, *self.shape)
        return latents, angle


# --------------------------------------------------------------------------------------
# engines as uniform "one epoch" / "maps" objects
def ours(data: np.ndarray, **config: Any):
    from napari_4dstem_rvae.rvae import RVAEConfig, Trainer

    trainer = Trainer(data, RVAEConfig(**config))
    state = {"gen": None}

    def epoch() -> None:
        if state["gen"] is None:
            state["gen"] = trainer.run(epochs=10**9)
        while next(state["gen"]).kind != "epoch":
            pass

    def maps() -> tuple[np.ndarray, np.ndarray]:
        m = trainer.maps()
        return m.latents, m.angle

    return trainer, epoch, maps


def reference(data: np.ndarray, lr: float, batch: int):
    ref = Reference(data, lr=lr, batch_size=batch)
    return ref, ref.epoch, ref.maps


def atomai_engine(data: np.ndarray):
    import atomai as aoi  # noqa: F401  (optional)

    sy, sx, ky, kx = data.shape
    x = data.reshape(-1, ky, kx)
    x = (x - x.min()) / (x.max() - x.min())
    model = aoi.models.rVAE((ky, kx), latent_dim=2, numlayers_encoder=2, numhidden_encoder=128,
                            numlayers_decoder=2, numhidden_decoder=128)

    def epoch() -> None:
        model.fit(x, training_cycles=1, batch_size=100, loss="mse")

    def maps() -> tuple[np.ndarray, np.ndarray]:
        z_mean, _ = model.encode(x)
        return z_mean[:, 1:].T.reshape(-1, sy, sx), z_mean[:, 0].reshape(sy, sx)

    return model, epoch, maps


# --------------------------------------------------------------------------------------
def quality_worker(name: str, args: dict[str, Any], queue: Any) -> None:
    """One engine in a fresh process: train, tracking |r| over wall time and peak memory."""
    import torch

    torch.set_num_threads(args["threads"])
    with np.load(args["data_file"]) as f:      # simulated once by the parent
        data = {key: f[key] for key in f.files}
    base = current_rss_mb()
    if name == "ours":
        from napari_4dstem_rvae.rvae import RVAEConfig, Trainer

        trainer = Trainer(data["data"], RVAEConfig(epochs=args["epochs"], correlate_every=args["every"],
                                                   epoch_selection="last",
                                                   seed=args["seed"]),
                          com_magnitude=data["com_magnitude"], com_angle=data["com_angle"])
        curve = []
        start = time.perf_counter()
        for event in trainer.run():
            if event.diagnostics is not None:
                curve.append((event.epoch, time.perf_counter() - start, event.diagnostics.max_abs_r,
                              event.diagnostics.angle_rho))
        wall = time.perf_counter() - start
    else:
        if name == "reference":
            _, epoch, maps = reference(data["data"], args["ref_lr"], args["ref_batch"])
        else:
            _, epoch, maps = atomai_engine(data["data"])
        curve = []
        start = time.perf_counter()
        n = 0
        while time.perf_counter() - start < args["ref_seconds"]:
            epoch()
            n += 1
            if n % args["ref_every"] == 0:
                t = time.perf_counter() - start
                curve.append((n, t, *correlations(*maps(), data)))
        wall = time.perf_counter() - start
        if not curve or curve[-1][0] != n:
            curve.append((n, wall, *correlations(*maps(), data)))
    queue.put({"name": name, "curve": curve, "wall": wall, "peak_mb": rss_mb(), "base_mb": base})


def run_in_process(name: str, args: dict[str, Any]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=quality_worker, args=(name, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def interleaved_epoch_times(data: np.ndarray, args: dict[str, Any]) -> dict[str, float]:
    engines = {"ours": ours(data, seed=args["seed"]),
               "reference": reference(data, args["ref_lr"], args["ref_batch"])}
    for _, epoch, _ in engines.values():   # warm-up
        epoch()
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(args["rounds"]):
        for name, (_, epoch, _) in engines.items():
            start = time.perf_counter()
            epoch()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scan", type=int, default=32, help="scan side (positions = scan²)")
    parser.add_argument("--epochs", type=int, default=None, help="our epochs (default: RVAEConfig)")
    parser.add_argument("--every", type=int, default=10, help="our diagnostics every N epochs")
    parser.add_argument("--ref-seconds", type=float, default=None,
                        help="wall time of the reference quality run (default: as long as ours)")
    parser.add_argument("--ref-every", type=int, default=2)
    parser.add_argument("--ref-lr", type=float, default=2e-3)
    parser.add_argument("--ref-batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing epochs per engine")
    parser.add_argument("--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="timing only, no quality runs")
    args = vars(parser.parse_args(argv))
    import torch

    from napari_4dstem_rvae.rvae import RVAEConfig

    if args["epochs"] is None:
        args["epochs"] = RVAEConfig().epochs
    torch.set_num_threads(args["threads"])
    data = make_data(args["scan"], args["seed"])
    n = data["data"].shape[0] * data["data"].shape[1]
    print(f"simulated graphene: {n} positions of 64×64, {args['threads']} threads, torch {torch.__version__}")
    folder = tempfile.mkdtemp(prefix="bench_rvae_")
    try:
        args["data_file"] = os.path.join(folder, "graphene.npz")
        np.savez(args["data_file"], **data)
        times = interleaved_epoch_times(data["data"], args)
        print("\nseconds per epoch (median of interleaved epochs, 75 % of positions trained per epoch)")
        print(f"  ours       {times['ours']:8.3f} s")
        print(f"  reference  {times['reference']:8.3f} s   → ours is "
              f"{times['reference'] / times['ours']:.1f}× faster")
        if not args["quick"]:
            report(args)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def report(args: dict[str, Any]) -> None:
    results = [run_in_process("ours", args)]
    if args["ref_seconds"] is None:
        args["ref_seconds"] = results[0]["wall"]
    results.append(run_in_process("reference", args))
    try:
        import atomai  # noqa: F401

        results.append(run_in_process("atomai", args))
    except ImportError:
        print("\natomai: not installed (skipped)")
    print("\nquality (each engine in a fresh process): max |r| latent–COM magnitude, ρ angle–COM angle")
    for res in results:
        last = res["curve"][-1]
        best = max(res["curve"], key=lambda c: c[2])
        first99 = next((c for c in res["curve"] if c[2] >= 0.99), None)
        print(f"  {res['name']:10s} {last[0]:5d} epochs in {res['wall']:6.1f} s: final |r| {last[2]:.4f}, "
              f"ρ {last[3]:+.3f}; best |r| {best[2]:.4f} (epoch {best[0]}, {best[1]:.0f} s); "
              f"|r| ≥ 0.99 {'at %.0f s' % first99[1] if first99 else 'not reached'}; "
              f"peak memory {res['peak_mb']:.0f} MB ({res['peak_mb'] - res['base_mb']:+.0f} MB for training "
              f"over the {res['base_mb']:.0f} MB process with the data loaded)")
    print("\n|r| over time")
    for res in results:
        points = ", ".join(f"{c[1]:.0f}s:{c[2]:.3f}" for c in res["curve"])
        print(f"  {res['name']:10s} {points}")


if __name__ == "__main__":
    main()
