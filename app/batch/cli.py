"""``python -m app.batch INPUTS... --out DIR``: track many videos, one take per video.

Inputs are video files, folders (searched with their subfolders), glob patterns ("clips/*.mov",
quoted) and CSV manifests (``app.batch.inputs``). Each video's take is ``DIR/<name>.npz``, and
``DIR/summary.csv`` has one line per video (``app.batch.summary``).

Run it again and it goes on: a video whose take is finished is not tracked again (``--force``
tracks everything again); a video a killed batch left half done starts over. A video that fails
never stops the others. Exit status: 0 when every video is done, 1 when any failed or was
rejected, 2 for an error that stops the whole batch (a bad option, an unreadable manifest, an
output folder that cannot be written, a tracker that cannot be built), 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from app.batch.inputs import Job, Rejected
from app.batch.summary import EARLIER, SUMMARY_NAME, Row
from tracker.errors import TrackerError
from tracker.live.options import add_tracker_arguments, non_negative_int, positive_int

log = logging.getLogger("app.batch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app.batch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="video files, folders, glob patterns and CSV manifests (path, name, max_frames, out)")
    parser.add_argument("--out", required=True, help="folder for the takes and summary.csv (made when missing)")
    run = parser.add_argument_group("run")
    run.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1,
                     help=f"worker processes, each a tracker on one CPU thread (default: one per core, {os.cpu_count()} here)")
    run.add_argument("--retries", type=non_negative_int, default=1, help="times a video is tried again when its worker process dies (default 1)")
    run.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                     help="run the videos as tasks on a Ray cluster (pip install -e \".[cluster]\"; start it with `ray start --head`): ADDRESS "
                     "(host:port), or none for the one RAY_ADDRESS or `ray start` on this machine names; --workers does not apply")
    run.add_argument("--force", action="store_true", help="track every video again, also those whose take is finished")
    run.add_argument("--max-frames", type=positive_int, help="track at most this many frames of each video (a manifest's max_frames wins)")
    run.add_argument("--live", action="store_true",
                     help="track each video as python -m app.live does, in one pass with causal smoothing (default: offline, two passes with "
                     "each track's identity pooled over all its frames and a zero-lag smoother; README, \"Tracking many videos\")")
    run.add_argument("--quiet", action="store_true", help="no progress display; the summary and errors only")
    run.add_argument("--export-dataset", choices=("gaussian-avatars",), metavar="FORMAT",
                     help="also export each video as a dataset avatar trainers load, beside its take (NAME_FORMAT/): gaussian-avatars, the "
                     "layout VHAP exports for GaussianAvatars (transforms*.json, flame_param/*.npz, images/, fg_masks/; ICT takes write "
                     "ICT's parameters in the same layout)")
    model = parser.add_argument_group("model")
    refine = parser.add_argument_group("refinement and identity")
    add_tracker_arguments(model, refine)
    model.add_argument("--max-faces", type=positive_int, default=1, help="faces tracked per frame (default: 1)")
    refine.add_argument("--no-smoothing", action="store_true", help="no smoothing of the parameters and weights (offline: no zero-lag smoother; --live: no One-Euro filters)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tracker.console import configure_logging

    configure_logging(verbose=False)
    try:
        return run_batch(args)
    except TrackerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the pool started: nothing was tracked
        print("interrupted before any video was tracked", file=sys.stderr)
        return 130


def run_batch(args: argparse.Namespace) -> int:
    """The batch of ``args`` (module docstring for the exit status)."""
    out = _output_folder(Path(args.out))
    from app.batch.inputs import plan

    jobs, rejected = plan(args.inputs, out)
    jobs = [_replace(job, offline=not args.live) for job in jobs]
    if args.max_frames is not None:
        jobs = [job if job.max_frames is not None else _replace(job, max_frames=args.max_frames) for job in jobs]
    from tracker.live.options import options_from_args

    options = options_from_args(args, max_faces=args.max_faces, smoothing=not args.no_smoothing)
    from app.batch.summary import read_summary, write_summary

    summary_path = out / SUMMARY_NAME
    earlier = read_summary(summary_path)
    rows: dict[str, Row] = {}
    for item in rejected:
        rows[_key(item)] = Row(item.video, str(item.take or ""), "rejected", reason=item.reason)
        log.warning("rejected %s: %s", item.video, item.reason)
    to_run: list[Job] = []
    for job in jobs:
        finished = None if args.force else _finished_row(job, earlier.get(str(job.take)), args.export_dataset)
        if finished is not None:
            rows[str(job.take)] = finished
        else:
            rows[str(job.take)] = Row(str(job.video), str(job.take), "interrupted", reason="not started")
            to_run.append(job)
    order = [_key(item) for item in rejected] + [str(job.take) for job in jobs]
    write_summary(summary_path, [rows[key] for key in order])
    skipped = len(jobs) - len(to_run)
    pool, workers, where = _pool(args, options, len(to_run))
    print(f"{len(jobs)} videos, {skipped} finished by an earlier run, {len(rejected)} rejected; tracking {len(to_run)} {where}", file=sys.stderr)
    interrupted = False
    if to_run:
        interrupted = _track(args, pool, workers, to_run, rows, lambda: write_summary(summary_path, [rows[key] for key in order]))
    counts = {status: sum(row.status == status for row in rows.values()) for status in ("done", "failed", "rejected", "interrupted")}
    print(f"done {counts['done']}, failed {counts['failed']}, rejected {counts['rejected']}, interrupted {counts['interrupted']}; "
          f"summary: {summary_path}", file=sys.stderr)
    if interrupted:
        return 130
    return 0 if counts["done"] == len(rows) else 1


def _pool(args: argparse.Namespace, options, jobs: int):
    """(the pool that tracks ``jobs`` videos, its number of workers, where it runs, in words)."""
    if args.ray is not None:
        from app.batch.ray_pool import RayPool, cluster_cpus

        address = args.ray or None
        cpus = cluster_cpus(address) if jobs else 0
        return (RayPool(options, address, args.retries, args.export_dataset), max(1, min(cpus, jobs)),
                f"on the Ray cluster at {address or 'auto'} ({cpus} CPUs)")
    from app.batch.pool import LocalPool

    workers = max(1, min(args.workers, jobs))
    return LocalPool(options, workers, args.retries, args.export_dataset), workers, f"with {workers if jobs else 0} workers"


def _track(args: argparse.Namespace, pool, workers: int, jobs: list[Job], rows: dict[str, Row], save) -> bool:
    """Track ``jobs`` on ``pool``, each outcome into ``rows`` and the summary (``save``) as it
    comes -> True when Ctrl-C stopped it."""
    import io

    from app.batch.progress import BatchProgress

    progress = BatchProgress(jobs, workers, stream=io.StringIO() if args.quiet else None)

    def on_outcome(index: int, outcome) -> None:
        job = jobs[index]
        rows[str(job.take)] = Row(str(job.video), str(job.take), outcome.status, outcome.frames, outcome.faces_found, outcome.fps,
                                  outcome.wall_s, outcome.reason)
        save()
        if outcome.status == "done":
            line = f"done {job.name}: {outcome.frames} frames, a face in {outcome.faces_found}, {outcome.fps:.1f} fps, {outcome.wall_s:.1f} s"
        else:
            line = f"failed {job.name}: {outcome.reason}"
            if args.quiet:
                log.warning("%s", line)
        progress.finished(None, line, outcome.frames, job)

    try:
        pool.run(jobs, progress, on_outcome)
    except KeyboardInterrupt:
        for job in jobs:
            row = rows[str(job.take)]
            if row.status == "interrupted":
                row.reason = "the batch was interrupted (Ctrl-C): run it again to track this video"
        save()
        progress.close()
        print("interrupted: the videos in flight start over when the batch runs again", file=sys.stderr)
        return True
    progress.close()
    return False


def _finished_row(job: Job, earlier: Row | None, dataset: str | None = None) -> Row | None:
    """The summary line of ``job`` when its take (and its ``dataset``, when one is asked for) is
    finished (an earlier run's line where it has one), else None."""
    from app.batch.worker import dataset_path, job_metadata
    from tracker.takes.recording import read_take

    if not job.take.is_file():
        return None
    try:
        take = read_take(job.take)
    except TrackerError as error:
        log.warning("%s is damaged (%s): tracking %s again", job.take, error, job.video)
        return None
    recorded = {key: take.metadata.get(key) for key in job_metadata(job)}
    if recorded != job_metadata(job):
        log.warning("%s was tracked from %s with max_frames %s, %s: tracking %s again", job.take, recorded["batch_video"], recorded["batch_max_frames"],
                    recorded["batch_mode"] or "live", job.video)  # takes from before the modes were live
        return None
    if dataset is not None and take.face_found.any() and not (dataset_path(job.take, dataset) / "transforms_test.json").is_file():
        return None  # its dataset is missing (transforms_test.json is written last)
    if earlier is not None and earlier.status in ("done", "failed"):
        reason = earlier.reason if EARLIER in earlier.reason else "; ".join(filter(None, (EARLIER, earlier.reason)))
        return Row(str(job.video), str(job.take), earlier.status, earlier.frames, earlier.faces_found, earlier.fps, earlier.wall_s, reason)
    frames = len(set(take.frame_index.tolist()))
    faces = len(set(take.frame_index[take.face_found.astype(bool)].tolist()))
    return Row(str(job.video), str(job.take), "done" if faces else "failed", frames, faces, reason=EARLIER if faces else f"{EARLIER}; no face found")


def _output_folder(out: Path) -> Path:
    """``out`` made and writable, else TrackerError: no summary could be written there."""
    from app.batch.inputs import folder_problem

    if (problem := folder_problem(out)) is not None:
        raise TrackerError(f"{problem}: nothing was tracked")
    return out


def _replace(job: Job, **changes) -> Job:
    from dataclasses import replace

    return replace(job, **changes)


def _key(item: Rejected) -> str:
    return f"rejected:{item.video}:{item.take}"
