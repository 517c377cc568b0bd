"""benchmarks/device.py, the prepared GPU run: its CPU smoke run end to end (so it is not broken
when a GPU appears), the carried bundle's parts and unpacking, the training budget."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import device_bundle  # noqa: E402
from device_train import planned_total  # noqa: E402


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return the output folder of one smoke run (check, batch, throughput, two trainers)."""
    out = tmp_path_factory.mktemp("device") / "out"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "device.py"), "smoke",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.slow  # the smoke run takes 20-70 s on 2 cores; CI runs it in its -m slow step
def test_the_smoke_run_checks_measures_and_trains(smoke: Path) -> None:
    summary = json.loads((smoke / "summary.json").read_text())
    samples = [p for p in (ROOT / "examples" / "images").iterdir() if p.suffix != ".md"]
    assert summary["check_ok"] and summary["batch"]["exit_ok"]
    assert summary["batch"]["done"] == len(samples) == len(summary["batch"]["ms"])
    assert summary["batch"]["providers"] == (["CUDAExecutionProvider"] if summary["gpu"]
                                             else ["CPUExecutionProvider"])
    rows = summary["throughput"]["rows"]
    checked = json.loads((smoke / "doctor-check.json").read_text())["results"]
    assert {r["model"] for r in rows} == {r["model"] for r in checked} >= {
        "colorize", "superres-best-x4", "superres-fast-x4"}  # every shipped model
    assert all(r["cpu"] > 0 for r in rows)
    trained = {t["name"]: t for t in summary["training"]}
    assert set(trained) == {"superres-fast", "colorize-class"}
    assert all(t["reached"] == t["planned"] == 2 for t in trained.values())


@pytest.mark.slow  # the smoke run takes 20-70 s on 2 cores; CI runs it in its -m slow step
def test_what_comes_back_fits_the_device_limits(smoke: Path) -> None:
    back = [p for p in smoke.iterdir() if p.name != "work"]  # work/ stays on the machine
    assert len(back) <= 8 and all(p.is_file() and p.stat().st_size < 16 * 2**20 for p in back)
    assert {"summary.json", "doctor-check.json", "train.log", "colorize-class.pt"} <= {
        p.name for p in back}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["superres-fast", "colorize-class"])
def test_returned_checkpoints_load_for_export_without_optimiser(smoke: Path, name: str) -> None:
    import torch

    ck = torch.load(smoke / f"{name}.pt", map_location="cpu", weights_only=False)
    assert "optimizer" not in ck and "model" in ck
    module = __import__(f"exporters.{name.split('-')[0]}", fromlist=["load_trained"])
    loaded = module.load_trained(smoke / f"{name}.pt", torch.device("cpu"))
    assert loaded is not None


@pytest.mark.slow  # the smoke run takes 20-70 s on 2 cores; CI runs it in its -m slow step
def test_publish_writes_the_table_into_the_benchmarks_page(smoke: Path, tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n<!-- device:start -->\nold\n<!-- device:end -->\n")
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "device.py"), "publish",
                    str(smoke), "--doc", str(doc)], check=True, timeout=120)
    text = doc.read_text()
    assert "old" not in text and "## CUDA vs CPU (device run)" in text
    assert "| superres-fast-x4 | 32x48 |" in text
    summary = json.loads((smoke / "summary.json").read_text())
    if not summary["gpu"]:
        assert "CUDA was not usable: " in text


@pytest.fixture
def parts(tmp_path: Path) -> tuple[Path, dict]:
    """Return a carried folder holding a small bundle in three parts and its manifest."""
    staging = tmp_path / "staging"
    (staging / "data").mkdir(parents=True)
    (staging / "data" / "image.bin").write_bytes(bytes(range(256)) * 40)
    bundle = tmp_path / "bundle.tar.xz"
    with tarfile.open(bundle, "w:xz") as tar:
        tar.add(staging / "data", arcname="data")
    carried = tmp_path / "carried"
    carried.mkdir()
    size = bundle.stat().st_size // 3 + 1
    manifest = {"parts": device_bundle.split(bundle, carried, size)}
    (carried / "manifest.json").write_text(json.dumps(manifest))
    return carried, manifest


