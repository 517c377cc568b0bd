"""Jobs: uploads accepted as a durable job, each image run through `batch.process_one`."""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

from imgproc.batch import Job, process_one
from imgproc.engine import open_engine
from imgproc.errors import ImgprocError
from imgproc.images import output_suffix
from imgproc.serve.errors import ApiError
from imgproc.serve.state import ServerState
from imgproc.serve.store import ImageRow, JobRow
from imgproc.serve.uploads import Upload, sniff, unique_names

log = structlog.get_logger("imgproc.serve")


def accept(state: ServerState, job_id: str, uploads: list[Upload], *, plugin: str,
           options: Mapping[str, Any], fmt: str) -> JobRow:
    """Return the job made of `uploads` (already under the job's in/ folder), recorded in the
    store and queued; an upload that is no image is recorded failed with its reason."""
    if not uploads:
        raise ApiError("no files: send one or more parts named 'files'", status=422)
    folder = state.job_dir(job_id)
    rows = [_entry(state, job_id, idx, upload, folder)
            for idx, upload in enumerate(uploads)]
    names = unique_names([r.name for r in rows])
    outputs = unique_names([Path(n).stem + output_suffix(Path(r.input or n), fmt)
                            for n, r in zip(names, rows, strict=True)])
    rows = [ImageRow(job_id, r.idx, n, r.input, o, r.status, r.reason)
            for r, n, o in zip(rows, names, outputs, strict=True)]
    queued = [r.idx for r in rows if r.status == "queued"]
    if len(queued) > state.pool.capacity:  # would never fit: waiting cannot help
        raise ApiError(f"a job of {len(queued)} images is larger than the queue "
                       f"({state.pool.capacity}); send it in parts", status=413)
    state.pool.reserve(len(queued))  # Busy (429) when full: nothing is recorded
    try:
        state.store.create(job_id, plugin=plugin, options=dict(options), fmt=fmt, images=rows)
    except BaseException:
        state.pool.release(len(queued))
        raise
    _submit(state, job_id, queued)
    state.metrics.count("imgproc_jobs_total", status="accepted")
    state.metrics.count("imgproc_images_total", len(rows) - len(queued), status="failed")
    log.info("job accepted", job=job_id, plugin=plugin, images=len(rows), queued=len(queued))
    job = state.store.get(job_id)
    assert job is not None
    return job


def _entry(state: ServerState, job_id: str, idx: int, upload: Upload,
           folder: Path) -> ImageRow:
    try:
        sniffed = sniff(upload.path, max_pixels=state.config.runtime.max_image_pixels)
    except ApiError as exc:
        upload.path.unlink(missing_ok=True)
        return ImageRow(job_id, idx, upload.name, None, "", "failed", exc.message)
    relative = f"in/{idx:05d}{sniffed.suffix}"  # the server's name, never the client's
    upload.path.rename(folder / relative)
    return ImageRow(job_id, idx, upload.name, relative, "", "queued")


def recover(state: ServerState) -> int:
    """Queue again every image a previous process left queued or running; return how many."""
    state.sweep()
    pending = state.store.recover()
    state.pool.reserve(len(pending), force=True)
    by_job: dict[str, list[int]] = {}
    for job_id, idx in pending:
        by_job.setdefault(job_id, []).append(idx)
    for job_id, idxs in by_job.items():
        _submit(state, job_id, idxs)
    if pending:
        log.info("jobs recovered", images=len(pending))
    return len(pending)


def _submit(state: ServerState, job_id: str, idxs: list[int]) -> None:
    """Queue a job's images: one task each on local threads, or the whole job as one task
    handed to the engine (a cluster runs its images in parallel)."""
    if state.local:
        for idx in idxs:
            state.pool.submit(_task(run_image, state, job_id, idx))
    elif idxs:
        state.pool.submit(_task(run_on_engine, state, job_id, idxs), images=len(idxs))


