"""What the GPU machine lacks, carried in call-sized parts: onnxruntime-gpu (unpacked, so xz
shrinks its CUDA kernels), the wheels imgproc needs beyond that machine's Python, and the
training data; unpacked and installed there under STASH once every part has arrived."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

STASH = Path(os.environ.get("IMGPROC_DEVICE_HOME", "/root/imgproc-device"))
ORT_GPU = "onnxruntime-gpu==1.31.1"  # CUDA 13 build; the GPU machine's torch ships CUDA 13
WHEELS = ("structlog", "watchdog")  # imgproc's dependencies that machine's Python lacks
PYTHON = ("--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:",
          "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64")
CARRY_LIMIT_MB = 64  # the working tree and the carried paths of one call together
COLOR_SHORT_SIDE = 72  # colorize trains on crops of images resized to this short side


def pack(data: Path, dest: Path, *, part_mb: int | None = None, minutes: float = 8.0,
         skip: frozenset[str] = frozenset()) -> str:
    """Write dest/part-NN and dest/manifest.json; return the plan of device calls. `skip`
    may hold "ort" (no onnxruntime-gpu: ONNX Runtime runs on that machine's CPU only) and
    "data" (no training data: the run measures and does not train)."""
    part_mb = part_mb or int(CARRY_LIMIT_MB - tree_mb() - 2)
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp) / "bundle"
        fetch_runtime(staging, ort="ort" not in skip)
        if "data" not in skip:
            copy_data(data, staging / "data")
        dest.mkdir(parents=True, exist_ok=True)
        for old in dest.glob("part-*"):
            old.unlink()
        bundle = Path(tmp) / "bundle.tar.xz"
        subprocess.run(f"tar -cf - -C {staging} . | xz -T2 -6 > {bundle}", shell=True,
                       check=True)
        parts = split(bundle, dest, part_mb * 1024 * 1024)
    manifest = {"parts": parts, "ort": ORT_GPU}
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return plan(parts, minutes)


def tree_mb() -> float:
    """Return the MiB of what travels with every call: tracked and untracked-unignored files."""
    root = Path(__file__).resolve().parent.parent
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=root, capture_output=True, text=True, check=True).stdout
    return sum((root / n).stat().st_size for n in names.split("\0")
               if n and (root / n).is_file()) / 2**20


def fetch_runtime(staging: Path, *, ort: bool = True) -> None:
    """Download the missing wheels (and onnxruntime-gpu) for the GPU machine's Python 3.12."""
    wheels = staging / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", *PYTHON,
                    "-d", str(wheels), *([ORT_GPU] if ort else []), *WHEELS], check=True)
    for gpu_wheel in wheels.glob("onnxruntime_gpu-*.whl"):
        with zipfile.ZipFile(gpu_wheel) as whl:  # a wheel is its files: unzipped, it installs
            whl.extractall(staging / "ortgpu")  # by copying, and xz shrinks its CUDA kernels
        gpu_wheel.unlink()


def copy_data(data: Path, dest: Path) -> None:
    """Copy the training and validation sets the trainers read, colorize's at its size."""
    from PIL import Image

    for folder in ("sr-train", "sr-val/McMaster18", "color-val"):
        shutil.copytree(data / folder, dest / folder)
    (dest / "color-train").mkdir(parents=True)
    for path in sorted((data / "color-train").glob("*.jpg")):
        with Image.open(path) as img:
            scale = COLOR_SHORT_SIDE / min(img.size)
            small = img.convert("RGB").resize((max(COLOR_SHORT_SIDE, round(img.width * scale)),
                                               max(COLOR_SHORT_SIDE, round(img.height * scale))),
                                              Image.Resampling.BICUBIC)
            small.save(dest / "color-train" / path.name, quality=95)


def split(bundle: Path, dest: Path, size: int) -> list[dict[str, object]]:
    """Return the manifest rows of the parts `bundle` is cut into."""
    parts = []
    with open(bundle, "rb") as src:
        while chunk := src.read(size):
            name = f"part-{len(parts) + 1:02d}"
            (dest / name).write_bytes(chunk)
            parts.append({"name": name, "bytes": len(chunk),
                          "sha256": hashlib.sha256(chunk).hexdigest()})
    return parts


