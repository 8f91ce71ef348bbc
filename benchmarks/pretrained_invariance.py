"""Measure the shared pretrained CIFAR ResNets' accuracy and shift/scale consistency on the CIFAR-10 test set.

Writes ``benchmarks/results/pretrained_invariance.json`` and ``.md``. Example::

    python benchmarks/pretrained_invariance.py --shared ../shared --depths 20 --num-images 10000
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from invariance_lightning import evaluate_invariance, sequence_preset
from invariance_lightning.lightning.data import read_cifar_npz
from invariance_lightning.models import CIFAR_RESNET_NORMALIZE, load_cifar_resnet
from invariance_lightning.reporting.tables import summary_markdown

WEIGHTS = {20: "resnet20-12fca82f.th", 56: "resnet56-4bfd9763.th"}
RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    parser.add_argument("--depths", type=int, nargs="+", default=[20])
    parser.add_argument("--num-images", type=int, default=10000, help="seeded subset of the test set (10000: all)")
    parser.add_argument("--preset", default="paper", help="sequence preset: monitor, report or paper")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--output", default="pretrained_invariance")
    args = parser.parse_args()

    test = read_cifar_npz(args.shared / "data" / "cifar10" / "cifar10_test.npz", num_classes=10)
    images = torch.from_numpy(test.images).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(test.labels)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[: args.num_images]
    images, labels = images[order], labels[order]

    report: dict = {
        "command": "python benchmarks/pretrained_invariance.py "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if k != "shared"
        ),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "num_images": len(images),
        "models": {},
    }
    title = f"# Pretrained CIFAR ResNets: invariance on {len(images)} CIFAR-10 test images"
    markdown = [title, "", f"`{report['command']}`", ""]
    for depth in args.depths:
        model = load_cifar_resnet(args.shared / "weights" / "cifar10-resnet" / WEIGHTS[depth])
        results, started = {}, time.perf_counter()
        for name, sequence in sequence_preset(args.preset).items():
            results[name] = evaluate_invariance(
                model, images, labels, sequence, batch_size=args.batch_size, normalize=tuple(CIFAR_RESNET_NORMALIZE)
            )
        seconds = time.perf_counter() - started
        report["models"][f"resnet{depth}"] = {
            "seconds": round(seconds, 1),
            "results": {n: {k: v.tolist() for k, v in r.items()} for n, r in results.items()},
        }
        markdown += [f"## ResNet-{depth} ({seconds:.0f} s)", "", summary_markdown(results), ""]
        print("\n".join(markdown[-3:]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.output}.json").write_text(json.dumps(report, indent=1))
    (RESULTS / f"{args.output}.md").write_text("\n".join(markdown))


if __name__ == "__main__":
    main()
