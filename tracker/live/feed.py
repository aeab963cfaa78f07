"""Moving network inputs to the device and outputs back, overlapped with compute on CUDA.

``create_feeder(network, device)`` gives a ``CpuFeeder`` or a ``CudaFeeder``; its ``submit(inputs)`` starts one frame's upload and network run and returns a
``Pending``; ``Pending.result()`` waits for it and gives the outputs on the CPU. The pipeline
submits frame k+1 before it collects frame k, so on CUDA the copy of k+1 overlaps the compute of k.

CUDA (``CudaFeeder``): two pinned host buffers and two device buffers, used in turn (slot = k % 2).
    host:    frame k's arrays are written into pinned slot k%2 once the copy that last read that
             slot (frame k-2) has finished (its ``copied`` event)
    copy stream:    waits until compute of frame k-2 has stopped reading device slot k%2
                    (``computed`` event), then non_blocking H2D copy, records ``copied``
    compute stream: waits for ``copied``, runs the network, starts non_blocking D2H copies of the
                    outputs into pinned memory, records ``computed``
    result():       synchronises on ``computed`` and returns the pinned CPU outputs
CPU (``CpuFeeder``): the same interface; the network runs in ``submit``, nothing is pinned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from tracker.errors import TrackerError
from tracker.live.results import NetworkInputs, RawOutput

Network = Callable[[NetworkInputs], tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]]


class Pending:
    """A submitted frame; ``result()`` -> RawOutput on the CPU."""

    def __init__(self, outputs: RawOutput, done: torch.cuda.Event | None = None) -> None:
        self._outputs, self._done = outputs, done

    def result(self) -> RawOutput:
        if self._done is not None:
            self._done.synchronize()
        return self._outputs


class CpuFeeder:
    """Runs the network synchronously on CPU tensors (``overlapped`` False: nothing runs after
    ``submit`` returns, so holding a frame in flight gains nothing)."""

    overlapped = False

    def __init__(self, network: Network) -> None:
        self.network = network

    def submit(self, inputs: NetworkInputs) -> Pending:
        params, rotation_6d, translation = self.network(inputs)
        return Pending(RawOutput(params, rotation_6d, translation))


@dataclass
class _Slot:
    host: NetworkInputs  # pinned
    device: NetworkInputs
    copied: torch.cuda.Event
    computed: torch.cuda.Event


def _like(inputs: NetworkInputs, make) -> NetworkInputs:
    return NetworkInputs(*(make(getattr(inputs, name)) for name in ("normals", "mask", "focal", "principal")))


def _copy_into(target: NetworkInputs, source: NetworkInputs, non_blocking: bool) -> None:
    for name in ("normals", "mask", "focal", "principal"):
        getattr(target, name).copy_(getattr(source, name), non_blocking=non_blocking)


class CudaFeeder:
    """Pinned double buffering with a copy stream and a compute stream (module docstring).

    Buffers are sized for the first frame's face count and re-made when it changes (a face
    appears or leaves), after the work in flight has finished. ``overlapped``: the copy and
    compute of a submitted frame run on after ``submit`` returns.
    """

    overlapped = True

    def __init__(self, network: Network, device: torch.device) -> None:
        if device.type != "cuda" or not torch.cuda.is_available():
            raise TrackerError(f"CudaFeeder needs an available CUDA device, got {device}")
        self.network, self.device = network, device
        self.copy_stream = torch.cuda.Stream(device)
        self.compute_stream = torch.cuda.Stream(device)
        self._slots: list[_Slot] = []
        self._shape: tuple | None = None
        self._count = 0

    def _make_slots(self, inputs: NetworkInputs) -> None:
        for slot in self._slots:  # work still reading the old buffers
            slot.computed.synchronize()
        self._slots = [
            _Slot(
                host=_like(inputs, lambda t: torch.empty(t.shape, dtype=t.dtype, pin_memory=True)),
                device=_like(inputs, lambda t: torch.empty(t.shape, dtype=t.dtype, device=self.device)),
                copied=torch.cuda.Event(),
                computed=torch.cuda.Event(),
            )
            for _ in range(2)
        ]
        self._shape = tuple(inputs.normals.shape)

    def submit(self, inputs: NetworkInputs) -> Pending:
        if tuple(inputs.normals.shape) != self._shape:
            self._make_slots(inputs)
        slot = self._slots[self._count % 2]
        self._count += 1
        slot.copied.synchronize()  # the H2D copy that last read this pinned slot is done
        _copy_into(slot.host, inputs, non_blocking=False)
        with torch.cuda.stream(self.copy_stream):
            self.copy_stream.wait_event(slot.computed)  # compute stopped reading the device slot
            _copy_into(slot.device, slot.host, non_blocking=True)
            slot.copied.record(self.copy_stream)
        with torch.cuda.stream(self.compute_stream):
            self.compute_stream.wait_event(slot.copied)
            params, rotation_6d, translation = self.network(slot.device)
            outputs = RawOutput(
                {g: _to_host(v) for g, v in params.items()},
                _to_host(rotation_6d),
                _to_host(translation),
            )
            slot.computed.record(self.compute_stream)
        return Pending(outputs, slot.computed)


def _to_host(tensor: torch.Tensor) -> torch.Tensor:
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    return host


def create_feeder(network: Network, device: torch.device) -> CpuFeeder | CudaFeeder:
    """CudaFeeder on a CUDA device, CpuFeeder otherwise."""
    return CudaFeeder(network, device) if device.type == "cuda" else CpuFeeder(network)