def _task(fn: Callable[..., None], *args: Any) -> Callable[[], None]:
    return lambda: fn(*args)


def run_image(state: ServerState, job_id: str, idx: int) -> None:
    """Process one image of a job and record its outcome (a deleted job is cleaned up)."""
    if not state.store.start(job_id, idx):
        return
    job = state.store.get(job_id)
    if job is None:
        return
    row = job.images[idx]
    folder = state.job_dir(job_id)
    try:
        step = state.step(job.plugin, job.options)
        output = state.output_settings(job.format)
    except ImgprocError as exc:  # e.g. the plugin was uninstalled before a restart
        _record(state, job_id, row, "failed", str(exc), 0.0)
        return
    outcome = process_one(Job((folder / str(row.input),), folder / "out" / row.output),
                          [step], state.runtime, output)
    _record(state, job_id, row, outcome.status, outcome.reason, outcome.ms)


def run_on_engine(state: ServerState, job_id: str, idxs: list[int]) -> None:
    """Run a job's images `idxs` through the configured engine (e.g. a Dask cluster that sees
    --data-dir at the same path) and record each outcome as it arrives."""
    rows = _started(state, job_id, idxs)
    job = state.store.get(job_id)
    if job is None or not rows:
        return
    folder = state.job_dir(job_id)
    waiting = {str(folder / "out" / r.output): r for r in rows}
    try:
        step = state.step(job.plugin, job.options)
        config = dataclasses.replace(state.config, output=state.output_settings(job.format))
        work = [Job((folder / str(r.input),), folder / "out" / r.output) for r in rows]
        with open_engine(state.registry, config, [step], state.runtime,
                         plugins_dir=state.plugins_dir) as engine:
            for outcome in engine.map(work):
                row = waiting.pop(str(outcome.output))
                _record(state, job_id, row, outcome.status, outcome.reason, outcome.ms)
    except ImgprocError as exc:  # the engine could not start: no scheduler, mismatched workers
        for row in waiting.values():
            _record(state, job_id, row, "failed", f"engine: {exc}", 0.0)


def _started(state: ServerState, job_id: str, idxs: list[int]) -> list[ImageRow]:
    job = state.store.get(job_id)
    if job is None:
        return []
    return [job.images[i] for i in idxs if state.store.start(job_id, i)]


def _record(state: ServerState, job_id: str, row: ImageRow, status: str, reason: str | None,
            ms: float) -> None:
    image_status = "done" if status == "done" else "failed"
    if not state.store.finish(job_id, row.idx, status=image_status, reason=reason, ms=ms):
        shutil.rmtree(state.job_dir(job_id), ignore_errors=True)  # deleted while it ran
        return
    state.metrics.count("imgproc_images_total", status=image_status)
    state.metrics.observe("imgproc_image_seconds", ms / 1000)
    job = state.store.get(job_id)
    if job is not None and job.finished is not None:
        state.metrics.count("imgproc_jobs_total", status="done")
        log.info("job done", job=job_id, images=len(job.images),
                 failed=sum(i.status == "failed" for i in job.images))


def delete(state: ServerState, job_id: str) -> bool:
    """Delete a job and its files; return False when there was no such job."""
    folder = state.job_dir(job_id)
    found = state.store.delete(job_id)
    shutil.rmtree(folder, ignore_errors=True)
    return found


def expire_loop(state: ServerState) -> None:
    """Delete finished jobs older than serve.job_ttl_seconds until the server stops."""
    ttl = state.config.serve.job_ttl_seconds
    while not state.stopped.wait(min(60.0, ttl / 4)):
        for job_id in state.store.expired(time.time() - ttl):
            delete(state, job_id)
            log.info("job expired", job=job_id)


def start_expiry(state: ServerState) -> threading.Thread:
    """Return the started thread that expires old jobs."""
    thread = threading.Thread(target=expire_loop, args=(state,), name="imgproc-serve-expiry",
                              daemon=True)
    thread.start()
    return thread