def plan(parts: list[dict[str, object]], minutes: float) -> str:
    """Return the device calls, one per part, the last one also running the device script."""
    mb = sum(int(p["bytes"]) for p in parts) / 2**20  # type: ignore[call-overload]
    lines = [f"{len(parts)} parts, {mb:.0f} MiB; device calls (run tool), in order:"]
    for i, part in enumerate(parts):
        command, timeout = "python3 benchmarks/device.py stash", 120
        if i == len(parts) - 1:  # unpacking, then the run with a minute and a half to spare
            command += (f" && PYTHONUNBUFFERED=1 python3 benchmarks/device.py run --minutes "
                        f"{minutes:g}")
            timeout = 600
        lines.append(f'  command="{command}" carry=[".device/manifest.json", '
                     f'".device/{part["name"]}"] timeout_s={timeout}')
    lines.append("then, here: copy the returned files into a folder and "
                 "`python benchmarks/device.py publish FOLDER`")
    return "\n".join(lines)


def stash(carried: Path) -> str:
    """Keep the parts carried in this call under STASH; once all are there, unpack and install.
    Return a one-line status."""
    manifest = json.loads((carried / "manifest.json").read_text())
    kept = STASH / "parts"
    kept.mkdir(parents=True, exist_ok=True)
    for part in manifest["parts"]:
        src = carried / part["name"]
        if src.exists():
            if hashlib.sha256(src.read_bytes()).hexdigest() != part["sha256"]:
                raise SystemExit(f"{src}: sha256 differs from the manifest (damaged in transit)")
            shutil.copyfile(src, kept / part["name"])
    missing = [p["name"] for p in manifest["parts"] if not (kept / p["name"]).exists()]
    if missing:
        return f"kept {len(manifest['parts']) - len(missing)} of {len(manifest['parts'])} " \
               f"parts; still to carry: {', '.join(missing)}"
    if not (STASH / "ready").exists():
        unpack([kept / p["name"] for p in manifest["parts"]])
    return f"ready: {STASH} (onnxruntime-gpu, imgproc, data)"


def unpack(parts: list[Path]) -> None:
    """Unpack the bundle into STASH and install imgproc and the carried wheels into STASH/site."""
    with subprocess.Popen(["tar", "-xJf", "-", "-C", str(STASH)], stdin=subprocess.PIPE) as tar:
        assert tar.stdin is not None
        for part in parts:
            tar.stdin.write(part.read_bytes())
        tar.stdin.close()
    if tar.returncode:
        raise SystemExit(f"tar failed ({tar.returncode}) unpacking the bundle")
    install_imgproc()
    (STASH / "ready").touch()


def install_imgproc() -> None:
    """Install this checkout (and the carried wheels) into STASH/site, without the network."""
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--no-build-isolation", "--upgrade", "--target", str(STASH / "site"),
                    str(root), *map(str, sorted((STASH / "wheels").glob("*.whl")))], check=True)


def subprocess_env() -> dict[str, str]:
    """Return the environment for imgproc and the trainers: the carried onnxruntime-gpu and
    imgproc first on the path, the CUDA libraries of the machine's torch on the loader path."""
    env = dict(os.environ)
    paths = [str(p) for p in (STASH / "ortgpu", STASH / "site") if p.is_dir()]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(":")
    libs = nvidia_libraries()
    if libs:
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, env.get("LD_LIBRARY_PATH", "")])
    return env


def nvidia_libraries() -> list[str]:
    """Return the lib folders of NVIDIA's pip packages (CUDA, cuBLAS, cuDNN) on sys.path."""
    found: list[str] = []
    for entry in sys.path:
        root = Path(entry or ".") / "nvidia"
        if root.is_dir():
            found += sorted({str(so.parent) for so in root.glob("**/lib/*.so*")})
    return found
