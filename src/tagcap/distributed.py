"""Which process of a distributed run this is, for the few places that must know (sharded
extraction and indexing, writing outputs once). Training itself is distributed by Lightning; this
module only reads what the launchers (torchrun, Lightning, SLURM) put in the environment and, for
`tagcap extract` and `tagcap index` under torchrun, joins the process group they describe (gloo:
barriers and a few pickled objects, never tensors on a device)."""

from __future__ import annotations

import os
import time


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() else None


def rank_and_world() -> tuple[int, int]:
    """(global rank, world size): from the process group if one is running, else from the environment."""
    dist = _dist()
    if dist is not None and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def in_group() -> bool:
    dist = _dist()
    return dist is not None and dist.is_initialized()


def init_from_env() -> bool:
    """Join the process group a launcher described (RANK, WORLD_SIZE, MASTER_ADDR/PORT); gloo, since
    extraction only needs barriers and indexing small pickled results. False when this is a single process."""
    dist = _dist()
    if dist is None or int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return False
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return True


def barrier() -> None:
    if in_group() and _dist().get_world_size() > 1:
        _dist().barrier()


def wait_for(predicate, what: str, timeout_s: float = 24 * 3600, poll_s: float = 2.0) -> None:
    """Block until `predicate()` holds (another rank is producing `what`)."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"waited {timeout_s:.0f} s for rank 0 to finish {what}")
        time.sleep(poll_s)


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """The contiguous rows [lo, hi) of n that `rank` of `world` handles (sizes differ by at most one)."""
    return n * rank // world, n * (rank + 1) // world


def progress_name(rank: int, world: int) -> str:
    return "progress.json" if world == 1 else f"progress-{rank}-of-{world}.json"


def broadcast_from_first(obj):
    """Rank 0's `obj` (any picklable value) on every rank of the group."""
    box = [obj]
    _dist().broadcast_object_list(box, src=0)
    return box[0]


def gather_to_first(obj) -> list | None:
    """Every rank's `obj`, in rank order, on rank 0; None on the other ranks."""
    rank, world = rank_and_world()
    out = [None] * world if rank == 0 else None
    _dist().gather_object(obj, out, dst=0)
    return out


def leave() -> None:
    """Leave the process group once every rank is done. A process that exits while the others still
    hold connections to it can abort in gloo's threads ("terminate called without an active exception")."""
    if in_group():
        barrier()
        _dist().destroy_process_group()
