"""Finding inputs and planning outputs; the per-image data path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from imgproc.batch import Job, Step, plan_batch, process_one, run_batch
from imgproc.config import OutputSettings, RuntimeSettings
from imgproc.errors import UsageError
from imgproc.processor import Processor
from imgproc.registry import Registry
from imgproc.runtime import Runtime

from .conftest import read_rgb


@pytest.fixture
def photos(tmp_path: Path, write_image: Callable[..., Path]) -> Path:
    """Return a folder tree: two top-level images, one nested, and a non-image file."""
    root = tmp_path / "photos"
    write_image(root / "a.png")
    write_image(root / "b.JPG", format="JPEG")
    write_image(root / "trip" / "c.webp")
    (root / "notes.txt").parent.mkdir(exist_ok=True)
    (root / "notes.txt").write_text("not an image, ignored by suffix")
    return root


def _outputs(plan: object, base: Path) -> list[str]:
    return sorted(str(j.output.relative_to(base)) for j in plan.jobs)  # type: ignore[attr-defined]


def test_recursive_output_mirrors_the_input_tree(photos: Path, tmp_path: Path) -> None:
    plan = plan_batch([photos], tmp_path / "out", recursive=True)
    assert _outputs(plan, tmp_path / "out") == ["a.png", "b.JPG", "trip/c.webp"]
    flat = plan_batch([photos], tmp_path / "out")
    assert _outputs(flat, tmp_path / "out") == ["a.png", "b.JPG"]


@pytest.mark.parametrize(("fmt", "expected"), [
    ("png", ["a.png", "b.png"]), ("jpg", ["a.jpg", "b.jpg"]), ("tiff", ["a.tiff", "b.tiff"]),
])
def test_format_changes_only_the_suffix(photos: Path, tmp_path: Path, fmt: str,
                                        expected: list[str]) -> None:
    assert _outputs(plan_batch([photos], tmp_path / "o", fmt=fmt), tmp_path / "o") == expected


def test_output_folder_inside_input_is_never_read_back(photos: Path,
                                                       write_image: Callable) -> None:
    write_image(photos / "out" / "a.png")  # an earlier run's output
    plan = plan_batch([photos], photos / "out", recursive=True)
    assert all("out" not in j.inputs[0].relative_to(photos).parts for j in plan.jobs)


def test_hidden_and_temporary_files_are_ignored(photos: Path, write_image: Callable,
                                                tmp_path: Path) -> None:
    write_image(photos / ".hidden.png")
    write_image(photos / ".a.png.x1y2.imgproc-tmp", format="PNG")
    assert _outputs(plan_batch([photos], tmp_path / "o"), tmp_path / "o") == ["a.png", "b.JPG"]


def test_symlinks_and_directories_in_a_scan_are_set_aside(photos: Path, tmp_path: Path) -> None:
    (photos / "link.png").symlink_to(photos / "a.png")
    (photos / "folder.png").mkdir()
    plan = plan_batch([photos], tmp_path / "o")
    reasons = {o.inputs[0].name: (o.status, o.reason) for o in plan.rejected}
    assert reasons["link.png"][0] == "skipped" and "symlink" in reasons["link.png"][1]
    assert reasons["folder.png"] == ("skipped", "is a directory named like an image")


def test_a_symlink_named_on_the_command_line_is_followed(photos: Path, tmp_path: Path) -> None:
    (tmp_path / "link.png").symlink_to(photos / "a.png")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    plan = plan_batch([tmp_path / "link.png", tmp_path / "dangling.png", tmp_path / "nope.png"],
                      tmp_path / "o")
    assert [j.output.name for j in plan.jobs] == ["link.png"]
    assert [o.reason for o in plan.rejected] == ["broken symlink", "no such file or directory"]


def test_collisions_and_input_overwrites_are_refused(photos: Path, write_image: Callable,
                                                     tmp_path: Path) -> None:
    write_image(photos / "a.jpg", format="JPEG")  # a.png and a.jpg both become a.png
    plan = plan_batch([photos], tmp_path / "o", fmt="png")
    [collision] = [o for o in plan.rejected if "collides" in (o.reason or "")]
    assert collision.status == "failed" and collision.output == tmp_path / "o" / "a.png"
    in_place = plan_batch([photos], photos)
    assert {o.reason for o in in_place.rejected} == {"output would overwrite an input"}
    assert in_place.jobs == []


def test_two_input_processors_pair_by_relative_path(tmp_path: Path,
                                                    write_image: Callable) -> None:
    for name in ("x.png", "sub/y.png", "only-a.png"):
        write_image(tmp_path / "a" / name)
    for name in ("x.jpg", "sub/y.png"):
        write_image(tmp_path / "b" / name)
    plan = plan_batch([tmp_path / "a", tmp_path / "b"], tmp_path / "o", arity=2, recursive=True)
    assert [tuple(p.name for p in j.inputs) for j in plan.jobs] == [("y.png", "y.png"),
                                                                   ("x.png", "x.jpg")]
    [unpaired] = plan.rejected
    assert unpaired.inputs[0].name == "only-a.png" and "no partner in" in unpaired.reason


def test_pairing_refuses_two_files_with_one_name(tmp_path: Path, write_image: Callable) -> None:
    write_image(tmp_path / "a" / "x.png")
    write_image(tmp_path / "a" / "x.jpg", format="JPEG")
    write_image(tmp_path / "b" / "x.png")
    plan = plan_batch([tmp_path / "a", tmp_path / "b"], tmp_path / "o", arity=2)
    assert len(plan.jobs) == 1
    [clash] = plan.rejected
    assert clash.status == "failed" and "paired by name without suffix" in clash.reason


def test_two_input_processors_need_two_inputs(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="takes 2 inputs"):
        plan_batch([tmp_path], tmp_path / "o", arity=2)


def test_the_data_path_reads_processes_and_writes(registry: Registry, photos: Path,
                                                  tmp_path: Path) -> None:
    job = Job((photos / "a.png",), tmp_path / "o" / "deep" / "a.png")
    identity = registry.get("identity").processor
    outcome = process_one(job, [Step(identity, {"scale": 2})], Runtime(), OutputSettings())
    assert outcome.status == "done" and outcome.provider == "none"
    assert read_rgb(job.output).shape == (32, 48, 3)
    original = read_rgb(photos / "a.png")
    assert np.abs(read_rgb(job.output)[::2, ::2] - original).max() < 1e-6


@pytest.mark.parametrize("name", ["explode", "bad-shape"])
def test_plugin_errors_fail_the_image_not_the_batch(registry: Registry, photos: Path,
                                                    tmp_path: Path, name: str) -> None:
    processor = registry.get("explode").processor if name == "explode" else Processor(
        "bad", "Returns a 2-D array.", lambda images, **kw: images[0][:, :, 0])
    job = Job((photos / "a.png",), tmp_path / "o" / "a.png")
    outcome = process_one(job, [Step(processor, {})], Runtime(), OutputSettings())
    assert outcome.status == "failed"
    assert ("RuntimeError: boom" if name == "explode" else "expected an H x W x 1|3") \
        in outcome.reason
    assert not job.output.exists()


def test_model_processor_runs_through_one_shared_session(halve: Processor, photos: Path,
                                                         tmp_path: Path) -> None:
    runtime = Runtime(RuntimeSettings(provider="cpu", tile_size=8, tile_overlap=2))
    plan = plan_batch([photos], tmp_path / "o", recursive=True)
    summary = run_batch(plan, [Step(halve, {})], runtime, OutputSettings(), workers=2)
    assert summary.count("done") == 3
    assert {o.provider for o in summary.outcomes} == {"CPUExecutionProvider"}
    assert len(runtime.sessions.loaded()) == 1
    out, src = read_rgb(tmp_path / "o" / "a.png"), read_rgb(photos / "a.png")
    assert np.abs(out - src / 2).max() <= 1 / 255 + 1e-6
