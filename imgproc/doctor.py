"""`imgproc doctor`: what this machine offers, what each model's session actually got, and
(`--check`) every shipped model run once on each usable provider and compared with the CPU."""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from imgproc.config import RuntimeSettings
from imgproc.cuda import cuda_status, installed_runtimes
from imgproc.errors import ImgprocError, RuntimeMissing
from imgproc.processor import ModelFile
from imgproc.registry import Registry
from imgproc.session import CPU, Session, SessionPool, load_onnxruntime

SIDE = 48  # first spatial size of the check's inputs; the next symbolic dimension gets SIDE + 16
DEFAULT_TOLERANCE = (1e-4, 1e-3)  # atol, rtol when a model has no card with its parity figures
_FLOATS: dict[str, type[np.floating]] = {"tensor(float)": np.float32,
                                         "tensor(float16)": np.float16,
                                         "tensor(double)": np.float64}


def diagnose(registry: Registry, settings: RuntimeSettings) -> dict[str, Any]:
    """Return a JSON-ready report of the runtime and of each declared model's session."""
    report: dict[str, Any] = {
        "python": sys.version.split()[0], "platform": platform.platform(),
        "installed": installed_runtimes(), "config": f"provider={settings.provider}",
        "warnings": _warnings(), "failures": [{"plugin": f.plugin, "reason": f.reason}
                                              for f in registry.failures]}
    try:
        ort = load_onnxruntime()
    except RuntimeMissing as exc:
        return {**report, "onnxruntime": None, "providers_available": [], "error": str(exc),
                "cuda": {"usable": False, "reason": str(exc)}, "models": []}
    cuda = cuda_status(ort)
    pool = SessionPool.from_settings(settings)
    models = []
    for processor, model in shipped_models(registry):
        row: dict[str, Any] = {"processor": processor, "model": model.name}
        try:
            row["provider"] = pool.get(model).provider
        except ImgprocError as exc:
            row["error"] = str(exc)
        models.append(row)
    return {**report, "onnxruntime": ort.__version__,
            "providers_available": list(ort.get_available_providers()),
            "cuda": {"usable": cuda.usable, "reason": cuda.reason, "devices": cuda.devices},
            "models": models}


def shipped_models(registry: Registry) -> list[tuple[str, ModelFile]]:
    """Return (processor, model) for every model an installed processor declares, sorted."""
    return [(entry.processor.name, model)
            for entry in sorted(registry.processors.values(), key=lambda r: r.processor.name)
            for model in entry.processor.models]


@dataclass(frozen=True)
class ModelCheck:
    """One model run once on one provider; GPU rows are compared with the CPU row."""

    processor: str
    model: str
    provider: str  # requested: cpu, cuda or tensorrt
    ran_on: str = ""  # the execution provider ONNX Runtime actually used
    ms: float | None = None  # one run after a warm-up run
    max_abs_diff: float | None = None  # largest |output - CPU output|; None on the CPU row
    atol: float = DEFAULT_TOLERANCE[0]
    rtol: float = DEFAULT_TOLERANCE[1]
    ok: bool = False
    error: str = ""


def check(registry: Registry, settings: RuntimeSettings) -> dict[str, Any]:
    """Return every shipped model run once per usable provider, GPU outputs against the CPU's;
    `ok` is true when every model ran on the CPU and every GPU provider agreed within the
    parity tolerance of the model's card."""
    try:
        ort = load_onnxruntime()
    except RuntimeMissing as exc:
        return {"ok": False, "error": str(exc), "cuda": {"usable": False, "reason": str(exc)},
                "providers": [], "results": []}
    cuda = cuda_status(ort)
    gpu = ["cuda"] if cuda.usable else []
    if cuda.usable and settings.provider == "tensorrt":
        gpu.append("tensorrt")
    pools = {p: SessionPool.from_settings(settings, provider=p) for p in ["cpu", *gpu]}
    results = [row for processor, model in shipped_models(registry)
               for row in check_model(processor, model, pools)]
    return {"ok": all(r.ok for r in results),  # no model declared: nothing failed
            "onnxruntime": ort.__version__, "providers": list(pools),
            "cuda": {"usable": cuda.usable, "reason": cuda.reason, "devices": cuda.devices},
            "results": [asdict(r) for r in results]}


def check_model(processor: str, model: ModelFile, pools: dict[str, SessionPool]
                ) -> list[ModelCheck]:
    """Return one ModelCheck per pool for `model` (the "cpu" pool first: the reference)."""
    atol, rtol = tolerance(model)
    base = ModelCheck(processor, model.name, "cpu", atol=atol, rtol=rtol)
    try:
        session = pools["cpu"].get(model)
        feeds = sample_feeds(session.inner.get_inputs())
        reference, ms = timed_run(session, feeds)
    except Exception as exc:  # one broken model is a row, not the end of the check
        return [_failed(base, exc)]
    rows = [replace(base, ran_on=session.provider, ms=ms, ok=session.provider == CPU)]
    for name, pool in pools.items():
        if name != "cpu":
            rows.append(_compare(replace(base, provider=name), pool, model, feeds, reference))
    return rows


