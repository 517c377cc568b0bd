"""POST /v1/process: one image in, the processed image's bytes out (the synchronous path)."""

from __future__ import annotations

import shutil
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from imgproc.batch import Job, process_one
from imgproc.images import output_suffix
from imgproc.serve.errors import ApiError
from imgproc.serve.state import ServerState, State, parse_options
from imgproc.serve.uploads import media_type, sniff

router = APIRouter(prefix="/v1", tags=["process"])

FORM_DOC = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "plugin"], "properties": {
        "file": {"type": "string", "format": "binary"},
        "plugin": {"type": "string", "description": "a processor from GET /v1/plugins"},
        "options": {"type": "string", "description": 'a JSON object, e.g. {"scale": 2}'},
        "format": {"type": "string", "enum": ["same", "png", "jpg", "webp", "tiff"]}}}}}}}


@router.post("/process", response_class=FileResponse, openapi_extra=FORM_DOC, responses={
    200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}, "image/tiff": {}},
          "description": "the processed image"}})
async def process(request: Request, state: State) -> FileResponse:
    """Return the image processed by `plugin` with `options`; 4xx with the reason otherwise."""
    state.pool.check_room(1)  # refuse before reading a body that would wait anyway
    folder = state.scratch()
    try:
        response = await _process(request, state, folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    response.background = BackgroundTask(shutil.rmtree, folder, ignore_errors=True)
    return response


async def _process(request: Request, state: ServerState, folder: Path) -> FileResponse:
    form = await state.form(request, folder, max_files=1)
    uploads = form.uploads("file")
    if not uploads:
        raise ApiError("form field 'file' (the image) is required", status=422)
    step = state.step(form.text("plugin"), parse_options(form.text("options")))
    output = state.output_settings(form.text("format"))
    sniffed = sniff(uploads[0].path, max_pixels=state.config.runtime.max_image_pixels)
    source = uploads[0].path.rename(folder / f"input{sniffed.suffix}")
    target = folder / f"output{output_suffix(source, output.format)}"
    outcome = await state.pool.run(
        lambda: process_one(Job((source,), target), [step], state.runtime, output))
    state.metrics.count("imgproc_images_total", status=outcome.status)
    state.metrics.observe("imgproc_image_seconds", outcome.ms / 1000)
    if outcome.status != "done":
        raise ApiError(f"{uploads[0].name}: {outcome.reason}", status=422)
    name = Path(uploads[0].name).stem + target.suffix
    return FileResponse(target, media_type=media_type(target), filename=name,
                        headers={"X-Imgproc-Ms": f"{outcome.ms:.1f}",
                                 "X-Imgproc-Provider": outcome.provider})
