"""The batch CLI end to end: exit codes, summary, --json, --dry-run, logs, precedence."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result

from .conftest import read_rgb

Run = Callable[..., Result]
SAMPLES = Path(__file__).parents[1] / "examples" / "images"


@pytest.fixture
def photos(tmp_path: Path, write_image: Callable[..., Path]) -> Path:
    """Return a folder with two good images and a corrupt one."""
    root = tmp_path / "in"
    write_image(root / "a.png")
    write_image(root / "b.jpg", format="JPEG")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return root


def test_exit_zero_when_every_image_succeeds(run_cli: Run, tmp_path: Path,
                                             write_image: Callable) -> None:
    write_image(tmp_path / "ok" / "a.png")
    result = run_cli("run", "--plugin", "sepia", str(tmp_path / "ok"), "-o", "out")
    assert result.exit_code == 0, result.output
    assert "done 1, skipped 0, failed 0" in result.stdout
    assert (tmp_path / "out" / "a.png").is_file()


def test_exit_one_and_the_reason_when_an_image_fails(run_cli: Run, photos: Path) -> None:
    result = run_cli("run", "-p", "sepia", str(photos), "-o", "out")
    assert result.exit_code == 1
    assert f"failed {photos / 'broken.png'}: truncated or corrupt image data" in result.stdout
    assert "done 2, skipped 0, failed 1" in result.stdout


@pytest.mark.parametrize("args", [
    ["-p", "nope", "x", "-o", "out"],
    ["-p", "sepia", "-O", "strength=2", "x", "-o", "out"],
    ["-p", "sepia", "-O", "strength", "x", "-o", "out"],
    ["-p", "sepia", "-O", "colour=red", "x", "-o", "out"],
    ["-p", "sepia", "x"],
    ["-p", "sepia", "--workers", "0", "x", "-o", "out"],
    ["-p", "mean2", "x", "-o", "out"],
], ids=["unknown-plugin", "out-of-range", "no-value", "unknown-option", "no-output",
        "zero-workers", "wrong-arity"])
def test_usage_errors_exit_two_before_any_image(run_cli: Run, tmp_path: Path,
                                                args: list[str]) -> None:
    result = run_cli("run", *args)
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "out").exists()


def test_json_summary(run_cli: Run, photos: Path, tmp_path: Path) -> None:
    result = run_cli("run", "-p", "sepia", str(photos), "-o", "out", "--json")
    summary = json.loads(result.stdout)
    assert (summary["done"], summary["skipped"], summary["failed"]) == (2, 0, 1)
    by_name = {Path(o["inputs"][0]).name: o for o in summary["outcomes"]}
    assert by_name["broken.png"]["status"] == "failed"
    assert by_name["a.png"]["output"] == "out/a.png" and by_name["a.png"]["ms"] > 0
    assert by_name["a.png"]["provider"] == "none"


def test_skip_existing_resumes_a_batch(run_cli: Run, photos: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.png").write_bytes(b"from an interrupted run")
    result = run_cli("run", "-p", "sepia", str(photos), "-o", "out", "--skip-existing", "--json")
    statuses = {Path(o["inputs"][0]).name: o["status"]
                for o in json.loads(result.stdout)["outcomes"]}
    assert statuses == {"a.png": "skipped", "b.jpg": "done", "broken.png": "failed"}
    assert (tmp_path / "out" / "a.png").read_bytes() == b"from an interrupted run"


def test_dry_run_writes_nothing_and_names_collisions(run_cli: Run, photos: Path,
                                                     tmp_path: Path,
                                                     write_image: Callable) -> None:
    write_image(photos / "a.jpg", format="JPEG")
    result = run_cli("run", "-p", "sepia", str(photos), "-o", "out", "--format", "png",
                     "--dry-run")
    assert result.exit_code == 1
    assert f"{photos / 'b.jpg'} -> out/b.png" in result.stdout
    assert "output name collides with" in result.stdout
    assert not (tmp_path / "out").exists()


def test_every_processed_image_is_logged(run_cli: Run, photos: Path) -> None:
    result = run_cli("--log-json", "run", "-p", "sepia", str(photos), "-o", "out",
                     "--workers", "2")
    events = [json.loads(line) for line in result.stderr.splitlines()]
    done = [e for e in events if e["event"] == "image done"]
    failed = [e for e in events if e["event"] == "image failed"]
    assert len(done) == 2 and len(failed) == 1
    for event in done + failed:
        assert {"path", "plugin", "ms", "provider"} <= event.keys()
    assert "truncated" in failed[0]["reason"]


def test_cli_beats_config_beats_defaults(run_cli: Run, tmp_path: Path,
                                         write_image: Callable) -> None:
    write_image(tmp_path / "in" / "a.png")
    (tmp_path / "config.toml").write_text("[plugins.identity]\nscale = 2\n")
    run_cli("run", "-p", "identity", "in", "-o", "from-config")
    run_cli("run", "-p", "identity", "-O", "scale=3", "in", "-o", "from-cli")
    missing = run_cli("--config", str(tmp_path / "missing.toml"), "plugins")
    assert missing.exit_code == 2 and "missing.toml: cannot read" in missing.output
    assert read_rgb(tmp_path / "from-config" / "a.png").shape == (32, 48, 3)
    assert read_rgb(tmp_path / "from-cli" / "a.png").shape == (48, 72, 3)


def test_a_bad_config_key_is_a_usage_error(run_cli: Run, tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("[runtime]\ntile_sise = 3\n")
    result = run_cli("plugins")
    assert result.exit_code == 2 and "runtime.tile_sise" in result.output


def test_plugins_json_describes_options(run_cli: Run) -> None:
    data = json.loads(run_cli("plugins", "--json").stdout)
    sepia = next(p for p in data["processors"] if p["name"] == "sepia")
    assert sepia["distribution"] == "imgproc-sepia" and sepia["version"] == "1.0.0"
    assert sepia["options"] == [{"name": "strength", "type": "float", "default": 1.0,
                                 "help": "0 = unchanged, 1 = full sepia", "min": 0.0,
                                 "max": 1.0}]
    assert data["failures"] == []


def test_doctor_reports_runtime_and_providers(run_cli: Run) -> None:
    report = json.loads(run_cli("doctor", "--json").stdout)
    assert "CPUExecutionProvider" in report["providers_available"]
    assert report["onnxruntime"] and report["python"]


def _without_read_override() -> list[str]:
    """Return a command prefix under which even root obeys file permissions."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: permissions do not stop reads")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]


