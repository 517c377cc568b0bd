"""The fault model through `imgproc run` (docs/faults.md): input, output and environment faults
fail one image with its reason and the batch goes on; requests that cannot run are one-line usage
errors (exit 2) before any image is touched."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result
from PIL import Image

from imgproc import images
from imgproc.batch import Job, Step, process_one
from imgproc.config import OutputSettings
from imgproc.registry import Registry
from imgproc.runtime import Runtime

from .conftest import read_rgb


@pytest.fixture
def photos(tmp_path: Path, write_image: Callable[..., Path]) -> Path:
    """Return a folder with a.jpg, b.jpg and c.jpg."""
    for name in "abc":
        write_image(tmp_path / "photos" / f"{name}.jpg")
    return tmp_path / "photos"


def _outcomes(result: Result) -> dict[str, dict]:
    data = json.loads(result.stdout)
    return {Path(o["inputs"][0]).name: o for o in data["outcomes"]}


# -- output faults: one image fails, the batch goes on -------------------------------------------

def test_a_directory_where_an_output_goes_fails_that_image_only(
        run_cli: Callable[..., Result], photos: Path, tmp_path: Path) -> None:
    (tmp_path / "out" / "b.jpg").mkdir(parents=True)
    result = run_cli("run", "-p", "identity", str(photos), "-o", str(tmp_path / "out"), "--json")
    assert result.exit_code == 1, result.output
    outcomes = _outcomes(result)
    assert outcomes["b.jpg"] == {**outcomes["b.jpg"], "status": "failed", "fault": "output",
                                 "reason": "output path is a directory"}
    assert outcomes["a.jpg"]["status"] == outcomes["c.jpg"]["status"] == "done"
    assert (tmp_path / "out" / "c.jpg").is_file()


def test_a_file_where_an_output_folder_goes_fails_those_images_only(
        run_cli: Callable[..., Result], photos: Path, tmp_path: Path,
        write_image: Callable[..., Path]) -> None:
    write_image(photos / "sub" / "d.jpg")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sub").write_text("a file, not a folder")
    result = run_cli("run", "-p", "identity", "-r", str(photos), "-o", str(tmp_path / "out"),
                     "--json")
    assert result.exit_code == 1
    outcomes = _outcomes(result)
    assert outcomes["d.jpg"]["fault"] == "output"
    assert "a file is in the way" in outcomes["d.jpg"]["reason"]
    assert [outcomes[n]["status"] for n in "abc" for n in [f"{n}.jpg"]] == ["done"] * 3


@pytest.mark.parametrize(("code", "fault"), [
    (errno.ENOSPC, "environment"), (errno.EROFS, "environment"), (errno.EIO, "environment"),
    (errno.EACCES, "output"),
], ids=["ENOSPC", "EROFS", "EIO", "EACCES"])
def test_write_faults_are_classified_and_leave_no_temporary(
        monkeypatch: pytest.MonkeyPatch, registry: Registry, tmp_path: Path,
        write_image: Callable[..., Path], code: int, fault: str) -> None:
    # Running as root, a read-only folder does not stop writes: inject the error at the rename.
    def refuse(src: str, dst: str) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(images.os, "replace", refuse)
    source = write_image(tmp_path / "a.png")
    step = Step(registry.get("identity").processor, {"scale": 1})
    outcome = process_one(Job((source,), tmp_path / "out" / "a.png"), [step], Runtime(),
                          OutputSettings())
    assert (outcome.status, outcome.fault) == ("failed", fault)
    assert os.strerror(code) in (outcome.reason or "")
    assert list((tmp_path / "out").iterdir()) == []  # the temporary file was removed


@pytest.mark.parametrize("kind", ["runtime", "memory", "exit"])
def test_a_plugin_raising_anything_fails_each_image_with_the_exception(
        run_cli: Callable[..., Result], photos: Path, tmp_path: Path, kind: str) -> None:
    result = run_cli("run", "-p", "fault", "-O", f"kind={kind}", str(photos),
                     "-o", str(tmp_path / "out"), "--json")
    assert result.exit_code == 1
    outcomes = _outcomes(result)
    expected = {"runtime": "RuntimeError", "memory": "MemoryError", "exit": "SystemExit"}[kind]
    assert len(outcomes) == 3
    assert all(o["status"] == "failed" and o["fault"] == "input"
               and f"fault failed: {expected}: injected fault" in o["reason"]
               for o in outcomes.values())


def test_an_unexpected_host_error_fails_one_image(
        monkeypatch: pytest.MonkeyPatch, registry: Registry, tmp_path: Path,
        write_image: Callable[..., Path]) -> None:
    def broken(path: Path, **_: object) -> None:
        raise KeyError("layout")

    monkeypatch.setattr("imgproc.batch.read_image", broken)
    source = write_image(tmp_path / "a.png")
    step = Step(registry.get("identity").processor, {"scale": 1})
    outcome = process_one(Job((source,), tmp_path / "out.png"), [step], Runtime(),
                          OutputSettings())
    assert outcome.status == "failed"
    assert outcome.reason == "unexpected KeyError: 'layout'"


# -- usage errors: one line, exit 2, nothing touched ---------------------------------------------

@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
@pytest.mark.parametrize("where", ["option", "config"])
def test_nan_and_inf_in_a_float_option_are_usage_errors(
        run_cli: Callable[..., Result], photos: Path, tmp_path: Path, value: str,
        where: str) -> None:
    if where == "option":
        args = ["run", "-p", "slow", "-O", f"seconds={value}"]
    else:
        toml = {"nan": "nan", "NaN": "nan", "inf": "inf", "-inf": "-inf"}[value]
        (tmp_path / "config.toml").write_text(f"[plugins.slow]\nseconds = {toml}\n")
        args = ["--config", str(tmp_path / "config.toml"), "run", "-p", "slow"]
    result = run_cli(*args, str(photos), "-o", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "option 'seconds': must be a finite number" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("setting", [
    "[daemon]\nsettle_seconds = nan", "[daemon]\nretry_backoff = inf",
    "[[watch]]\ninput = 'in'\noutput = 'out'\nplugin = 'slow'\npoll_interval = nan",
    "[[watch]]\ninput = 'in'\noutput = 'out'\nplugin = 'slow'\noptions.slow.seconds = nan",
], ids=["settle_seconds", "retry_backoff", "poll_interval", "rule-option"])
def test_nan_in_daemon_and_watch_settings_is_a_usage_error(
        run_cli: Callable[..., Result], tmp_path: Path, setting: str) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "config.toml").write_text(setting + "\n")
    result = run_cli("--config", str(tmp_path / "config.toml"), "watch")
    assert result.exit_code == 2, result.output
    assert "must be a finite number" in result.output
    assert not (tmp_path / "out").exists()


def test_watch_cli_rejects_nan_options(run_cli: Callable[..., Result], tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    result = run_cli("watch", str(tmp_path / "in"), "-p", "slow", "-O", "seconds=nan",
                     "-o", str(tmp_path / "out"), "--journal", str(tmp_path / "j.sqlite"))
    assert result.exit_code == 2
    assert "must be a finite number" in result.output


@pytest.mark.parametrize(("target", "reason"), [
    ("afile/sub", "cannot be created: Not a directory"),
    ("/proc/imgproc-test/x", "cannot be created"),
], ids=["below-a-file", "proc"])
def test_an_output_folder_that_cannot_be_made_is_one_line(
        run_cli: Callable[..., Result], photos: Path, tmp_path: Path, target: str,
        reason: str) -> None:
    (tmp_path / "afile").write_text("x")
    out = target if target.startswith("/") else str(tmp_path / target)
    result = run_cli("run", "-p", "identity", str(photos), "-o", out)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and reason in lines[0] and lines[0].startswith("Error: output folder")


@pytest.mark.parametrize("statement", ["import sys\nsys.exit(3)", "raise KeyboardInterrupt",
                                       "raise SystemExit('bye')", "raise MemoryError"],
                         ids=["sys.exit", "KeyboardInterrupt", "SystemExit", "MemoryError"])
def test_a_plugin_that_exits_at_import_is_set_aside(
        run_cli: Callable[..., Result], tmp_path: Path, statement: str, monkeypatch:
        pytest.MonkeyPatch) -> None:
    plugins = tmp_path / "bad_plugins"
    plugins.mkdir()
    (plugins / "quitter.py").write_text(statement + "\n")
    monkeypatch.setenv("IMGPROC_PLUGINS_DIR", str(plugins))
    from click.testing import CliRunner

    from imgproc.cli import cli

    assert CliRunner().invoke(cli, ["--help"]).exit_code == 0
    listed = CliRunner().invoke(cli, ["--plugins-dir", str(plugins), "plugins", "--json"])
    assert listed.exit_code == 0, listed.output
    failures = json.loads(listed.stdout)["failures"]
    assert [f["plugin"] for f in failures] == ["local:quitter"]
    assert "could not load" in failures[0]["reason"]


# -- 16 bits ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("suffix", "bits"), [(".png", 16), (".tiff", 16), (".jpg", 8)])
def test_16_bit_grey_keeps_16_bits_where_the_format_can(
        run_cli: Callable[..., Result], tmp_path: Path, suffix: str, bits: int) -> None:
    ramp = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    (tmp_path / "in").mkdir()
    Image.fromarray(ramp).save(tmp_path / "in" / "deep.png")
    fmt = suffix.lstrip(".")
    result = run_cli("run", "-p", "identity", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                     "--format", fmt.replace("jpg", "jpg"))
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "out" / f"deep{suffix}") as img:
        assert (img.mode in ("I;16", "I;16B", "I")) == (bits == 16)
        if bits == 16:
            assert np.abs(np.asarray(img, dtype=np.int64) - ramp).max() <= 1


def test_colour_from_a_16_bit_grey_input_is_8_bit_rgb(
        run_cli: Callable[..., Result], tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(tmp_path / "in" / "g.png")
    result = run_cli("run", "-p", "sepia", str(tmp_path / "in"), "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "out" / "g.png") as img:
        assert img.mode == "RGB"
    assert read_rgb(tmp_path / "out" / "g.png").std(axis=2).max() > 0  # really colour


# -- links in a folder scan ------------------------------------------------------------------------

@pytest.fixture
def linked(tmp_path: Path, write_image: Callable[..., Path]) -> Path:
    """Return a folder holding a.png, a link to a file outside it, a link to a file inside it
    and a link to a folder of images."""
    folder = tmp_path / "photos"
    write_image(folder / "a.png")
    outside = write_image(tmp_path / "private" / "secret.png")
    (folder / "out.png").symlink_to(outside)
    (folder / "in.png").symlink_to(folder / "a.png")
    (folder / "dir").symlink_to(tmp_path / "private", target_is_directory=True)
    return folder


@pytest.mark.parametrize("follow", [False, True], ids=["default", "follow"])
def test_links_in_a_scan_follow_one_rule(run_cli: Callable[..., Result], linked: Path,
                                         tmp_path: Path, follow: bool) -> None:
    args = ["run", "-p", "identity", "-r", str(linked), "-o", str(tmp_path / "out"), "--json"]
    result = run_cli(*args, *(["--follow-symlinks"] if follow else []))
    outcomes = _outcomes(result)
    written = sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert "secret.png" not in written  # never through a link, nor into a linked folder
    assert "out.png" not in written
    assert "points outside" in outcomes["out.png"]["reason"] if follow else \
        "not followed" in outcomes["out.png"]["reason"]
    assert written == (["a.png", "in.png"] if follow else ["a.png"])
    if follow:
        assert np.array_equal(read_rgb(tmp_path / "out" / "in.png"),
                              read_rgb(tmp_path / "out" / "a.png"))
