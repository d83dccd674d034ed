"""Draw the benchmark figures from the JSON files the other scripts write with ``--out``.

One figure per kind of result, each from one or more JSON files (several files are merged: e.g. one
``stacks.py`` run per stack, or a CPU and a GPU ``speed.py`` run); a figure whose files are not given is
skipped. Every figure names where its numbers come from (date, machine, torch and napari-mpi versions of
each file) in a footer. Run from the repository root::

    python benchmarks/plots.py --quality q.json --speed s.json --stacks st-*.json --pretrain pg.json --out docs/figures

Figures (in ``--out``):

quality.png        ``quality.py``: mean PSNR per method, one panel per dataset (MPI rows highlighted)
speed.png          ``speed.py``: median milliseconds per fill iteration (min - max as error bars) per size,
                   precision, device and CUDA graph; planes per second of the stack rows beside it
stacks.png         ``stacks.py``: speed-up over each plane alone against the mean PSNR gap to it (the bar
                   reaches down to the worst plane's gap), per stack and strategy
pretrain_gain.png  ``pretrain_gain.py``: PSNR gain over the random start against pre-training steps, per dataset
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

MPI_COLOUR, BASELINE_COLOUR, NOISY_COLOUR = "tab:red", "tab:blue", "tab:gray"


def read(paths: list[Path] | None) -> list[dict]:
    """The records of the JSON files, each with its file name under "source"."""
    return [json.loads(Path(p).read_text()) | {"source": Path(p).name} for p in paths or []]


def source_line(records: list[dict]) -> str:
    """Where the numbers come from: date, machine and versions of each distinct run."""
    lines = []
    for record in records:
        machine, versions = record.get("machine", {}), record.get("versions", {})
        where = machine.get("gpu") or f"{machine.get('cpu', '?')} ({machine.get('cpu_count', '?')} CPUs)"
        line = (f"{str(record.get('date', '?'))[:10]}, {where}, torch {versions.get('torch', '?')}, "
                f"napari-mpi {versions.get('napari_mpi', '?')}")
        if line not in lines:
            lines.append(line)
    return "; ".join(lines)


def finish(fig, records: list[dict], path: Path, dpi: int) -> Path:
    fig.text(0.01, 0.005, source_line(records), fontsize=7, color="0.35", ha="left", va="bottom", wrap=True)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- quality


def quality_means(records: list[dict]) -> dict[str, dict[str, float]]:
    """{dataset: {method: mean PSNR}} over the scored rows of all files (methods in order of appearance)."""
    values: dict[str, dict[str, list[float]]] = {}
    for record in records:
        for row in record.get("rows", []):
            if row.get("psnr") is not None and np.isfinite(row["psnr"]):
                values.setdefault(row["dataset"], {}).setdefault(row["method"], []).append(row["psnr"])
    return {d: {m: float(np.mean(v)) for m, v in methods.items()} for d, methods in values.items()}


def plot_quality(records: list[dict], path: Path, dpi: int) -> Path:
    import matplotlib.pyplot as plt

    means = quality_means(records)
    if not means:
        raise SystemExit("--quality: no scored rows in the files given")
    columns = min(3, len(means))
    rows = -(-len(means) // columns)
    height = max(2.5, 0.28 * max(len(m) for m in means.values()) + 1.0)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, height * rows), squeeze=False)
    for ax, (dataset, methods) in zip(axes.flat, means.items(), strict=False):
        names = list(methods)[::-1]
        psnrs = [methods[m] for m in names]
        colours = [MPI_COLOUR if m.startswith("mpi-") else NOISY_COLOUR if m == "noisy" else BASELINE_COLOUR
                   for m in names]
        ax.barh(names, psnrs, color=colours)
        for y, value in enumerate(psnrs):
            ax.text(value, y, f" {value:.2f}", va="center", fontsize=7)
        low, high = min(psnrs), max(psnrs)
        ax.set_xlim(low - 1.0, high + 0.25 * (high - low) + 1.0)
        ax.set_title(dataset, fontsize=10)
        ax.set_xlabel("mean PSNR (dB)")
        ax.tick_params(axis="y", labelsize=8)
    for ax in list(axes.flat)[len(means):]:
        ax.axis("off")
    crops = {r.get("config", {}).get("crop") for r in records}
    fig.suptitle(f"Quality against the clean images (crop {', '.join(str(c or 'full') for c in crops)})")
    return finish(fig, records, path, dpi)


# ---------------------------------------------------------------------------------------------- speed


def _graph(flag) -> str:
    return "" if flag is None else ", graph" if flag else ", eager"


def plot_speed(records: list[dict], path: Path, dpi: int) -> Path:
    import matplotlib.pyplot as plt

    results = [r for record in records for r in record.get("results", [])]
    fills = [r for r in results if "size" in r]
    stacks = [r for r in results if "stack" in r]
    if not fills and not stacks:
        raise SystemExit("--speed: no results in the files given")
    panels = [p for p in (fills, stacks) if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 0.32 * max(map(len, panels)) + 1.8),
                             squeeze=False)
    axes = list(axes.flat)
    if fills:
        ax = axes.pop(0)
        labels = [f"{r['size']} {r['precision']} {r['device']}{_graph(r.get('cuda_graph'))}" for r in fills]
        medians = np.array([1000 * r["median_s"] for r in fills])
        spread = np.array([[1000 * (r["median_s"] - r["min_s"]) for r in fills],
                           [1000 * (r["max_s"] - r["median_s"]) for r in fills]])
        ax.barh(labels[::-1], medians[::-1], xerr=spread[:, ::-1], color=BASELINE_COLOUR, capsize=2)
        for y, (value, top) in enumerate(zip(medians[::-1], (medians + spread[1])[::-1], strict=True)):
            ax.text(top, y, f" {value:.1f}", va="center", fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("ms per fill iteration (median; min - max)")
        ax.set_title("One fill iteration", fontsize=10)
    if stacks:
        ax = axes.pop(0)
        labels = [f"{r['stack']} {r['precision']} {r['device']}{_graph(r.get('cuda_graph'))}, "
                  f"{'reuse' if r.get('reuse_network') else 'alone'}, crop {r.get('crop_option', r.get('crop'))}"
                  for r in stacks]
        rates = [r["planes_per_s"] for r in stacks]
        colours = [MPI_COLOUR if r.get("reuse_network") else BASELINE_COLOUR for r in stacks]
        ax.barh(labels[::-1], rates[::-1], color=colours[::-1])
        for y, value in enumerate(rates[::-1]):
            ax.text(value, y, f" {value:.3g}", va="center", fontsize=7)
        ax.set_xlabel("planes per second (napari_mpi.denoise)")
        ax.set_title("Stacks", fontsize=10)
    for ax in fig.axes:
        ax.tick_params(axis="y", labelsize=8)
    return finish(fig, records, path, dpi)


# ---------------------------------------------------------------------------------------------- stacks


def plot_stacks(records: list[dict], path: Path, dpi: int) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn = 0
    for number, record in enumerate(records):
        stack = record.get("stack", {})
        label = f"{stack.get('name', '?')} ({'x'.join(map(str, stack.get('shape', [])))})"
        rows = [r for r in record.get("results", []) if "gap_mean" in r]
        if not rows:
            continue
        colour = colours[number % len(colours)]
        x = [r["speedup"] for r in rows]
        y = [r["gap_mean"] for r in rows]
        below = [r["gap_mean"] - r["gap_worst"] for r in rows]
        ax.errorbar(x, y, yerr=[below, [0.0] * len(rows)], fmt="o", color=colour, capsize=3, label=label)
        for r in rows:
            ax.annotate(r["strategy"], (r["speedup"], r["gap_mean"]), textcoords="offset points", xytext=(5, 4),
                        fontsize=7, color=colour)
        drawn += len(rows)
    if not drawn:
        raise SystemExit("--stacks: no reuse rows in the files given")
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.axvline(1.0, color="0.5", lw=0.8)
    ax.set_xlabel("speed-up over each plane alone")
    ax.set_ylabel("PSNR vs each plane alone (dB): mean, bar to worst plane")
    ax.set_title("Stacks: planes reusing one network")
    ax.legend(fontsize=8)
    return finish(fig, records, path, dpi)


# ---------------------------------------------------------------------------------------------- pre-training


def pretrain_series(record: dict) -> dict[str, tuple[list[int], list[float]]]:
    """{dataset: (pre-training steps, PSNR gain over the random start of the same file)} of one record."""
    series = {}
    rows = record.get("rows", [])
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        mine = sorted((r for r in rows if r["dataset"] == dataset), key=lambda r: r["steps"])
        base = next((r["psnr"] for r in mine if r["weights"] == "random"), None)
        trained = [r for r in mine if r["weights"] != "random"]
        if base is not None and trained:
            series[dataset] = ([r["steps"] for r in trained], [r["psnr"] - base for r in trained])
    return series


def plot_pretrain(records: list[dict], path: Path, dpi: int) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for record in records:
        for dataset, (steps, gains) in pretrain_series(record).items():
            label = dataset if len(records) == 1 else f"{dataset} ({record['source']})"
            ax.plot(steps, gains, "o-", label=label)
    if not ax.lines:
        raise SystemExit("--pretrain: no dataset with both a random and a pre-trained row in the files given")
    ax.axhline(0, color="0.5", lw=0.8)
    rows = [r for record in records for r in record.get("rows", []) if r["weights"] != "random"]
    recipes = {(r.get("batch"), r.get("crop")) for r in rows}
    batch, crop = recipes.pop() if len(recipes) == 1 else (None, None)
    recipe = f" (batch {batch} of {crop}x{crop} crops)" if batch and crop else ""
    ax.set_xlabel(f"pre-training steps{recipe}")
    ax.set_ylabel("PSNR gain over random init (dB)")
    iterations = sorted({record.get("config", {}).get("iterations") for record in records} - {None})
    ax.set_title(f"Fill of {'/'.join(map(str, iterations))} iterations from each checkpoint")
    ax.legend(fontsize=8)
    return finish(fig, records, path, dpi)


# ---------------------------------------------------------------------------------------------- main


PLOTS = {"quality": ("quality.png", plot_quality), "speed": ("speed.png", plot_speed),
         "stacks": ("stacks.png", plot_stacks), "pretrain": ("pretrain_gain.png", plot_pretrain)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quality", nargs="+", type=Path, help="JSON files of quality.py --out")
    parser.add_argument("--speed", nargs="+", type=Path, help="JSON files of speed.py --out")
    parser.add_argument("--stacks", nargs="+", type=Path, help="JSON files of stacks.py --out (one per stack)")
    parser.add_argument("--pretrain", nargs="+", type=Path, help="JSON files of pretrain_gain.py --out")
    parser.add_argument("--out", type=Path, default=Path("docs/figures"), help="folder (default docs/figures)")
    parser.add_argument("--dpi", type=int, default=120)
    args = parser.parse_args(argv)
    chosen = {key: getattr(args, key) for key in PLOTS if getattr(args, key)}
    if not chosen:
        parser.error("give at least one of --quality, --speed, --stacks, --pretrain")
    import matplotlib

    matplotlib.use("Agg")
    for key, paths in chosen.items():
        name, draw = PLOTS[key]
        print(draw(read(paths), args.out / name, args.dpi))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
