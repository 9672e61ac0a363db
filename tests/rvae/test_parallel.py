"""Data-parallel training (rvae.parallel): shares of a minibatch on two gloo ranks give the
gradient of the whole minibatch, so every rank takes the step one process would take."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from napari_4dstem_rvae.rvae import RVAEConfig
from napari_4dstem_rvae.rvae.model import RVAE

CONFIG = RVAEConfig(encoder_hidden=(16,), decoder_hidden=(16, 16), likelihood="gaussian", seed=3)


def _batch() -> torch.Tensor:
    rng = np.random.default_rng(0)
    return torch.from_numpy(rng.random((7, 8, 8)).astype(np.float32))   # 7: unequal shares (4 + 3)


def _gradients(model: RVAE) -> dict[str, np.ndarray]:
    return {name: p.grad.numpy().copy() for name, p in model.named_parameters() if p.grad is not None}


def _rank(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from napari_4dstem_rvae.rvae import parallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_WORLD_SIZE="2")
    torch.set_num_threads(1)
    assert parallel.init_from_environment("cpu") == (rank, 2)
    model = RVAE(CONFIG, (8, 8))
    index = torch.arange(7)
    mine = parallel.local_share(index)
    x, y = model.prepare(_batch()[mine])
    loss, _ = model.loss(x, y, sample=False)
    loss.backward()
    total = parallel.average_gradients(model, loss.item(), mine.numel(), index.numel())
    np.savez(f"{out}/rank{rank}.npz", loss=total, n=mine.numel(), **_gradients(model))
    dist.destroy_process_group()


@pytest.mark.slow  # starts two processes (gloo ranks)
def test_two_ranks_share_a_minibatch_and_get_its_whole_gradient(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank, args=(port, str(tmp_path)), nprocs=2, start_method="spawn", join=True)
    model = RVAE(CONFIG, (8, 8))      # one process, the whole minibatch
    x, y = model.prepare(_batch())
    loss, _ = model.loss(x, y, sample=False)
    loss.backward()
    want = _gradients(model)
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in (0, 1)]
    assert [int(r["n"]) for r in ranks] == [4, 3]              # each rank saw only its share
    for r in ranks:
        assert abs(float(r["loss"]) - loss.item()) < 1e-4 * abs(loss.item())
        for name, grad in want.items():
            np.testing.assert_allclose(r[name], grad, rtol=1e-4, atol=1e-6, err_msg=name)
    # and not merely each rank's own half: the share alone gives another gradient
    half = RVAE(CONFIG, (8, 8))
    x, y = half.prepare(_batch()[0::2])   # rank 0's share alone
    loss_half, _ = half.loss(x, y, sample=False)
    loss_half.backward()
    assert not np.allclose(_gradients(half)["dec_out.weight"], want["dec_out.weight"], rtol=1e-3)
