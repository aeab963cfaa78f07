"""The frame loop's ordering, latest-frame policy, error handling and shutdown, with stand-in stages."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from tracker.live.feed import CpuFeeder, create_feeder
from tracker.live.pipeline import Pipeline, PipelineStats
from tracker.live.results import (
    FaceResult,
    NetworkInputs,
    Prepared,
    RawOutput,
    TrackingResult,
)
from tracker.live.sources import FrameSource


class CountingReader:
    """A source of ``count`` 8x8 frames whose pixels hold the frame number; ``interval`` s apart."""

    def __init__(self, count: int, interval: float = 0.0) -> None:
        self.count, self.interval, self.produced = count, interval, 0

    fps = 30.0
    size = (8, 8)

    def read(self):
        if self.produced >= self.count:
            return None
        time.sleep(self.interval)
        image = np.full((8, 8, 3), self.produced % 256, np.uint8)
        self.produced += 1
        return image, None

    def close(self) -> None:
        pass


def make_source(count: int, live: bool, interval: float = 0.0) -> tuple[FrameSource, CountingReader]:
    reader = CountingReader(count, interval)
    return FrameSource(reader, name="counting", live=live, paced=False, stop=threading.Event()), reader


class StandInTracker:
    """Stage stand-ins: prepare tags the inputs with the frame's pixel value, the network echoes it
    (optionally slowly), finish records what it was given. ``fail_at``: prepare raises there."""

    device = torch.device("cpu")

    def __init__(self, prepare_s: float = 0.0, network_s: float = 0.0, fail_at: int | None = None) -> None:
        self.prepare_s, self.network_s, self.fail_at = prepare_s, network_s, fail_at
        self.prepared: list[int] = []
        self.finished: list[tuple[int, float]] = []

    def prepare(self, frame) -> Prepared:
        if frame.index == self.fail_at:
            raise RuntimeError(f"stage failed on frame {frame.index}")
        time.sleep(self.prepare_s)
        self.prepared.append(frame.index)
        value = torch.full((1, 1, 1, 1), float(frame.image[0, 0, 0]))
        return Prepared(frame, [], [], NetworkInputs(value, value, torch.zeros(1, 2), torch.zeros(1, 2)), {})

    def run_network(self, inputs: NetworkInputs):
        time.sleep(self.network_s)
        return {"echo": inputs.normals.reshape(1, 1).clone()}, torch.zeros(1, 6), torch.zeros(1, 3)

    def finish(self, prepared: Prepared, raw: RawOutput | None) -> TrackingResult:
        self.finished.append((prepared.frame.index, raw.params["echo"].item()))
        return TrackingResult(prepared.frame, [], np.zeros(2), np.zeros(2), dict(prepared.timings))


class ClosingSink:
    def __init__(self, delay: float = 0.0) -> None:
        self.indices: list[int] = []
        self.closed_after: int | None = None
        self.delay = delay

    def __call__(self, result: TrackingResult) -> None:
        time.sleep(self.delay)
        self.indices.append(result.frame.index)

    def close(self) -> None:
        self.closed_after = len(self.indices)


@pytest.mark.parametrize("mode", ["async", "sequential"])
def test_file_frames_reach_sinks_once_in_order_with_their_own_outputs(mode: str) -> None:
    source, _ = make_source(40, live=False)
    tracker, sink = StandInTracker(network_s=0.002), ClosingSink()
    stats = Pipeline(source, tracker, [sink], mode=mode).run()
    assert sink.indices == list(range(40))
    assert tracker.prepared == list(range(40))
    # every result carries the network output of its own frame (the network thread keeps two
    # frames in flight, so a mix-up would pair frame k with frame k+1's output)
    assert tracker.finished == [(i, float(i)) for i in range(40)]
    assert sink.closed_after == 40
    assert stats.frames_out == 40 and stats.frames_read == 40 and stats.dropped == 0


def test_live_source_drops_old_frames_instead_of_queueing_them() -> None:
    source, reader = make_source(150, live=True, interval=0.002)  # ~500 fps offered
    tracker, sink = StandInTracker(network_s=0.02), ClosingSink()  # ~50 fps processed
    stats = Pipeline(source, tracker, [sink]).run()
    assert reader.produced == 150
    assert len(sink.indices) < 150 / 2, "a slow pipeline must skip frames of a live source"
    assert sink.indices == sorted(set(sink.indices)), "frames delivered once each, in order"
    assert stats.dropped == 150 - stats.frames_read > 0
    assert tracker.finished == [(i, float(i % 256)) for i in sink.indices]


class OrderLog(StandInTracker):
    """Logs, in order, when each frame's prepare starts, when the network takes it and when it is finished."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.events: list[tuple[str, int]] = []
        self._lock = threading.Lock()

    def _log(self, what: str, index: int) -> None:
        with self._lock:
            self.events.append((what, index))

    def prepare(self, frame) -> Prepared:
        self._log("prepare", frame.index)
        return super().prepare(frame)

    def run_network(self, inputs: NetworkInputs):
        self._log("network", int(inputs.normals.item()))
        return super().run_network(inputs)

    def finish(self, prepared: Prepared, raw: RawOutput | None) -> TrackingResult:
        self._log("finish", prepared.frame.index)
        return super().finish(prepared, raw)


