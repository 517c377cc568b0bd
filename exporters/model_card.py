"""What an export writes besides the ONNX file: the JSON facts sidecar the host reads
(`ModelFile.from_facts`) and the markdown model card a person reads."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort
import torch


@dataclass(frozen=True)
class ModelCard:
    """What a human and the host need to know about one exported model."""

    name: str
    summary: str
    architecture: str
    training_data: str
    training_steps: str
    metrics: dict[str, float | str]
    facts: dict[str, object]


@dataclass(frozen=True)
class ExportResult:
    """The files one export wrote and the figures it measured."""

    onnx_path: Path
    card_path: Path
    facts_path: Path
    sha256: str
    parameters: int
    max_abs_error: float


@dataclass(frozen=True)
class Checked:
    """The tolerance and input sizes a parity check used."""

    atol: float
    rtol: float
    shapes: list[list[int]]


def sidecar(card: ModelCard, result: ExportResult, proto: onnx.ModelProto,
             checked: Checked) -> dict[str, object]:
    """Return the JSON facts sidecar that the host reads next to the ONNX file."""
    return {
        "name": card.name,
        "file": result.onnx_path.name,
        "sha256": result.sha256,
        "parameters": result.parameters,
        "inputs": graph_values(proto.graph.input),
        "outputs": graph_values(proto.graph.output),
        "opset": opset_of(proto),
        "parity": {"max_abs_error": result.max_abs_error, "atol": checked.atol,
                   "rtol": checked.rtol, "checked_shapes": checked.shapes},
        "summary": card.summary,
        "training_data": card.training_data,
        "training_steps": card.training_steps,
        "metrics": card.metrics,
        "facts": card.facts,
        "exported_with": {"torch": torch.__version__, "onnx": onnx.__version__,
                          "onnxruntime": ort.__version__},
    }


def card_markdown(card: ModelCard, result: ExportResult, proto: onnx.ModelProto,
                   checked: Checked) -> str:
    """Return the human model card as markdown."""
    io_rows = [("input", v) for v in graph_values(proto.graph.input)]
    io_rows += [("output", v) for v in graph_values(proto.graph.output)]
    lines = [
        f"# {card.name}", "", card.summary, "",
        "## Architecture", "", card.architecture, "",
        "## Parameters", "", f"{result.parameters:,}", "",
        "## Inputs and outputs", "",
        *_table(("", "Name", "Shape", "Dtype"),
                [(kind, f"`{v['name']}`", fmt_shape(v["shape"]), v["dtype"])
                 for kind, v in io_rows]), "",
        "## Training data", "", card.training_data, "",
        "## Training", "", card.training_steps, "",
        "## Validation", "",
        *(_table(("Metric", "Value"), [(k, _fmt_value(v)) for k, v in card.metrics.items()])
          if card.metrics else ["No metrics recorded."]), "",
        "## Facts", "",
        *(_table(("Fact", "Value"), [(k, f"`{json.dumps(v)}`") for k, v in card.facts.items()])
          if card.facts else ["None."]), "",
        "## Parity", "",
        f"PyTorch vs ONNX Runtime (CPUExecutionProvider), `np.allclose` with "
        f"atol={checked.atol:g}, rtol={checked.rtol:g}: max abs error "
        f"{result.max_abs_error:.3g} over input sizes "
        f"{', '.join(fmt_shape(shape) for shape in checked.shapes)}.", "",
        "## File", "",
        f"`{result.onnx_path.name}`, opset {opset_of(proto)}, sha256 `{result.sha256}`.", "",
    ]
    return "\n".join(lines)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """Return markdown table lines, with '|' in cells escaped."""
    def row(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return [row(header), row(["---"] * len(header)), *(row(r) for r in rows)]


def _fmt_value(value: float | str) -> str:
    """Return a metric value for the card: numbers to 6 significant digits."""
    return f"{value:.6g}" if isinstance(value, int | float) else value


def fmt_shape(shape: Sequence[object]) -> str:
    """Return a shape as 1x3xheightxwidth."""
    return "x".join(str(dim) for dim in shape)


def opset_of(proto: onnx.ModelProto) -> int:
    """Return the default-domain (ai.onnx) opset version of a model."""
    return next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))


def graph_values(infos: Sequence[onnx.ValueInfoProto]) -> list[dict[str, object]]:
    """Return name, shape (symbolic dims as strings) and dtype of graph inputs or outputs."""
    values = []
    for info in infos:
        tensor_type = info.type.tensor_type
        shape = [dim.dim_param or (dim.dim_value if dim.HasField("dim_value") else "?")
                 for dim in tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
        values.append({"name": info.name, "shape": shape, "dtype": dtype})
    return values