def test_parts_are_kept_one_call_at_a_time_then_unpacked(
        parts: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    carried, manifest = parts
    monkeypatch.setattr(device_bundle, "STASH", tmp_path / "stash")
    monkeypatch.setattr(device_bundle, "install_imgproc", lambda: None)  # pip: not here
    names = [p["name"] for p in manifest["parts"]]
    assert len(names) == 3
    held = {n: (carried / n).read_bytes() for n in names}
    statuses = []
    for name in names:  # each call carries one part and the manifest
        for n in names:
            (carried / n).unlink(missing_ok=True)
        (carried / name).write_bytes(held[name])
        statuses.append(device_bundle.stash(carried))
    assert statuses[0].startswith("kept 1 of 3 parts") and statuses[1].startswith("kept 2 of 3")
    assert statuses[2].startswith("ready")
    assert (tmp_path / "stash" / "data" / "image.bin").read_bytes() == bytes(range(256)) * 40


def test_a_damaged_part_is_refused(parts: tuple[Path, dict], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    carried, manifest = parts
    monkeypatch.setattr(device_bundle, "STASH", tmp_path / "stash")
    first = carried / manifest["parts"][0]["name"]
    first.write_bytes(first.read_bytes()[:-1] + b"\0")
    assert hashlib.sha256(first.read_bytes()).hexdigest() != manifest["parts"][0]["sha256"]
    with pytest.raises(SystemExit, match="sha256 differs"):
        device_bundle.stash(carried)


def test_the_plan_names_every_part_and_runs_after_the_last(parts: tuple[Path, dict]) -> None:
    _, manifest = parts
    lines = device_bundle.plan(manifest["parts"], 7.5).splitlines()[:4]
    assert lines[0].startswith("3 parts")
    assert all('".device/manifest.json"' in line for line in lines[1:])
    assert "run --minutes 7.5" in lines[-1] and "timeout_s=600" in lines[-1]
    assert "run --minutes" not in lines[1] and "timeout_s=120" in lines[1]


@pytest.mark.parametrize(("done", "seconds", "budget", "expected"), [
    (40, 20.0, 100.0, 220),  # 0.5 s a step: 90% of 100 s is 180 more
    (1, 30.0, 20.0, 1),  # slower than the time left: nothing more
    (0, 0.0, 100.0, 0),  # nothing measured: do not guess
    (40, 20.0, -5.0, 40),  # past the deadline
], ids=["room", "no-room", "unmeasured", "late"])
def test_the_second_phase_ends_at_the_deadline(done: int, seconds: float, budget: float,
                                               expected: int) -> None:
    assert planned_total(done, seconds, budget) == expected


def test_io_binding_gives_the_plain_run_its_figures(tmp_path: Path) -> None:
    import numpy as np

    from imgproc.session import SessionPool
    from tests.test_doctor import scale_model

    device = pytest.importorskip("device")
    session = SessionPool(provider="cpu").get(scale_model(tmp_path / "half.onnx", 0.5))
    feeds = {"image": np.ones((1, 3, 64, 80), dtype=np.float32)}
    plain = device.megapixels_per_second(session, feeds, 0.05)
    bound = device.megapixels_per_second(session, feeds, 0.05, binding="cpu")
    assert plain > 0 and bound > 0


def test_the_gpu_table_compares_cuda_with_the_cpu() -> None:
    device = pytest.importorskip("device")
    row = {"model": "m", "input": [1, 3, 512, 528], "cpu": 2.0, "cuda": 50.0,
           "cuda_tf32": 80.0, "cuda_iobinding": 55.0}
    text = device.section({"throughput": {"providers": ["cuda", "cpu", "cuda_tf32"],
                                          "rows": [row]},
                           "device": "NVIDIA H200", "check_ok": True, "cuda": {}})
    assert "| m | 512x528 | 2.0 | 50.0 | 80.0 | 55.0 | 25.0x |" in text
    assert "Device: NVIDIA H200; `imgproc doctor --check`: ok." in text


@pytest.mark.parametrize("code", ["import sys; sys.exit(3)", "import time; time.sleep(60)"],
                         ids=["fails", "outlives-the-deadline"])
def test_a_trainer_without_checkpoint_is_reported_not_fatal(tmp_path: Path, code: str) -> None:
    import time

    from device_train import TrainJob, train_jobs

    job = TrainJob(name="broken", unit="step", first=1,
                   command=[sys.executable, "-c", code])
    start = time.monotonic()
    (result,) = train_jobs([job], work=tmp_path, out=tmp_path, deadline=start + 2.0,
                           env={"PATH": "/usr/bin:/bin"})
    assert result["reached"] == 0 and "no checkpoint" in result["error"]
    assert time.monotonic() - start < 30  # SIGTERM at the deadline, not the trainer's minute
    assert "==> broken" in (tmp_path / "train.log").read_text()


def test_the_working_tree_leaves_room_for_a_carried_part() -> None:
    # every device call sends the tree with one part; pack sizes parts to what is left
    assert 0 < device_bundle.tree_mb() < device_bundle.CARRY_LIMIT_MB - 20