def test_live_frames_never_wait_behind_a_busy_network_stage() -> None:
    """A live source in async mode: the next frame is read only once the network stage has taken
    the previous one, so when a frame's prepare starts, every frame before the previous one is
    finished (a prepared frame never queues behind a busy network stage, growing stale), and on
    the CPU no frame is held in flight past its network run."""
    source, _ = make_source(120, live=True, interval=0.002)
    tracker = OrderLog(prepare_s=0.004, network_s=0.012)
    Pipeline(source, tracker, [ClosingSink()], mode="async").run()
    events = tracker.events
    prepared = [i for what, i in events if what == "prepare"]
    assert len(prepared) > 5
    for position, (what, frame) in enumerate(events):
        if what == "prepare":
            finished = {i for w, i in events[:position] if w == "finish"}
            waiting = [i for i in prepared if i < frame and i not in finished]
            assert len(waiting) <= 1, f"frame {frame} read while {waiting} were still not finished"


def test_max_frames_stops_reading() -> None:
    source, _ = make_source(100, live=False)
    sink = ClosingSink()
    stats = Pipeline(source, StandInTracker(), [sink], max_frames=7).run()
    assert sink.indices == list(range(7)) and stats.frames_read == 7


def test_stop_delivers_frames_in_flight_then_closes_sinks() -> None:
    source, reader = make_source(10_000, live=False)
    sink = ClosingSink()
    pipeline = Pipeline(source, StandInTracker(network_s=0.01), [sink]).start()
    time.sleep(0.3)
    pipeline.stop()
    assert not pipeline.running
    read = pipeline.stats.frames_read
    assert 0 < read < 10_000
    assert sink.indices == list(range(read)), "every frame that entered the pipeline reaches the sinks"
    assert sink.closed_after == read


@pytest.mark.parametrize("mode", ["async", "sequential"])
def test_stage_error_stops_everything_and_is_raised(mode: str) -> None:
    source, _ = make_source(1000, live=False)
    sink = ClosingSink()
    with pytest.raises(RuntimeError, match="frame 5"):
        Pipeline(source, StandInTracker(fail_at=5), [sink], mode=mode).run()
    assert sink.closed_after is not None, "sinks are closed after an error too"
    assert sink.indices == list(range(5)), "every frame tracked before the error reaches the sinks"


class FailingReader(CountingReader):
    """A source whose frame ``fail_at`` cannot be read (an unreadable image in a folder)."""

    def __init__(self, count: int, fail_at: int) -> None:
        super().__init__(count)
        self.fail_at = fail_at

    def read(self):
        if self.produced == self.fail_at:
            raise OSError(f"frame {self.fail_at} cannot be read")
        return super().read()


@pytest.mark.parametrize("mode", ["async", "sequential"])
def test_source_error_delivers_every_frame_read_before_it(mode: str) -> None:
    source = FrameSource(FailingReader(100, fail_at=12), name="failing", live=False, paced=False, stop=threading.Event())
    sink = ClosingSink(delay=0.01)  # a slow sink: frames wait in the queues when the error comes
    with pytest.raises(OSError, match="frame 12"):
        Pipeline(source, StandInTracker(network_s=0.005), [sink], mode=mode).run()
    assert sink.indices == list(range(12)) and sink.closed_after == 12


