"""The activation study's report: tables and a loss plot from the runs' history.jsonl files.

    python -m exporters.colorize_study runs/colorize/FR-mse runs/colorize/SRS-mse \\
        runs/colorize/S130-mse ... --doc docs/colorize-study.md

Every run was trained by `python -m exporters.colorize train` with the same seed (same initial
weights per architecture, same data order and crops), so epochs and seconds compare. Loss levels
compare only between runs of the same loss; the fully connected SIREN has its own (RGB MSE).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import click
import torch


@dataclass(frozen=True)
class Run:
    """One training run: its name, configuration and per-epoch history."""

    name: str
    config: dict[str, object]
    parameters: int
    history: list[dict[str, float]]

    @property
    def label(self) -> str:
        return f"{self.config['variant']} / {self.config['loss']}"

    @property
    def family(self) -> str:
        """Runs whose losses compare: the CNN's mse, the CNN's class, FC's RGB MSE; each on
        all the training images or on a subset."""
        family = "FC" if self.config["variant"] == "FC" else str(self.config["loss"])
        limit = self.config.get("train_limit")
        return f"{family}, {limit} images" if limit else family

    def first_epoch_at(self, level: float, key: str = "loss") -> dict[str, float] | None:
        """Return the first history row whose `key` is at or below level (None if never)."""
        return next((r for r in self.history if r[key] <= level), None)

    def last_eval(self) -> dict[str, float]:
        """Return the last evaluated row's PSNR and colourfulness (NaN before the first)."""
        rows = [r for r in self.history if "psnr" in r]
        return rows[-1] if rows else {"psnr": float("nan"), "colourfulness": float("nan")}


def load_run(folder: Path) -> Run:
    """Return the run recorded in folder (history.jsonl and last.pt)."""
    ck = torch.load(folder / "last.pt", map_location="cpu", weights_only=False)
    parameters = sum(v.numel() for k, v in ck["model"].items())
    return Run(folder.name, ck["config"], parameters, ck["history"])


def convergence_table(runs: Sequence[Run], reference: Run, epochs: Sequence[int]) -> list[str]:
    """Return markdown rows: epochs (seconds) each run took to reach the reference run's
    training loss after each of `epochs`, and the speed-up over the reference."""
    levels = [reference.history[e - 1]["loss"] for e in epochs if e <= len(reference.history)]
    head = "| run | " + " | ".join(f"loss {lv:.5f} (ref. epoch {e})"
                                    for lv, e in zip(levels, epochs, strict=False)) + " |"
    rows = [head, "|" + " --- |" * (len(levels) + 1)]
    for run in runs:
        cells = []
        for level in levels:
            ref, got = reference.first_epoch_at(level), run.first_epoch_at(level)
            if got is None:
                cells.append(f"not reached in {len(run.history)}")
            else:
                speed = ref["epoch"] / got["epoch"] if ref else float("nan")
                cells.append(f"{got['epoch']:.0f} ep ({got['seconds']:.0f} s), x{speed:.1f}")
        rows.append(f"| {run.name} | " + " | ".join(cells) + " |")
    return rows


