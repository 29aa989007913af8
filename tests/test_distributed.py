"""A small NLSN trains under DistributedDataParallel: 2 processes, gloo, on the CPU with the
torch backend (and, where there is a GPU, both processes on it with the Triton kernels).

Each rank trains on its own batch with its own hash generator (seeded by rank, as the
README recommends). After the steps: DDP raised no unused-parameter error (it would, at
the second step, if a parameter got no gradient, since find_unused_parameters is off),
every trainable parameter received a gradient at every step, the ranks hold identical
parameters, and the loss averaged over the ranks went down.

The test runs this file as a script, once per rank, and compares what the ranks saved.
"""
import argparse
import os
import pathlib
import subprocess
import sys

import pytest
import torch

WORLD_SIZE = 2
STEPS = 6
# (backend, device); Triton's CPU interpreter would take minutes here.
SETUPS = [("torch", "cpu")] + ([("triton", "cuda")] if torch.cuda.is_available() else [])


def train(rank: int, world_size: int, init_file: str, backend: str, device: str, result: str) -> None:
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    from nlsa_triton.models import NLSN

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.manual_seed(rank)  # different initial weights per rank: DDP must broadcast rank 0's
    # n_resblocks=8 gives two NLSA blocks (one opens the body, one follows the 8th block);
    # a 12 x 12 map with chunk_size 16 has 9 chunks, so hashing really selects keys.
    model = NLSN(scale=2, n_feats=8, n_resblocks=8, n_hashes=2, chunk_size=16, backend=backend).to(device)
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.Adam(ddp.parameters(), lr=2e-3)
    data = torch.Generator().manual_seed(100 + rank)
    low = torch.rand(2, 3, 12, 12, generator=data).to(device)
    high = F.interpolate(low, scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1)
    hashing = torch.Generator(device).manual_seed(1000 + rank)  # each rank draws its own rotations

    losses = []
    for _ in range(STEPS):
        optimizer.zero_grad(set_to_none=True)
        loss = F.l1_loss(ddp(low, generator=hashing), high)
        loss.backward()
        missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, f"parameters without a gradient: {missing}"
        optimizer.step()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        losses.append(mean_loss.item() / world_size)
    torch.save({"losses": losses, "state_dict": model.cpu().state_dict()}, result)
    dist.destroy_process_group()


@pytest.mark.parametrize("backend, device", SETUPS)
def test_ddp_training_two_processes(tmp_path, backend, device):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)  # neither setup runs Triton's interpreter
    results = [tmp_path / f"rank{rank}.pt" for rank in range(WORLD_SIZE)]
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, "--rank", str(rank), "--world-size", str(WORLD_SIZE),
             "--init-file", str(tmp_path / "init"), "--backend", backend, "--device", device,
             "--result", str(results[rank])],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for rank in range(WORLD_SIZE)
    ]
    outputs = []
    for worker in workers:
        try:
            outputs.append(worker.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for w in workers:
                w.kill()
            raise
    for rank, worker in enumerate(workers):
        assert worker.returncode == 0, f"rank {rank} failed:\n{outputs[rank]}"

    saved = [torch.load(path) for path in results]
    assert saved[0]["losses"] == saved[1]["losses"]  # all-reduced: the same numbers on both ranks
    losses = saved[0]["losses"]
    assert losses[-1] < losses[0], losses
    for name, tensor in saved[0]["state_dict"].items():
        assert torch.equal(tensor, saved[1]["state_dict"][name]), name


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="one rank of test_ddp_training_two_processes")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--init-file", required=True)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--result", required=True)
    args = parser.parse_args()
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    train(args.rank, args.world_size, args.init_file, args.backend, args.device, args.result)
