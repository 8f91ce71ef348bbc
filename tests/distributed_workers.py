"""Process entry points for the distributed tests, in a light module (spawned children import only this)."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist

from invariance_lightning.metrics import TransformConsistency
from invariance_lightning.metrics.published import ProtocolTotals


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def metric_worker(rank: int, world_size: int, port: int, logits: torch.Tensor, target: torch.Tensor, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        metric = TransformConsistency(num_frames=logits.shape[1])
        # rank 0 takes 7 images in two updates, rank 1 the other 6 (uneven shards)
        shard = slice(0, 7) if rank == 0 else slice(7, None)
        metric.update(logits[shard][:3], target[shard][:3])
        metric.update(logits[shard][3:], target[shard][3:])
        result = metric.compute()
        # a second metric for which rank 1 sees nothing at all
        lonely = TransformConsistency(num_frames=logits.shape[1])
        if rank == 0:
            lonely.update(logits, target)
        lonely_result = lonely.compute()
        if rank == 1:
            out["uneven"] = {k: v.clone() for k, v in result.items()}
            out["empty_rank"] = {k: v.clone() for k, v in lonely_result.items()}
    finally:
        dist.destroy_process_group()


def protocol_worker(
    rank: int,
    world_size: int,
    port: int,
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    names: tuple[str, ...],
    out: dict,
) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        indices = torch.arange(len(images))
        results = {}
        # uneven shards (rank 0 takes 5 images in two batches), then one where rank 1 has nothing to count
        for case, shard in (
            ("uneven", slice(0, 5) if rank == 0 else slice(5, None)),
            ("empty_rank", slice(None) if rank == 0 else slice(0, 0)),
        ):
            totals = ProtocolTotals(names, seed=3, normalize=None, batch_size=16)
            part = indices[shard]
            for batch in (part[:2], part[2:]):
                totals.update(model, images[batch], targets[batch], batch)
            results[case] = totals.compute()
        if rank == 1:
            out.update(results)
    finally:
        dist.destroy_process_group()


def lps_gradient_worker(rank: int, world_size: int, port: int, images: torch.Tensor, target: torch.Tensor, out: dict):
    """One DDP backward of the circularly padded LPS ResNet-8 on this rank's half of the batch; rank 0 reports the
    all-reduced gradients."""
    from torch.nn.parallel import DistributedDataParallel

    from invariance_lightning.models import cifar_resnet

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        model = DistributedDataParallel(cifar_resnet(8, downsample="lps", padding_mode="circular").train())
        shard = slice(rank * len(images) // world_size, (rank + 1) * len(images) // world_size)
        torch.manual_seed(100 + rank)  # the Gumbel noise of this rank's forward
        torch.nn.functional.cross_entropy(model(images[shard]), target[shard]).backward()
        if rank == 0:
            out["grads"] = {name: p.grad.clone() for name, p in model.module.named_parameters()}
    finally:
        dist.destroy_process_group()