def summary_table(runs: Sequence[Run]) -> list[str]:
    """Return markdown rows: size, speed, final and best losses, PSNR and colourfulness."""
    rows = ["| run | variant / loss | images | parameters | epochs | s/epoch | final train loss "
            "| best val loss (epoch) | final val loss | val - train | color-val PSNR dB | "
            "colourfulness |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    for run in runs:
        last, best = run.history[-1], min(run.history, key=lambda r: r["val_loss"])
        ev = run.last_eval()
        images = run.config.get("train_limit") or "all"
        rows.append(f"| {run.name} | {run.label} | {images} | {run.parameters:,} | "
                    f"{last['epoch']:.0f} | {last['seconds'] / last['epoch']:.1f} | "
                    f"{last['loss']:.5f} | {best['val_loss']:.5f} ({best['epoch']:.0f}) | "
                    f"{last['val_loss']:.5f} | {last['val_loss'] - last['loss']:+.5f} | "
                    f"{ev['psnr']:.2f} | {ev['colourfulness']:.1f} |")
    return rows


def quality_by_epoch(runs: Sequence[Run]) -> list[str]:
    """Return markdown rows: color-val PSNR / colourfulness at each evaluated epoch."""
    epochs = sorted({int(r["epoch"]) for run in runs for r in run.history if "psnr" in r})
    rows = ["| run | " + " | ".join(f"epoch {e}" for e in epochs) + " |",
            "|" + " --- |" * (len(epochs) + 1)]
    for run in runs:
        by = {int(r["epoch"]): r for r in run.history if "psnr" in r}
        rows.append(f"| {run.name} | " + " | ".join(
            f"{by[e]['psnr']:.2f} / {by[e]['colourfulness']:.1f}" if e in by else ""
            for e in epochs) + " |")
    return rows


def plot(runs: Sequence[Run], path: Path) -> None:
    """Write a PNG of training (solid) and validation (dashed) loss per epoch, one panel per
    loss family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(dict.fromkeys(r.family for r in runs))
    titles = {"mse": "CNN, MSE on ab/110", "class": "CNN, rebalanced cross-entropy on ab bins",
              "FC": "fully connected SIREN, MSE on RGB"}
    cols = min(3, len(families))
    rows = -(-len(families) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(families):]:
        ax.remove()
    for ax, family in zip(axes.flat, families, strict=False):
        for i, run in enumerate(r for r in runs if r.family == family):
            epochs = [r["epoch"] for r in run.history]
            colour = f"C{i}"
            ax.plot(epochs, [r["loss"] for r in run.history], color=colour, label=f"{run.name} "
                    "train")
            ax.plot(epochs, [r["val_loss"] for r in run.history], color=colour, ls="--",
                    label=f"{run.name} val")
        # Epoch 1 of a sine-output run starts far above the rest: scale to the others.
        later = [r[k] for run in runs if run.family == family for r in run.history[1:]
                 for k in ("loss", "val_loss")]
        if later:
            ax.set_ylim(min(later) * 0.97, max(later) * 1.03)
        base, _, subset = family.partition(", ")
        title = titles.get(base, base) + (f" ({subset})" if subset else "")
        ax.set(title=title, xlabel="epoch", ylabel="loss (log scale)", yscale="log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def convergence_sections(runs: Sequence[Run]) -> list[str]:
    """Return a convergence table per loss family, each against its FR run."""
    lines: list[str] = []
    for family in dict.fromkeys(r.family for r in runs):
        peers = [r for r in runs if r.family == family]
        ref = next((r for r in peers if r.config["variant"] == "FR"), None)
        if ref is None or len(peers) < 2:
            continue
        n = len(ref.history)
        epochs = sorted(e for e in {2, 5, 10, n // 4, n // 2, n} if 0 < e <= n)
        lines += [f"### {family}: epochs (seconds) to reach {ref.name}'s training loss", "",
                  *convergence_table(peers, ref, epochs), ""]
    return lines


START, END = "<!-- study-tables:start -->", "<!-- study-tables:end -->"


def write_tables(doc: Path, lines: Sequence[str]) -> None:
    """Replace the tables between the markers in doc (append them when there are none)."""
    block = f"{START}\n" + "\n".join(lines) + f"\n{END}"
    text = doc.read_text() if doc.exists() else ""
    if START in text and END in text:
        text = text[:text.index(START)] + block + text[text.index(END) + len(END):]
    else:
        text = f"{text.rstrip()}\n\n{block}\n"
    doc.write_text(text)


@click.command()
@click.argument("folders", nargs=-1, type=click.Path(exists=True, path_type=Path),
                required=True)
@click.option("--doc", type=click.Path(path_type=Path), default=Path("docs/colorize-study.md"),
              help="Markdown file whose generated tables are replaced.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path),
              default=Path("docs/colorize-study.png"))
def main(folders: tuple[Path, ...], doc: Path, plot_path: Path) -> None:
    """Write the study's tables (into --doc) and loss plot (PNG) from training runs."""
    runs = [load_run(f) for f in folders]
    lines = ["### Runs", "", *summary_table(runs), "", *convergence_sections(runs),
             "### color-val PSNR dB / colourfulness by epoch", "", *quality_by_epoch(runs)]
    write_tables(doc, lines)
    plot(runs, plot_path)
    click.echo("\n".join(lines))
    click.echo(json.dumps({"plot": str(plot_path), "doc": str(doc)}))


if __name__ == "__main__":
    main()
