"""Whether a graph is being captured: layers that take data-dependent or size-dependent shortcuts in eager mode
(skip an empty pad, a hand-written fast backward) take the plain, general path instead, so that one graph serves
every input size and exporters see only standard ops."""

from __future__ import annotations

import torch


def capturing_graph() -> bool:
    """True while ``torch.jit`` traces or scripts (the TorchScript ONNX exporter) or ``torch.compile`` /
    ``torch.export`` (and the dynamo ONNX exporter) capture a graph."""
    return (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
    )
