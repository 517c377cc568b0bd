"""/v1/jobs: many images in one durable job; status, each output, a zip of all, delete, events."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
import zipfile
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from imgproc.serve import jobs
from imgproc.serve.errors import ApiError
from imgproc.serve.routes.process import FORM_DOC
from imgproc.serve.state import ServerState, State, parse_options
from imgproc.serve.store import JobRow
from imgproc.serve.uploads import media_type

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JOB_FORM_DOC = json.loads(json.dumps(FORM_DOC).replace('"file"', '"files"'))
JOB_FORM_DOC["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]["files"] = {
    "type": "array", "items": {"type": "string", "format": "binary"}}


@router.post("", status_code=202, openapi_extra=JOB_FORM_DOC)
async def create(request: Request, state: State) -> JSONResponse:
    """Accept the uploaded `files` as a job: 202 with its id and status URL once it is stored."""
    state.pool.check_room(1)
    job_id = uuid.uuid4().hex
    folder = state.job_dir(job_id)
    try:
        form = await state.form(request, folder / "in", max_files=state.config.serve.max_files)
        plugin = form.text("plugin")
        options = parse_options(form.text("options"))
        step = state.step(plugin, options)
        fmt = state.output_settings(form.text("format")).format
        job = jobs.accept(state, job_id, form.uploads("files", "file"),
                          plugin=step.processor.name, options=options, fmt=fmt)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    url = f"/v1/jobs/{job_id}"
    return JSONResponse(view(job), status_code=202, headers={"Location": url})


@router.get("/{job_id}")
def status(job_id: str, state: State) -> dict[str, Any]:
    """Return the job's status and one entry per uploaded file."""
    return view(_job(state, job_id))


@router.get("/{job_id}/images/{name}", response_class=FileResponse)
def image(job_id: str, name: str, state: State) -> FileResponse:
    """Return the output of the job's image `name`; 409 while it is not done."""
    job = _job(state, job_id)
    row = next((i for i in job.images if i.name == name), None)
    if row is None:
        raise ApiError(f"job {job_id} has no image {name!r}", status=404)
    if row.status != "done":
        why = f": {row.reason}" if row.reason else ""
        raise ApiError(f"image {name!r} is {row.status}{why}", status=409)
    path = state.job_dir(job_id) / "out" / row.output
    return FileResponse(path, media_type=media_type(path), filename=row.output)


@router.get("/{job_id}/archive", response_class=FileResponse)
def archive(job_id: str, state: State) -> FileResponse:
    """Return a zip of every output done so far (images are stored, not recompressed)."""
    job = _job(state, job_id)
    out = state.job_dir(job_id) / "out"
    scratch = state.scratch()
    path = scratch / f"{job_id}.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for row in job.images:
            if row.status == "done":
                zf.write(out / row.output, row.output)
    return FileResponse(path, media_type="application/zip", filename=f"imgproc-{job_id}.zip",
                        background=BackgroundTask(shutil.rmtree, scratch, ignore_errors=True))


@router.delete("/{job_id}")
def delete(job_id: str, state: State) -> dict[str, str]:
    """Delete the job and its files (an image in hand finishes, then is removed)."""
    if not jobs.delete(state, job_id):
        raise ApiError(f"no job {job_id!r}", status=404)
    return {"deleted": job_id}


@router.get("/{job_id}/events", response_class=StreamingResponse)
async def events(job_id: str, state: State) -> StreamingResponse:
    """Return Server-Sent Events: the job's status each time it changes, until it is done."""
    _job(state, job_id)

    async def stream() -> AsyncIterator[str]:
        last = None
        while True:
            job = state.store.get(job_id)
            if job is None:
                yield "event: deleted\ndata: {}\n\n"
                return
            current = json.dumps(view(job))
            if current != last:
                yield f"data: {current}\n\n"
                last = current
            if job.status == "done" or state.stopped.is_set():
                return
            await asyncio.sleep(0.2)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store"})


def _job(state: ServerState, job_id: str) -> JobRow:
    state.job_dir(job_id)  # 404 for anything that is not a job id
    job = state.store.get(job_id)
    if job is None:
        raise ApiError(f"no job {job_id!r}", status=404)
    return job


def view(job: JobRow) -> dict[str, Any]:
    """Return the JSON a client sees for `job`."""
    base = f"/v1/jobs/{job.id}"
    images = []
    for row in job.images:
        entry: dict[str, Any] = {"name": row.name, "status": row.status, "output": row.output}
        if row.reason:
            entry["reason"] = row.reason
        if row.ms is not None:
            entry["ms"] = round(row.ms, 1)
        if row.status == "done":
            entry["url"] = f"{base}/images/{row.name}"
        images.append(entry)
    counts = {s: sum(i.status == s for i in job.images)
              for s in ("queued", "running", "done", "failed")}
    return {"id": job.id, "status": job.status, "plugin": job.plugin, "options": job.options,
            "format": job.format, "url": base, "archive": f"{base}/archive", "counts": counts,
            "created": job.created, "finished": job.finished, "images": images}

