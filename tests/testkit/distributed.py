"""Real torch.distributed: gloo process groups of spawned processes."""

import gc

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _distributed_entry(rank, worker, world_size, store, out):
    torch.set_num_threads(1)  # one core per rank, as Ray Train gives a CPU worker
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=world_size)
    try:
        result = worker(rank)
        if rank == 0:
            torch.save(result, out)
    finally:
        # A DDP module sits in reference cycles: left to the interpreter's exit, it is
        # freed after the process group, and the process aborted there ("terminate called
        # without an active exception", SIGABRT; 1 run in 12 to 50 of test_pruning_ddp).
        gc.collect()
        dist.destroy_process_group()


def run_distributed(worker, world_size, folder):
    """Run the module-level function `worker(rank)` in a gloo process group of
    `world_size` spawned processes (files under `folder`); returns what rank 0 returned
    (tensors, plain containers)."""
    out = folder / "rank0.pt"
    mp.spawn(_distributed_entry, nprocs=world_size,
             args=(worker, world_size, str(folder / "store"), str(out)))
    return torch.load(out, weights_only=True)
