"""Export a trained PyTorch module to one self-contained ONNX file, check it, and card it.

Every model issue ends with `export_model`: it captures the module with `torch.export` and
named dynamic dims, converts it with the dynamo ONNX exporter, runs `onnx.checker`, checks
PyTorch-vs-ONNX-Runtime parity on the example inputs and on inputs of other sizes, then writes
`<name>.onnx`, the `<name>.json` facts sidecar the host reads and the `<name>.md` model card.

Why this export path (measured with torch 2.13): the legacy TorchScript exporter
(`dynamo=False` + `dynamic_axes`) emits deprecation warnings and silently bakes Python ints
derived from shapes into constants, giving wrong numbers on other sizes.
`torch.onnx.export(dynamo=True)` on a module quietly falls back to the example size when a dim
cannot stay dynamic (it applies torch.export's "suggested fixes"). Capturing with
`torch.export.export(strict=False)` ourselves makes that case a loud `ExportError` instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.fx.experimental._config as fx_config

from exporters.model_card import (
    Checked,
    ExportResult,
    ModelCard,
    card_markdown,
    fmt_shape,
    graph_values,
    opset_of,
    sidecar,
)
from exporters.onnx_weights import load_exported_weights
from exporters.training import count_parameters
from imgproc.session import sha256_file  # the host checks models with the same digest

__all__ = [
    "ExportError",
    "ExportResult",
    "ModelCard",
    "ParityError",
    "check_parity",
    "count_parameters",
    "export_model",
    "load_exported_weights",
    "sha256_file",
]

Shape = tuple[int, ...]
Inputs = Mapping[str, torch.Tensor]

# The dynamo exporter's own opset: lower ones go through onnx's version converter, which
# handles plain conv nets but not every op (ReduceMean keeps an opset-18 attribute).
_NATIVE_OPSET = 18

# A model name becomes three file names, so it must be a plain file stem.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# Loggers that print warnings which say nothing about the model being exported: torchvision
# ops being skipped, and the opset < 18 down-conversion (we verify the resulting opset).
_NOISY_LOGGERS = (
    "torch.onnx._internal.exporter._registration",
    "torch.onnx._internal.exporter._compat",
    "onnxscript.version_converter",
)


class ExportError(Exception):
    """A model could not be exported, checked or carded; names the model and the reason."""

    def __init__(self, model: str, reason: str) -> None:
        super().__init__(f"{model}: {reason}")
        self.model = model
        self.reason = reason


class ParityError(ExportError):
    """ONNX Runtime does not reproduce PyTorch on some inputs within tolerance."""

    def __init__(self, model: str, shapes: Mapping[str, Shape], max_abs_error: float,
                 *, atol: float, rtol: float, reason: str) -> None:
        sizes = ", ".join(f"{name}={fmt_shape(shape)}" for name, shape in shapes.items())
        super().__init__(model, f"parity failed on inputs {sizes}: {reason} (max abs error "
                                f"{max_abs_error:.3g}, atol={atol:g}, rtol={rtol:g})")
        self.shapes = dict(shapes)
        self.max_abs_error = max_abs_error
        self.atol = atol
        self.rtol = rtol


def check_parity(module: torch.nn.Module, onnx_path: Path, inputs: Inputs, *,
                 atol: float, rtol: float, name: str | None = None) -> float:
    """Return the max abs error of ONNX Runtime against `module` (eval mode) on `inputs`.

    Raises ParityError when any output is not `np.allclose(ort, torch, atol, rtol)`, has
    another shape, or ONNX Runtime refuses the inputs (e.g. a size baked into the graph).
    `name` defaults to the file's stem, which is the model name for exported files.
    """
    module.eval()
    session = _cpu_session(Path(onnx_path))
    return _parity(module, session, inputs, atol=atol, rtol=rtol,
                   name=name or Path(onnx_path).stem)


def export_model(
    module: torch.nn.Module,
    *,
    card: ModelCard,
    example_inputs: dict[str, torch.Tensor],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    out_dir: Path,
    parity_inputs: list[dict[str, torch.Tensor]] | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    opset: int = 18,
    size_oblivious: bool = False,
) -> ExportResult:
    """Return the files and figures of `module` exported to `out_dir/<card.name>.onnx`.

    `example_inputs` are named in forward()'s positional order; `dynamic_axes` names the
    dynamic axes of inputs (one name per size: a shared name means equal sizes) and lists the
    output axes that must come out dynamic. `parity_inputs` must include sizes other than the
    example on every dynamic input axis. The ONNX file only replaces an existing one once it
    passed every check; the sidecar and card are written after it.
    """
    parity_sets = [example_inputs, *(parity_inputs or [])]
    _check_request(card, example_inputs, output_names, dynamic_axes, parity_sets)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / f"{card.name}.onnx"
    partial = out_dir / f".{card.name}.partial.onnx"
    module.eval()
    try:
        _export_onnx(module, card.name, example_inputs, output_names, dynamic_axes, partial,
                     opset, size_oblivious)
        model = _checked_model(partial, card.name, opset, dynamic_axes)
        session = _cpu_session(partial)
        max_error = max(_parity(module, session, inputs, atol=atol, rtol=rtol, name=card.name)
                        for inputs in parity_sets)
        os.replace(partial, onnx_path)
    finally:
        partial.unlink(missing_ok=True)
    result = ExportResult(
        onnx_path=onnx_path,
        card_path=out_dir / f"{card.name}.md",
        facts_path=out_dir / f"{card.name}.json",
        sha256=sha256_file(onnx_path),
        parameters=count_parameters(module),
        max_abs_error=max_error,
    )
    checked = Checked(atol, rtol, [_first_shape(inputs) for inputs in parity_sets])
    facts = sidecar(card, result, model, checked)
    result.facts_path.write_text(json.dumps(facts, indent=2, allow_nan=False) + "\n")
    result.card_path.write_text(card_markdown(card, result, model, checked))
    return result


# --- request checks: fail before the slow export, with the model's name -------------------


def _check_request(card: ModelCard, example_inputs: Inputs, output_names: Sequence[str],
                   dynamic_axes: Mapping[str, Mapping[int, str]],
                   parity_sets: Sequence[Inputs]) -> None:
    """Return None when the export request is coherent; raise ExportError otherwise."""
    if not _NAME.fullmatch(card.name):
        raise ExportError(card.name, "model name must be a plain file stem "
                                     "(letters, digits, '.', '_', '-')")
    _check_json(card)
    if not example_inputs or not output_names:
        raise ExportError(card.name, "needs at least one example input and one output name")
    _check_axes(card.name, example_inputs, output_names, dynamic_axes)
    for inputs in parity_sets[1:]:
        if set(inputs) != set(example_inputs):
            raise ExportError(card.name, f"parity input names {sorted(inputs)} differ from "
                                         f"the example's {sorted(example_inputs)}")
    _check_other_sizes(card.name, example_inputs, dynamic_axes, parity_sets[1:])


def _check_json(card: ModelCard) -> None:
    """Return None when metrics and facts can go into the JSON sidecar; raise otherwise."""
    for field, values in (("metrics", card.metrics), ("facts", card.facts)):
        try:
            json.dumps(values, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ExportError(card.name, f"card {field} are not plain JSON: {exc}") from exc
    for key, value in card.metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ExportError(card.name, f"metric {key!r} must be a number or a string, "
                                         f"got {type(value).__name__}")


def _check_axes(model: str, example_inputs: Inputs, output_names: Sequence[str],
                dynamic_axes: Mapping[str, Mapping[int, str]]) -> None:
    """Return None when every dynamic axis names a known tensor, an axis and an identifier."""
    for tensor, axes in dynamic_axes.items():
        if tensor not in example_inputs and tensor not in output_names:
            raise ExportError(model, f"dynamic_axes names {tensor!r}, which is neither an "
                                     f"input {list(example_inputs)} nor an output "
                                     f"{list(output_names)}")
        rank = example_inputs[tensor].dim() if tensor in example_inputs else None
        for axis, dim in axes.items():
            if rank is not None and not 0 <= axis < rank:
                raise ExportError(model, f"dynamic axis {axis} of {tensor!r} is out of range "
                                         f"for shape {fmt_shape(example_inputs[tensor].shape)}")
            if not dim.isidentifier():
                raise ExportError(model, f"dynamic axis name {dim!r} of {tensor!r} must be "
                                         f"an identifier")


def _check_other_sizes(model: str, example_inputs: Inputs,
                       dynamic_axes: Mapping[str, Mapping[int, str]],
                       extra_sets: Sequence[Inputs]) -> None:
    """Return None when each dynamic input axis is checked on a size other than the example's.

    Exporters can bake the example size into a graph that still validates, so a parity check
    on the example size alone proves nothing about the dynamic axes.
    """
    untested = []
    for tensor, axes in dynamic_axes.items():
        if tensor not in example_inputs:
            continue
        for axis, dim in axes.items():
            example = example_inputs[tensor].shape[axis]
            if all(inputs[tensor].shape[axis] == example for inputs in extra_sets):
                untested.append(f"{tensor}[{axis}] ({dim})")
    if untested:
        raise ExportError(model, "parity_inputs must include sizes other than the example's "
                                 f"on every dynamic input axis; none differ on "
                                 f"{', '.join(untested)}")


# --- export and graph checks ----------------------------------------------------------------


def _export_onnx(module: torch.nn.Module, model: str, example_inputs: Inputs,
                 output_names: Sequence[str], dynamic_axes: Mapping[str, Mapping[int, str]],
                 path: Path, opset: int, size_oblivious: bool) -> None:
    """Return None after writing `module` as one self-contained ONNX file at `path`."""
    args = tuple(example_inputs.values())
    shapes = _dynamic_shapes(example_inputs, dynamic_axes)
    with _quiet_exporter(), fx_config.patch(backed_size_oblivious=size_oblivious):
        try:
            program = torch.export.export(module, args, dynamic_shapes=shapes, strict=False)
        except Exception as exc:  # torch raises many types; all mean "cannot capture"
            raise ExportError(model, f"torch.export could not capture the module with dynamic "
                                     f"axes {dict(dynamic_axes)} from example shapes "
                                     f"{_shapes(example_inputs)}: {exc}") from exc
        try:
            # dynamic_shapes again only so the exporter names the ONNX dims after our Dims.
            torch.onnx.export(program, args, str(path), input_names=list(example_inputs),
                              output_names=list(output_names), dynamic_shapes=shapes,
                              opset_version=opset, dynamo=True, external_data=False,
                              verbose=False)
        except Exception as exc:  # the converter raises many types too
            raise ExportError(model, f"ONNX conversion failed at opset {opset}: {exc}") from exc


def _dynamic_shapes(example_inputs: Inputs, dynamic_axes: Mapping[str, Mapping[int, str]]
                    ) -> tuple[dict[int, torch.export.Dim] | None, ...]:
    """Return torch.export dynamic_shapes in input order, one shared Dim object per name."""
    dims: dict[str, torch.export.Dim] = {}
    shapes: list[dict[int, torch.export.Dim] | None] = []
    for tensor in example_inputs:
        axes = dynamic_axes.get(tensor)
        if not axes:
            shapes.append(None)
            continue
        # min=1: an image axis is never empty, and torch's default range admits 0.
        shapes.append({axis: dims.setdefault(name, torch.export.Dim(name, min=1))
                       for axis, name in axes.items()})
    return tuple(shapes)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Yield with exporter noise that is about torch itself, not the model, silenced."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            # torch 2.13's own pytree code trips its own deprecation; nothing for callers to fix.
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)",
                                    category=FutureWarning)
            # Inputs sharing a dim name (image and mask heights) share one Dim on purpose.
            warnings.filterwarnings("ignore", message=r"# The axis name: (\w+) will not be used, "
                                    r"since it shares the same shape constraints with another "
                                    r"axis: \1\.$", category=UserWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _checked_model(path: Path, model: str, opset: int,
                   dynamic_axes: Mapping[str, Mapping[int, str]]) -> onnx.ModelProto:
    """Return the ONNX model at `path` once checker, opset and dynamic axes are as asked."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        hint = ""
        if opset < _NATIVE_OPSET:
            hint = f" (converted down from opset {_NATIVE_OPSET}; try opset={_NATIVE_OPSET})"
        raise ExportError(model, f"onnx.checker rejects the exported graph{hint}: {exc}"
                          ) from exc
    proto = onnx.load(str(path))
    got = opset_of(proto)
    if got != opset:
        # The dynamo exporter builds opset 18 and converts down; it keeps 18 if that fails.
        raise ExportError(model, f"exported graph has opset {got}, not the requested {opset}")
    _check_graph_axes(proto, model, dynamic_axes)
    return proto


