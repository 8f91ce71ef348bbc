"""Memory: evaluating a long sequence holds at most ``batch_size`` frames (and their activations) at a time.

Two measurements, both deterministic (no RSS or allocator caches involved, so they hold in CI):
a forward pre-hook records how many frames each model call gets, and ``LiveTensorBytes`` (a
``TorchDispatchMode``) adds up the bytes of every tensor storage created inside it while that
storage is alive, keeping the peak. Peak bytes must follow ``batch_size`` and not the sequence length.
"""

from __future__ import annotations

import weakref

import pytest
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from invariance_lightning import ShiftSequence, evaluate_invariance
from test_evaluate import strided_net

SIZE = 128
FRAME_BYTES = 3 * SIZE * SIZE * 4  # one float32 128x128 RGB frame: 192 KiB


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of tensor storages allocated by operators inside the mode (pre-existing storages excluded)."""

    def __init__(self, *existing: Tensor) -> None:
        super().__init__()
        self._live: dict[int, int] = {id(t.untyped_storage()): 0 for t in existing}
        self.current = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        self.current -= self._live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if not isinstance(tensor, Tensor):
                continue
            storage = tensor.untyped_storage()  # one Python object per storage while it lives
            if id(storage) not in self._live:
                self._live[id(storage)] = storage.nbytes()
                self.current += storage.nbytes()
                self.peak = max(self.peak, self.current)
                weakref.finalize(storage, self._release, id(storage))
        return out


def measure(num_frames: int, batch_size: int) -> tuple[int, list[int]]:
    """Peak live bytes and the frames per forward of evaluating a ``num_frames`` horizontal translation."""
    torch.manual_seed(0)
    model, images = strided_net(), torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    sequence = ShiftSequence(max_shift=num_frames - 1, direction="horizontal", mode="zeros")
    forward_batches: list[int] = []
    hook = model.register_forward_pre_hook(lambda module, args: forward_batches.append(args[0].shape[0]))
    with LiveTensorBytes(images, *model.parameters()) as tracker:
        result = evaluate_invariance(model, images, None, sequence, batch_size=batch_size)
    hook.remove()
    assert result["per_frame_flip_rate"].shape == (num_frames - 1,)
    assert sum(forward_batches) == images.shape[0] * num_frames, "every frame is evaluated exactly once"
    return tracker.peak, forward_batches


def test_the_tracker_sees_memory_that_grows_with_the_sequence():
    images = torch.rand(3, 3, SIZE, SIZE)
    peaks = []
    for num_frames in (11, 41):
        with LiveTensorBytes(images) as tracker:
            ShiftSequence(max_shift=num_frames - 1, direction="horizontal")(images)  # all frames at once, by design
        peaks.append(tracker.peak)
    assert peaks[1] >= 3 * peaks[0] >= 3 * 3 * 11 * FRAME_BYTES


def test_peak_memory_follows_batch_size_not_sequence_length():
    torch.set_num_threads(1)
    peaks = {}
    for num_frames, batch_size in ((11, 8), (41, 8), (41, 32)):
        peak, forward_batches = measure(num_frames, batch_size)
        assert max(forward_batches) <= batch_size, (num_frames, batch_size, forward_batches)
        peaks[num_frames, batch_size] = peak
    assert peaks[41, 8] <= 1.1 * peaks[11, 8], "a 41-frame sequence must not hold more than an 11-frame one"
    assert peaks[41, 32] >= 3 * peaks[41, 8], "memory follows batch_size"
    for (num_frames, batch_size), peak in peaks.items():
        # the chunk's frames, their stacked copy and the first conv's activations: a few frames' worth each
        assert peak <= 6 * batch_size * FRAME_BYTES, (num_frames, batch_size, peak / FRAME_BYTES)


@pytest.mark.parametrize("batch_size", [1, 40, 41, 82, 500])
def test_frames_per_forward_never_exceed_batch_size_around_the_sequence_length(batch_size):
    torch.set_num_threads(1)
    model = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 5))
    forward_batches: list[int] = []
    model.register_forward_pre_hook(lambda module, args: forward_batches.append(args[0].shape[0]))
    images = torch.rand(5, 3, 48, 48)
    evaluate_invariance(model, images, None, ShiftSequence(max_shift=40, direction="vertical"), batch_size=batch_size)
    assert max(forward_batches) <= batch_size and sum(forward_batches) == 5 * 41


if __name__ == "__main__":  # the peaks quoted in docs/reliability.md
    torch.set_num_threads(1)
    for num_frames, batch_size in ((11, 8), (41, 8), (41, 32), (41, 64)):
        peak, forward_batches = measure(num_frames, batch_size)
        print(
            f"T={num_frames} batch_size={batch_size}: largest forward {max(forward_batches)} frames, "
            f"peak {peak / 2**20:.2f} MiB = {peak / FRAME_BYTES:.1f} frames"
        )
    images = torch.rand(3, 3, SIZE, SIZE)
    for num_frames in (11, 41):
        with LiveTensorBytes(images) as tracker:
            ShiftSequence(max_shift=num_frames - 1, direction="horizontal")(images)
        print(f"sequence(images), all T={num_frames} frames stacked: peak {tracker.peak / 2**20:.2f} MiB")