class FailingNetwork(StandInTracker):
    def run_network(self, inputs: NetworkInputs):
        if inputs.normals.item() == 7:
            raise RuntimeError("network failed on frame 7")
        return super().run_network(inputs)


def test_network_error_delivers_the_frames_before_it() -> None:
    source, _ = make_source(100, live=False)
    sink = ClosingSink(delay=0.01)
    with pytest.raises(RuntimeError, match="frame 7"):
        Pipeline(source, FailingNetwork(prepare_s=0.001), [sink]).run()
    assert sink.indices == list(range(7)) and sink.closed_after == 7


def test_sink_error_is_raised() -> None:
    source, _ = make_source(50, live=False)

    def broken(result: TrackingResult) -> None:
        if result.frame.index == 3:
            raise ValueError("sink broke")

    with pytest.raises(ValueError, match="sink broke"):
        Pipeline(source, StandInTracker(), [broken]).run()


def test_async_overlaps_stages() -> None:
    """prepare and network each take 20 ms: sequential ~40 ms a frame, overlapped ~20 ms. Checked
    by total time with a wide margin (a loaded CI machine stretches both)."""
    times = {}
    for mode in ("sequential", "async"):
        source, _ = make_source(25, live=False)
        start = time.perf_counter()
        Pipeline(source, StandInTracker(prepare_s=0.02, network_s=0.02), mode=mode).run()
        times[mode] = time.perf_counter() - start
    assert times["async"] < 0.8 * times["sequential"], times


def test_stats_snapshot_figures() -> None:
    source, _ = make_source(30, live=False)
    stats = Pipeline(source, StandInTracker(network_s=0.005), stats=PipelineStats(30)).run()
    assert stats.fps > 0 and stats.latency_p95_ms >= stats.latency_p50_ms > 0
    assert stats.processing_p50_ms > 0 and "network" in stats.stage_ms
    assert stats.detection_rate == 0.0  # the stand-in finds no faces


def test_a_face_mesh_is_decoded_once_whichever_threads_ask() -> None:
    """Sinks on several threads (the GUI's, the sink thread) may ask for a face's vertices at
    once: the decode runs once, under the face's lock, and each gets the same vertices."""
    calls = []

    def decode() -> torch.Tensor:
        calls.append(threading.current_thread().name)
        time.sleep(0.05)  # long enough for every thread to ask meanwhile
        return torch.ones(4, 3)

    empty = np.zeros((68, 2))
    face = FaceResult({}, torch.zeros(6), torch.eye(3), torch.zeros(3), decode, empty, empty, np.zeros(3), 0, None, None)
    got = []
    threads = [threading.Thread(target=lambda: got.append(face.vertices), name=f"sink {i}") for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(got) == 4 and all(v is got[0] for v in got) and face.mesh is got[0]


def test_cpu_feeder_runs_the_network_in_submit() -> None:
    calls = []

    def network(inputs: NetworkInputs):
        calls.append(inputs.normals.shape)
        return {"x": inputs.normals.sum((1, 2, 3))[:, None]}, torch.zeros(2, 6), torch.zeros(2, 3)

    feeder = create_feeder(network, torch.device("cpu"))
    assert isinstance(feeder, CpuFeeder)
    inputs = NetworkInputs(torch.ones(2, 3, 4, 4), torch.ones(2, 1, 4, 4), torch.ones(2, 2), torch.ones(2, 2))
    out = feeder.submit(inputs).result()
    assert calls == [(2, 3, 4, 4)] and out.params["x"].flatten().tolist() == [48.0, 48.0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the pinned double-buffered feeder)")
def test_cuda_feeder_pairs_outputs_with_inputs_across_slots() -> None:
    from tracker.live.feed import CudaFeeder

    def network(inputs: NetworkInputs):
        torch.cuda._sleep(1_000_000)  # keep the compute stream busy while the next copy starts
        return {"x": inputs.normals.mean((1, 2, 3))[:, None] * 2}, inputs.focal.new_zeros(1, 6), inputs.focal.new_zeros(1, 3)

    feeder = CudaFeeder(network, torch.device("cuda"))
    pending = []
    for k in range(8):
        value = torch.full((1, 3, 64, 64), float(k))
        pending.append(feeder.submit(NetworkInputs(value, value[:, :1], torch.ones(1, 2), torch.ones(1, 2))))
    assert [p.result().params["x"].item() for p in pending] == [2.0 * k for k in range(8)]