def _check_graph_axes(proto: onnx.ModelProto, model: str,
                      dynamic_axes: Mapping[str, Mapping[int, str]]) -> None:
    """Return None when every declared dynamic axis is symbolic in the graph, not a number."""
    shapes = {value["name"]: value["shape"] for value in graph_values(proto.graph.input)}
    shapes |= {value["name"]: value["shape"] for value in graph_values(proto.graph.output)}
    for tensor, axes in dynamic_axes.items():
        shape = shapes.get(tensor)
        if shape is None:
            raise ExportError(model, f"exported graph has no input or output {tensor!r}")
        for axis in axes:
            if axis >= len(shape) or not isinstance(shape[axis], str):
                raise ExportError(model, f"axis {axis} of {tensor!r} was declared dynamic but "
                                         f"the exported graph fixes its shape to {shape}")


# --- parity -----------------------------------------------------------------------------------


def _cpu_session(path: Path) -> ort.InferenceSession:
    """Return an ONNX Runtime CPU session for the model at `path`."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: ORT's graph-optimiser notes are not failures
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _parity(module: torch.nn.Module, session: ort.InferenceSession, inputs: Inputs, *,
            atol: float, rtol: float, name: str) -> float:
    """Return the max abs error of `session` against `module` on `inputs`; raise ParityError."""
    shapes = _shapes(inputs)

    def fail(reason: str, error: float = math.inf) -> ParityError:
        return ParityError(name, shapes, error, atol=atol, rtol=rtol, reason=reason)

    expected = _torch_outputs(module, inputs, name)
    feeds = {key: tensor.detach().cpu().numpy() for key, tensor in inputs.items()}
    wanted = [value.name for value in session.get_inputs()]
    if missing := [key for key in wanted if key not in feeds]:
        raise fail(f"the graph needs inputs {missing} that were not given")
    try:
        actual = session.run(None, {key: feeds[key] for key in wanted})
    except Exception as exc:  # ORT raises its own untyped errors for shapes the graph refuses
        raise fail(f"ONNX Runtime failed: {exc}") from exc
    if len(actual) != len(expected):
        raise fail(f"ONNX has {len(actual)} outputs, PyTorch {len(expected)}")
    worst = 0.0
    for info, got, want in zip(session.get_outputs(), actual, expected, strict=True):
        if got.shape != want.shape:
            raise fail(f"output {info.name!r} has shape {fmt_shape(got.shape)} in ONNX Runtime "
                       f"but {fmt_shape(want.shape)} in PyTorch")
        error = _max_abs(got, want)
        if not np.allclose(got, want, atol=atol, rtol=rtol):
            raise fail(f"output {info.name!r} differs from PyTorch", error)
        worst = max(worst, error)
    return worst


def _torch_outputs(module: torch.nn.Module, inputs: Inputs, name: str) -> list[np.ndarray]:
    """Return the module's outputs on `inputs` (positional, in order) as numpy arrays."""
    with torch.inference_mode():
        out = module(*inputs.values())
    tensors = [out] if isinstance(out, torch.Tensor) else out
    if not isinstance(tensors, list | tuple) or not all(
            isinstance(t, torch.Tensor) for t in tensors):
        raise ExportError(name, f"forward() must return a tensor or a tuple of tensors, "
                                f"got {type(out).__name__}")
    return [t.detach().cpu().numpy() for t in tensors]


def _max_abs(got: np.ndarray, want: np.ndarray) -> float:
    """Return max |got - want| in float64 (0 for empty arrays)."""
    if got.size == 0:
        return 0.0
    return float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))


def _shapes(inputs: Inputs) -> dict[str, Shape]:
    """Return each named input's shape as a tuple of ints."""
    return {name: tuple(tensor.shape) for name, tensor in inputs.items()}


def _first_shape(inputs: Inputs) -> list[int]:
    """Return the shape of the first (primary) input, as recorded in the sidecar."""
    return list(next(iter(inputs.values())).shape)