def test_unreadable_file_fails_with_permission_denied(tmp_path: Path,
                                                      write_image: Callable) -> None:
    write_image(tmp_path / "in" / "ok.png")
    write_image(tmp_path / "in" / "locked.png").chmod(0)
    result = subprocess.run(
        [*_without_read_override(), sys.executable, "-m", "imgproc.cli", "run", "-p", "sepia",
         "in", "-o", "out", "--json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    failed = [o for o in json.loads(result.stdout)["outcomes"] if o["status"] == "failed"]
    assert [(Path(o["inputs"][0]).name, o["reason"]) for o in failed] == [
        ("locked.png", "permission denied")]


def test_readme_main_job_on_the_shipped_samples(tmp_path: Path) -> None:
    """The installed console script runs the README's main job on the sample images."""
    exe = Path(sys.executable).with_name("imgproc")
    result = subprocess.run([str(exe), "run", "--plugin", "colorize", str(SAMPLES), "-o",
                             str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    outputs = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert outputs == sorted(p.name for p in SAMPLES.iterdir() if p.suffix != ".md")
    from PIL import Image

    for name in outputs:
        with Image.open(SAMPLES / name) as src, Image.open(tmp_path / "out" / name) as out:
            assert out.size == src.size and out.mode in ("RGB", "RGBA")


def test_alpha_exif_and_orientation_survive_a_run(run_cli: Run, tmp_path: Path) -> None:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways
    exif[0x013B] = "round trip"
    pixels = np.zeros((10, 30, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    pixels[:, :5, 3] = 0  # a transparent band on the stored left edge
    (tmp_path / "in").mkdir()
    Image.fromarray(pixels).save(tmp_path / "in" / "a.png", exif=exif)
    assert run_cli("run", "-p", "identity", "-O", "scale=2", "in", "-o", "out").exit_code == 0
    with Image.open(tmp_path / "out" / "a.png") as out:
        assert out.mode == "RGBA" and out.size == (20, 60)  # upright, then doubled
        assert out.getexif()[0x013B] == "round trip" and out.getexif().get(0x0112, 1) == 1
        alpha = np.asarray(out.getchannel("A"))
        assert alpha[:8].max() < 30 and alpha[12:].min() > 225  # the band is now on top


@pytest.mark.parametrize(("args", "message"), [
    (["watch", "in"], "needs INPUT_DIR, --plugin and -o"),
    (["watch"], "no [[watch]] rules"),
    (["watch", "in", "-p", "sepia", "-p", "grey", "-O", "strength=1", "-o", "out"],
     "name the plugin: PLUGIN.strength"),
    (["watch", "missing", "-p", "sepia", "-o", "out"], "input folder does not exist"),
    (["status", "--journal", "none.sqlite"], "no journal at none.sqlite"),
], ids=["adhoc-incomplete", "no-rules", "ambiguous-option", "no-input", "no-journal"])
def test_watch_usage_errors(run_cli: Run, tmp_path: Path, args: list[str],
                            message: str) -> None:
    (tmp_path / "in").mkdir()
    result = run_cli(*args)
    assert result.exit_code == 2 and message in result.output, result.output


def test_an_image_option_gives_every_input_the_same_partner(run_cli: Run, tmp_path: Path,
                                                            write_image: Callable) -> None:
    for name in ("a.png", "b.png"):
        write_image(tmp_path / "in" / name)
    partner = write_image(tmp_path / "fixed.png", size=(12, 8))
    result = run_cli("run", "-p", "mean2", "-O", f"with={partner}", "in", "-o", "out")
    assert result.exit_code == 0, result.output
    for name in ("a.png", "b.png"):
        src = read_rgb(tmp_path / "in" / name)
        assert np.abs(read_rgb(tmp_path / "out" / name) - src).max() > 0.01  # really mixed
        assert read_rgb(tmp_path / "out" / name).shape == src.shape
    missing = run_cli("run", "-p", "mean2", "-O", "with=nope.png", "in", "-o", "out2")
    assert missing.exit_code == 2 and "nope.png: file not found" in missing.output


def test_a_processor_can_write_extra_outputs_beside_its_output(run_cli: Run, tmp_path: Path,
                                                               write_image: Callable) -> None:
    write_image(tmp_path / "in" / "a.jpg", size=(10, 6), format="JPEG")
    result = run_cli("run", "-p", "annotate", "in", "-o", "out", "--json")
    [outcome] = json.loads(result.stdout)["outcomes"]
    assert outcome["extras"] == ["out/a.mask.png", "out/a.info.txt"]
    assert (tmp_path / "out" / "a.info.txt").read_text() == "10x6"
    assert read_rgb(tmp_path / "out" / "a.mask.png").shape == (6, 10, 3)


def test_plugins_can_add_commands(run_cli: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run_cli("hello", "world").stdout == "hello world\n"
    monkeypatch.setenv("IMGPROC_PLUGINS_DIR", str(Path(__file__).parent / "local_plugins"))
    assert "Greet NAME" in run_cli("--help").stdout
