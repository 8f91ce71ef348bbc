"""Batches per second of the datamodules' loading paths, input pipeline alone (no model).

CIFAR-10 training split (45,000 images, batch 128): the fast path (``TensorBatchLoader`` indexing one uint8 tensor)
against the standard path (``TensorImageDataset`` in a ``DataLoader``) with 0 and 2 workers. Imagenette-128 training
folder (batch 64): decoding in 0 or 2 workers against ``decode="device"`` (workers read bytes, the main process
decodes at "transfer"; on a CPU device that is the CPU decoder, on a GPU nvJPEG). With ``--device cuda`` the CIFAR
fast path is also timed with the splits kept on the GPU against CPU batches copied per batch.

Arms alternate in ``--rounds`` rounds so a change in machine load hits all of them; each round iterates
``--warmup`` untimed batches, then times ``--batches`` (CIFAR) or ``--folder-batches`` (Imagenette). The median over
rounds is reported, and each arm's ratio to the first (baseline) arm of its group. Everything is repeated for each
intra-op thread count in ``--threads`` (``torch.set_num_threads`` in the main process; workers use one thread): on a
busy machine, torch's thread pool can stall small CPU copies. Results: ``benchmarks/results/data_loading.{json,md}``.

    python benchmarks/bench_data_loading.py            # as recorded
    python benchmarks/bench_data_loading.py --device cuda
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from invariance_lightning.lightning.data import CIFARDataModule, ImageFolderDataModule, TensorBatchLoader

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("INVARIANCE_SHARED_DIR", ROOT.parent / "shared"))

# torchvision 0.29 warns on every decode that its codecs are deprecated (superseded by TorchCodec)
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities", category=DeprecationWarning)


Arms = dict[str, tuple[Iterator[Any], Callable[[Any], Any]]]  # name -> (endless batches, transfer to the device)


def _endless(loader: Iterable[Any]) -> Iterator[Any]:
    while True:
        yield from loader


def _time(batches: Iterator[Any], transfer: Callable[[Any], Any], warmup: int, count: int) -> float:
    """Batches per second over ``count`` batches after ``warmup``, each passed through ``transfer``."""
    for _ in range(warmup):
        transfer(next(batches))
    start = time.perf_counter()
    for _ in range(count):
        out = transfer(next(batches))
    if isinstance(out, (tuple, list)) and out[0].is_cuda:
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def _cifar_arms(args: argparse.Namespace) -> Arms:
    common = {"data_dir": SHARED / "data" / "cifar10", "download": False, "batch_size": 128}
    device = torch.device(args.device)

    def to_device(batch: Any) -> Any:
        return tuple(t.to(device, non_blocking=True) for t in batch)

    arms = {
        "fast path": (_endless(CIFARDataModule(**common).train_dataloader()), to_device),
        "standard, 0 workers": (_endless(CIFARDataModule(**common, fast_path=False).train_dataloader()), to_device),
        "standard, 2 workers": (
            _endless(CIFARDataModule(**common, fast_path=False, num_workers=2).train_dataloader()),
            to_device,
        ),
    }
    if device.type == "cuda":
        resident = CIFARDataModule(**common)
        images, labels = (t.to(device) for t in resident.split_arrays("train"))
        loader = TensorBatchLoader(images, labels, 128, shuffle=True)
        arms["fast path, splits kept on the GPU"] = (_endless(loader), lambda batch: batch)
    return arms


def _folder_arms(args: argparse.Namespace) -> Arms:
    root = SHARED / "data" / "imagenette-128"
    device = torch.device(args.device)
    arms = {}
    for name, kwargs in (
        ("decode in 0 workers", {"num_workers": 0}),
        ("decode in 2 workers", {"num_workers": 2}),
        ('decode="device", 2 workers read', {"num_workers": 2, "decode": "device"}),
    ):
        dm = ImageFolderDataModule(root, image_size=128, batch_size=64, **kwargs)
        transfer = functools.partial(dm.transfer_batch_to_device, device=device, dataloader_idx=0)
        arms[name] = (_endless(dm.train_dataloader()), transfer)
    return arms


def _run(arms: Arms, args: argparse.Namespace, count: int) -> dict[str, Any]:
    rates: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.rounds):
        for name, (batches, transfer) in arms.items():
            rates[name].append(_time(batches, transfer, args.warmup, count))
    baseline = statistics.median(next(iter(rates.values())))
    return {
        name: {
            "batches_per_s": round(statistics.median(values), 1),
            "rounds": [round(v, 1) for v in values],
            "ratio_to_first": round(statistics.median(values) / baseline, 2),
        }
        for name, values in rates.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--folder-batches", type=int, default=10)
    parser.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "data_loading")
    args = parser.parse_args()
    torch.manual_seed(0)
    load_before = os.getloadavg()
    results = {}
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        results[f"cifar10 train, batch 128, {threads} thread(s)"] = _run(_cifar_arms(args), args, args.batches)
        results[f"imagenette-128 train, batch 64, {threads} thread(s)"] = _run(
            _folder_arms(args), args, args.folder_batches
        )
    meta = {
        "command": "python benchmarks/bench_data_loading.py"
        + (f" --device {args.device}" if args.device != "cpu" else ""),
        "device": args.device,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_implementation()} "
        f"{platform.python_version()}, torch {torch.__version__}",
        "torch_threads": args.threads,
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "rounds": args.rounds,
        "warmup_batches": args.warmup,
        "timed_batches_per_round": {"cifar": args.batches, "imagenette": args.folder_batches},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    lines = [
        "# Data loading throughput",
        "",
        f"`{meta['command']}`: {meta['machine']}, device {args.device}, 1-min load average "
        f"{meta['load_average_before_after']} (before, after); median of {args.rounds} rounds of {args.batches} "
        f"(CIFAR) or {args.folder_batches} (Imagenette) batches after {args.warmup} untimed ones.",
        "",
    ]
    for group, arms in results.items():
        lines += [f"## {group}", "", "| arm | batches/s | ratio to first |", "|---|---:|---:|"]
        lines += [f"| {name} | {r['batches_per_s']} | {r['ratio_to_first']} |" for name, r in arms.items()]
        lines.append("")
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