def _compare(row: ModelCheck, pool: SessionPool, model: ModelFile,
             feeds: dict[str, np.ndarray], reference: list[np.ndarray]) -> ModelCheck:
    try:
        session = pool.get(model)
        outputs, ms = timed_run(session, feeds)
    except Exception as exc:
        return _failed(row, exc)
    diff = max(float(np.max(np.abs(o - r), initial=0.0)) for o, r in zip(outputs, reference,
                                                                        strict=True))
    agree = all(np.allclose(o, r, atol=row.atol, rtol=row.rtol)
                for o, r in zip(outputs, reference, strict=True))
    return replace(row, ran_on=session.provider, ms=ms, max_abs_diff=diff, ok=agree)


def timed_run(session: Session, feeds: dict[str, np.ndarray]) -> tuple[list[np.ndarray], float]:
    """Return the outputs and the milliseconds of one run after a warm-up run."""
    session.run(feeds)  # the first run pays for allocations and (CUDA) the cuDNN search
    start = time.perf_counter()
    outputs = session.run(feeds)
    return [np.asarray(o, dtype=np.float64) for o in outputs], (time.perf_counter() - start) * 1e3


def tolerance(model: ModelFile) -> tuple[float, float]:
    """Return (atol, rtol) from the parity record of the model's card (exporters/ writes it as
    the .json beside the .onnx), or the default when there is none."""
    card = Path(model.path).with_suffix(".json")
    try:
        parity = json.loads(card.read_text())["parity"]
        return float(parity["atol"]), float(parity["rtol"])
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_TOLERANCE


def sample_feeds(inputs: Sequence[Any], *, side: int = SIDE, seed: int = 0
                 ) -> dict[str, np.ndarray]:
    """Return well-conditioned inputs for a model's input descriptions (name, shape, type):
    images uniform in [0, 1], square matrices orthonormal (bases), vectors in [1, 2] (never a
    zero divisor), single values 0.5. Symbolic dimensions get side, side + 16, ..."""
    rng = np.random.default_rng(seed)
    sizes: dict[str, int] = {}
    feeds = {}
    for spec in inputs:
        shape = [d if isinstance(d, int) and d > 0 else
                 sizes.setdefault(str(d), side + 16 * len(sizes)) for d in spec.shape]
        feeds[spec.name] = _sample(shape, rng).astype(_dtype(spec.type))
    return feeds


def _sample(shape: list[int], rng: np.random.Generator) -> np.ndarray:
    if len(shape) == 2 and shape[0] == shape[1]:
        return np.linalg.qr(rng.standard_normal(shape))[0]
    if len(shape) == 1 and shape[0] > 1:
        return rng.uniform(1.0, 2.0, shape)
    if int(np.prod(shape)) == 1:
        return np.full(shape, 0.5)
    return rng.uniform(0.0, 1.0, shape)


def _dtype(onnx_type: str) -> type[np.floating]:
    if onnx_type not in _FLOATS:
        raise ValueError(f"the check feeds float inputs only, not {onnx_type}")
    return _FLOATS[onnx_type]


def _failed(row: ModelCheck, exc: Exception) -> ModelCheck:
    return replace(row, ok=False, error=f"{type(exc).__name__}: {exc}".splitlines()[0])


def _warnings() -> list[str]:
    if len(installed_runtimes()) == 2:
        return ["both onnxruntime and onnxruntime-gpu are installed and share one module; "
                "keep one: pip uninstall -y onnxruntime onnxruntime-gpu && "
                "pip install onnxruntime-gpu"]
    return []


def format_report(report: dict[str, Any]) -> str:
    """Return `imgproc doctor`'s report as lines for a terminal."""
    lines = [f"{key}: {report[key]}" for key in ("python", "platform", "onnxruntime",
                                                 "providers_available", "config")]
    cuda = report["cuda"]
    if report.get("error"):
        lines.append(f"error: {report['error']}")
    elif cuda["usable"]:
        lines.append(f"cuda: usable ({cuda['devices']} device(s))")
    else:
        lines.append(f"cuda: not usable: {cuda['reason']}")
    lines += [f"warning: {w}" for w in report["warnings"]]
    lines += [f"model {m['processor']}/{m['model']}: {m.get('provider') or m.get('error')}"
              for m in report["models"]]
    if not report["models"] and not report.get("error"):
        lines.append("models: none (no installed processor declares a model)")
    return "\n".join(lines)


def format_check(result: dict[str, Any]) -> str:
    """Return `imgproc doctor --check`'s result as one line per model and provider."""
    cuda = result["cuda"]
    lines = [f"error: {result['error']}"] if result.get("error") else []
    if not cuda["usable"] and not result.get("error"):
        lines.append(f"cuda: not usable: {cuda['reason']}")
    for r in result["results"]:
        head = f"{r['processor']}/{r['model']} on {r['provider']}: "
        if r["error"]:
            lines.append(head + f"FAILED {r['error']}")
            continue
        diff = ("" if r["max_abs_diff"] is None else
                f", max |diff| from cpu {r['max_abs_diff']:.2e} (atol {r['atol']:g}, "
                f"rtol {r['rtol']:g})")
        lines.append(head + f"ran on {r['ran_on']}, {r['ms']:.1f} ms{diff}: "
                     + ("ok" if r["ok"] else "FAILED"))
    if not result["results"] and not result.get("error"):
        lines.append("models: none (no installed processor declares a model)")
    lines.append("check: ok" if result["ok"] else "check: FAILED")
    return "\n".join(lines)
