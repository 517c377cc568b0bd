"""Gradient-domain (Poisson) merging of two images: the PyTorch solver, its SciPy reference,
and the export of the solver to `plugins/models/merge-poisson.onnx`.

    python -m exporters.merge                 # writes plugins/models/merge-poisson.{onnx,json,md}
    python -m exporters.merge --out-dir DIR

The problem, per colour channel: find u minimising ||grad u - g||^2 over the image with
Neumann boundaries, where g combines the gradient fields of A and B (forward differences,
zero across the far edges). Its normal equations L u = D^T g (L = D^T D, the Neumann
Laplacian) are diagonal in the orthonormal DCT-II basis, so the solve is exact: transform,
divide by the Laplacian eigenvalues, transform back. The eigenvalue 0 belongs to the mean,
which the gradients leave free; it is set from the inputs (see `PoissonMerge`).

The graph does the DCTs as matrix products with bases fed as inputs (`dct_h`, `dct_w`, built
by `imgproc_plugins.merge.dct_basis`), so no size is baked into it. Matrix products cost
H * W * (H + W) per channel rather than an FFT's H * W * log(H * W): ONNX Runtime's DFT is
only fast for powers of two, and a one-stage even/odd fold of the products (half the work)
makes torch.export specialise the graph to even sizes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from exporters.onnx_export import ExportError, ExportResult, ModelCard, export_model
from imgproc_plugins.merge import MODEL, resize, solver_feeds

OUT_DIR = Path(__file__).resolve().parent.parent / "plugins" / "models"
EXAMPLE_SIZE = (64, 80)
# Odd and degenerate sizes, a non-square one, and one larger than the example on both axes.
PARITY_SIZES = ((1, 1), (3, 7), (257, 130), (300, 500))
INPUT_NAMES = ("a", "b", "weight", "mixed", "dct_h", "dct_w", "eig_h", "eig_w")
DYNAMIC_AXES = {
    "a": {2: "height", 3: "width"}, "b": {2: "height", 3: "width"},
    "dct_h": {0: "height", 1: "height"}, "dct_w": {0: "width", 1: "width"},
    "eig_h": {0: "height"}, "eig_w": {0: "width"},
    "output": {2: "out_height", 3: "out_width"},
}
Field = tuple[np.ndarray, np.ndarray]  # (gx, gy), each H x W x C


# --- the PyTorch solver (exported) -----------------------------------------------------------


class PoissonMerge(nn.Module):
    """The image whose gradients best fit (least squares) the combined gradients of A and B.

    Inputs: `a`, `b` 1 x 3 x H x W float32; `weight` [1] (A's share in mean mode); `mixed` [1]
    (1: mixed mode, 0: mean mode); `dct_h` H x H and `dct_w` W x W orthonormal DCT-II bases
    (row k: frequency k); `eig_h` [H], `eig_w` [W] the 1-D Neumann Laplacian eigenvalues of
    those frequencies, exactly 0 first. All four come from
    `imgproc_plugins.merge.dct_basis` and `laplacian_eigenvalues`.

    Gradient field g: mean mode, weight * grad A + (1 - weight) * grad B; mixed mode, per pixel
    the gradient of A or of B, whichever has the larger magnitude taken over x and y and all
    three channels together (ties: A), so colour channels never mix edges of different images.

    Mean colour (the constant the gradients leave free), per channel: mean mode, the weighted
    mean weight * mean(A) + (1 - weight) * mean(B), which makes the result exactly the pixel
    blend weight * A + (1 - weight) * B (its gradients are g); mixed mode, (mean(A) + mean(B))
    / 2, the weight being ignored. The output is not clipped (the plugin clips).
    """

    def forward(self, a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor,
                mixed: torch.Tensor, dct_h: torch.Tensor, dct_w: torch.Tensor,
                eig_h: torch.Tensor, eig_w: torch.Tensor) -> torch.Tensor:
        """Return the 1 x 3 x H x W least-squares reconstruction, mean colour set."""
        is_mixed = mixed > 0.5
        gx, gy = gradients(torch.cat([a, b]))  # A and B in one pass: 2 x 3 x H x W each
        share_a = torch.where(is_mixed, stronger_in_a(gx, gy), weight)  # 1 x 1 x H x W
        # g = g_B + share_a (g_A - g_B): the weighted mean, or exactly one of the two (0 or 1).
        gx = gx[1:] + share_a * (gx[:1] - gx[1:])
        gy = gy[1:] + share_a * (gy[:1] - gy[1:])
        share = torch.where(is_mixed, torch.full_like(weight, 0.5), weight)
        mean = share * a.mean(dim=(2, 3), keepdim=True) \
            + (1.0 - share) * b.mean(dim=(2, 3), keepdim=True)
        return poisson_solve(divergence(gx, gy), dct_h, dct_w, eig_h, eig_w) + mean


def gradients(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the forward differences (gx, gy) of an N x C x H x W image, 0 at the far edges."""
    # Replicate-padding makes the last difference 0 without ever slicing to an empty tensor
    # (a 1-pixel axis would otherwise give one).
    padded = F.pad(image, (0, 1, 0, 1), mode="replicate")
    gx = padded[:, :, :-1, 1:] - padded[:, :, :-1, :-1]
    gy = padded[:, :, 1:, :-1] - padded[:, :, :-1, :-1]
    return gx, gy


def stronger_in_a(gx: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    """Return 1.0 where A's colour gradient (x, y, all channels) is at least B's, else 0.0."""
    strength = (gx * gx + gy * gy).sum(dim=1, keepdim=True)  # 2 x 1 x H x W
    return (strength[:1] >= strength[1:]).to(gx.dtype)


def divergence(gx: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    """Return the backward-difference divergence of (gx, gy), i.e. -D^T g (zero flux outside)."""
    # Shifting in a zero column/row is the adjoint of the forward difference above.
    return gx - F.pad(gx, (1, 0))[:, :, :, :-1] + gy - F.pad(gy, (0, 0, 1, 0))[:, :, :-1, :]


def poisson_solve(div: torch.Tensor, dct_h: torch.Tensor, dct_w: torch.Tensor,
                  eig_h: torch.Tensor, eig_w: torch.Tensor) -> torch.Tensor:
    """Return the zero-mean u with laplacian(u) = div under Neumann boundaries (N x C x H x W)."""
    spectrum = dct_h @ div @ dct_w.transpose(0, 1)
    eig = eig_h.unsqueeze(1) + eig_w.unsqueeze(0)
    free = eig <= 0.0  # only the constant mode: a divergence has no component there
    inverse = torch.where(free, torch.zeros_like(eig), -1.0 / torch.where(free, 1.0, eig))
    return dct_h.transpose(0, 1) @ (spectrum * inverse) @ dct_w


# --- the NumPy/SciPy reference and the measures the card and tests use ----------------------


def np_gradients(image: np.ndarray) -> Field:
    """Return the forward differences (gx, gy) of an H x W x C image, 0 at the far edges."""
    gx = np.zeros_like(image)
    gy = np.zeros_like(image)
    gx[:, :-1] = image[:, 1:] - image[:, :-1]
    gy[:-1] = image[1:] - image[:-1]
    return gx, gy


def np_divergence(field: Field) -> np.ndarray:
    """Return the backward-difference divergence of an H x W x C field (zero flux outside)."""
    gx, gy = field
    div = gx + gy
    div[:, 1:] -= gx[:, :-1]
    div[1:] -= gy[:-1]
    return div


def target_field(a: np.ndarray, b: np.ndarray, *, weight: float, mixed: bool) -> Field:
    """Return the combined gradient field of H x W x 3 images as `PoissonMerge` defines it."""
    (ax, ay), (bx, by) = np_gradients(a), np_gradients(b)
    if not mixed:
        return weight * ax + (1 - weight) * bx, weight * ay + (1 - weight) * by
    take_a = (ax**2 + ay**2).sum(axis=2, keepdims=True) >= (bx**2 + by**2).sum(axis=2,
                                                                                keepdims=True)
    return np.where(take_a, ax, bx), np.where(take_a, ay, by)


def reference_merge(a: np.ndarray, b: np.ndarray, *, weight: float, mixed: bool) -> np.ndarray:
    """Return the float64 H x W x 3 Poisson merge of same-size images, solved with scipy DCTs."""
    from scipy.fft import dctn, idctn  # scipy is only needed for the reference

    a, b = a.astype(np.float64), b.astype(np.float64)
    div = np_divergence(target_field(a, b, weight=weight, mixed=mixed))
    height, width = a.shape[:2]
    eig = (2 - 2 * np.cos(np.pi * np.arange(height) / height))[:, None] \
        + (2 - 2 * np.cos(np.pi * np.arange(width) / width))[None, :]
    spectrum = dctn(div, type=2, norm="ortho", axes=(0, 1))
    eig[0, 0] = 1.0  # the constant mode: spectrum[0, 0] is 0 for a divergence
    solved = -spectrum / eig[:, :, None]
    solved[0, 0] = 0.0
    share = 0.5 if mixed else weight
    mean = share * a.mean(axis=(0, 1)) + (1 - share) * b.mean(axis=(0, 1))
    return idctn(solved, type=2, norm="ortho", axes=(0, 1)) + mean


def gradient_residual(u: np.ndarray, field: Field) -> float:
    """Return ||grad u - g|| / ||g|| (0 when both vanish), in float64."""
    ux, uy = np_gradients(u.astype(np.float64))
    gx, gy = (f.astype(np.float64) for f in field)
    return _relative(np.sqrt(np.sum((ux - gx) ** 2) + np.sum((uy - gy) ** 2)),
                     np.sqrt(np.sum(gx**2) + np.sum(gy**2)))


def normal_residual(u: np.ndarray, field: Field) -> float:
    """Return ||div grad u - div g|| / ||div g||: the least-squares optimality of u, in float64."""
    target = np_divergence(tuple(f.astype(np.float64) for f in field))  # type: ignore[arg-type]
    achieved = np_divergence(np_gradients(u.astype(np.float64)))
    return _relative(float(np.linalg.norm(achieved - target)), float(np.linalg.norm(target)))


def _relative(error: float, scale: float) -> float:
    """Return error / scale, or the bare error when the scale is 0 (a flat field)."""
    return float(error / scale) if scale > 0 else float(error)


# --- export ------------------------------------------------------------------------------------


def torch_feeds(a: np.ndarray, b: np.ndarray, *, weight: float, mixed: bool
                ) -> dict[str, torch.Tensor]:
    """Return the solver's inputs (as the plugin builds them) as tensors, in forward() order."""
    feeds = solver_feeds(a, b, weight=weight, mixed=mixed)
    return {name: torch.from_numpy(np.array(feeds[name])) for name in INPUT_NAMES}


def _random_feeds(size: tuple[int, int], *, seed: int, mixed: bool) -> dict[str, torch.Tensor]:
    """Return solver inputs for two random images of `size`."""
    rng = np.random.default_rng(seed)
    a, b = (rng.random((*size, 3), dtype=np.float32) for _ in range(2))
    return torch_feeds(a, b, weight=0.3, mixed=mixed)


def card_metrics(run: Callable[[dict[str, np.ndarray]], np.ndarray]) -> dict[str, float | str]:
    """Return residuals and SciPy differences of `run` (feeds -> 1x3xHxW) on astronaut+coffee."""
    from skimage import data  # only the card's measurement needs the sample images

    a = data.astronaut().astype(np.float32) / 255
    b = resize(data.coffee().astype(np.float32) / 255, *a.shape[:2])
    metrics: dict[str, float | str] = {"images": "A = skimage astronaut 512x512, B = coffee "
                                                 "resized (bicubic) to 512x512, unclipped output"}
    for mode, mixed in (("mean", False), ("mixed", True)):
        u = run(solver_feeds(a, b, weight=0.5, mixed=mixed))[0].transpose(1, 2, 0)
        field = target_field(a.astype(np.float64), b.astype(np.float64), weight=0.5, mixed=mixed)
        reference = reference_merge(a, b, weight=0.5, mixed=mixed)
        metrics[f"{mode}: normal-equation residual ||div grad u - div g|| / ||div g||"] = \
            normal_residual(u, field)
        metrics[f"{mode}: gradient residual ||grad u - g|| / ||g||" + (
            " (not an error: the mixed field is not a gradient, this is its least-squares "
            "floor)" if mixed else "")] = gradient_residual(u, field)
        metrics[f"{mode}: max abs diff vs SciPy reference (float64)"] = \
            float(np.abs(u - reference).max())
    return metrics


def export(out_dir: Path = OUT_DIR) -> ExportResult:
    """Return the result of exporting `PoissonMerge` to `out_dir/merge-poisson.onnx` (+ card).

    The card's metrics are measured through ONNX Runtime on a first export of the same graph;
    the export is deterministic, which is checked, so they describe the file written.
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as scratch:
        draft = _export(Path(scratch), metrics={})
        session = ort.InferenceSession(str(draft.onnx_path), providers=["CPUExecutionProvider"])
        metrics = card_metrics(lambda feeds: session.run(None, feeds)[0])
    result = _export(Path(out_dir), metrics=metrics)
    if result.sha256 != draft.sha256:
        raise ExportError(MODEL, f"two exports of the same module differ ({draft.sha256} vs "
                                 f"{result.sha256}): the card's metrics may not describe the file")
    return result


def _export(out_dir: Path, *, metrics: dict[str, float | str]) -> ExportResult:
    """Return the result of one export_model call with the given card metrics."""
    card = ModelCard(
        name=MODEL,
        summary="Exact Poisson (gradient-domain) merge of two images, any size.",
        architecture=(
            "No learned layers: an exact least-squares solver. Forward-difference gradients of "
            "A and B are combined (weighted mean, or per pixel the stronger of the two colour "
            "gradients), their divergence is transformed by DCT-II matrix products "
            "(dct_h @ X @ dct_w^T), divided by the Neumann Laplacian eigenvalues eig_h[i] + "
            "eig_w[j], transformed back, and the per-channel mean is set from the inputs. "
            "The bases and eigenvalues are inputs so no size is baked into the graph."),
        training_data="none (an exact solver)",
        training_steps="none",
        metrics=metrics,
        facts={"modes": {"mean": 0, "mixed": 1},
               "constants": "imgproc_plugins.merge.dct_basis / laplacian_eigenvalues"},
    )
    parity = [_random_feeds(size, seed=i, mixed=bool(i % 2))
              for i, size in enumerate(PARITY_SIZES)]
    return export_model(PoissonMerge(), card=card,
                        example_inputs=_random_feeds(EXAMPLE_SIZE, seed=99, mixed=True),
                        output_names=["output"], dynamic_axes=DYNAMIC_AXES,
                        parity_inputs=parity, out_dir=out_dir)


@click.command()
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=OUT_DIR,
              show_default=True, help="Where to write merge-poisson.onnx, .json and .md.")
def main(out_dir: Path) -> None:
    """Export the Poisson merge solver to ONNX with its sidecar and model card."""
    result = export(out_dir)
    click.echo(f"wrote {result.onnx_path} (sha256 {result.sha256}, parity max abs error "
               f"{result.max_abs_error:.3g})")


if __name__ == "__main__":
    main()
