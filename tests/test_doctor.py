"""`imgproc doctor --check`, and what works with no ONNX Runtime installed at all."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import Result

from imgproc import ModelFile
from imgproc.doctor import (
    DEFAULT_TOLERANCE,
    SIDE,
    check_model,
    format_check,
    sample_feeds,
    shipped_models,
    tolerance,
)
from imgproc.registry import Registry
from imgproc.session import CPU, SessionPool, sha256_file

Run = Callable[..., Result]


def scale_model(path: Path, factor: float) -> ModelFile:
    """Return a real ONNX model computing image * factor (dynamic height and width)."""
    import onnx
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, "height", "width"])
          for n in ("image", "output")]
    k = helper.make_tensor("k", TensorProto.FLOAT, [], [factor])
    graph = helper.make_graph([helper.make_node("Mul", ["image", "k"], ["output"])], "scale",
                              [io[0]], [io[1]], [k])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return ModelFile(path.stem, path, sha256_file(path), ("image",), ("output",))


class SwappedPool:
    """A pool that answers every model with another one: a GPU that computes wrongly."""

    def __init__(self, model: ModelFile) -> None:
        self.pool, self.model = SessionPool(provider="cpu"), model

    def get(self, model: ModelFile) -> object:
        return self.pool.get(self.model)


def test_check_runs_every_shipped_model_on_the_cpu(run_cli: Run, registry: Registry) -> None:
    result = run_cli("doctor", "--check", "--json")
    report = json.loads(result.stdout)
    assert result.exit_code == 0 and report["ok"]
    rows = {(r["processor"], r["model"]): r for r in report["results"]}
    assert set(rows) == {(p, m.name) for p, m in shipped_models(registry)} >= {
        ("colorize", "colorize"), ("superres", "superres-fast-x4")}
    assert all(r["ran_on"] == CPU and r["ms"] > 0 and r["provider"] == "cpu"
               for r in rows.values())
    assert rows[("superres", "superres-best-x2")]["atol"] == 1e-4  # from the model's card
    if not report["cuda"]["usable"]:  # this machine: says why in one line, no CUDA rows
        assert report["cuda"]["reason"] and "\n" not in report["cuda"]["reason"]
        assert report["providers"] == ["cpu"]


def test_a_gpu_that_disagrees_with_the_cpu_fails_the_check(tmp_path: Path) -> None:
    good = scale_model(tmp_path / "half.onnx", 0.5)
    wrong = scale_model(tmp_path / "other" / "half.onnx", 0.51)
    same = check_model("p", good, {"cpu": SessionPool(provider="cpu"),
                                   "cuda": SessionPool(provider="cpu")})
    assert [r.ok for r in same] == [True, True] and same[1].max_abs_diff == 0.0
    rows = check_model("p", good, {"cpu": SessionPool(provider="cpu"),
                                   "cuda": SwappedPool(wrong)})  # type: ignore[dict-item]
    assert rows[0].ok and not rows[1].ok
    assert rows[1].max_abs_diff == pytest.approx(0.01, rel=0.01)  # inputs reach 1
    assert "p/half on cuda: ran on CPUExecutionProvider" in format_check(
        {"ok": False, "cuda": {"usable": True}, "results": [dataclasses.asdict(rows[1])]})


def test_a_model_that_fails_to_load_is_a_failed_row(tmp_path: Path) -> None:
    ghost = ModelFile("ghost", tmp_path / "ghost.onnx", "0" * 64)
    (row,) = check_model("p", ghost, {"cpu": SessionPool(provider="cpu")})
    assert not row.ok and "ModelError" in row.error and "missing" in row.error


def test_sample_feeds_keep_symbolic_sizes_consistent_and_well_conditioned() -> None:
    spec = [SimpleNamespace(name=n, shape=s, type="tensor(float)") for n, s in [
        ("a", [1, 3, "height", "width"]), ("weight", [1]), ("dct_h", ["height", "height"]),
        ("dct_w", ["width", "width"]), ("eig_w", ["width"])]]
    feeds = sample_feeds(spec)
    h, w = SIDE, SIDE + 16
    assert feeds["a"].shape == (1, 3, h, w) and feeds["a"].dtype == np.float32
    assert feeds["dct_h"].shape == (h, h) and feeds["eig_w"].shape == (w,)
    assert np.allclose(feeds["dct_w"] @ feeds["dct_w"].T, np.eye(w), atol=1e-5)
    assert feeds["eig_w"].min() >= 1.0 and feeds["weight"].tolist() == [0.5]
    with pytest.raises(ValueError, match="float inputs only"):
        sample_feeds([SimpleNamespace(name="n", shape=[1], type="tensor(int64)")])


def test_tolerance_comes_from_the_card_beside_the_model(tmp_path: Path) -> None:
    model = ModelFile("m", tmp_path / "m.onnx", "0" * 64)
    assert tolerance(model) == DEFAULT_TOLERANCE
    (tmp_path / "m.json").write_text(json.dumps({"parity": {"atol": 0.01, "rtol": 0.0}}))
    assert tolerance(model) == (0.01, 0.0)


@pytest.mark.parametrize(("args", "code", "says"), [
    (["run", "-p", "colorize", "in", "-o", "out"], 2, "no ONNX Runtime is installed"),
    (["plugins"], 0, "model superres-fast-x4"),
    (["--help"], 0, "Usage"),
    (["doctor"], 0, "error: no ONNX Runtime is installed"),
    (["doctor", "--check"], 1, "check: FAILED"),
], ids=["run", "plugins", "help", "doctor", "check"])
def test_without_onnxruntime(run_cli: Run, monkeypatch: pytest.MonkeyPatch,
                             write_image: Callable[..., Path], tmp_path: Path,
                             args: list[str], code: int, says: str) -> None:
    write_image(tmp_path / "in" / "a.png")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    result = run_cli(*args)
    assert result.exit_code == code, result.output
    assert says in result.output
    if code == 2:  # one line naming both extras
        message = [line for line in result.output.splitlines() if "ONNX Runtime" in line]
        assert len(message) == 1 and "[cpu]" in message[0] and "[gpu]" in message[0]


def test_a_check_with_no_declared_model_passes_and_says_so(tmp_path: Path) -> None:
    from imgproc.config import RuntimeSettings
    from imgproc.doctor import check

    result = check(Registry(), RuntimeSettings())
    assert result["ok"] and result["results"] == []
    assert "models: none" in format_check(result)
