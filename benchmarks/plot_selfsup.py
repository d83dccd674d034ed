"""Plot what ``selfsup_study.py`` recorded: true PSNR of Algorithm 1's estimate and of the
bias-corrected running means, and the self-supervised memorisation signal, against iterations, with
the point where the "auto" rule (napari_mpi.fill: AUTO_*) stops.

    python benchmarks/plot_selfsup.py runs/selfsup2.json --images fmd-confocal/fov1 kodak-poisson30/kodim02 \
        --out docs/selfsup_stopping.png
    python benchmarks/plot_selfsup.py runs/selfsup2.json runs/selfsup256.json --replay   # the rule's PSNR per image
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from napari_mpi.fill import AUTO_MEMORISATION_RISE, AUTO_MIN_ITERATIONS, AUTO_SETTLE  # noqa: E402


def stop_point(rows: list[dict]) -> tuple[list[float], int | None]:
    """The smoothed memorisation per check, and the iteration where the auto rule stops (None = never)."""
    smoothed, value, lowest, stop = [], None, float("inf"), None
    for row in rows:
        raw = (row["loss_hold"] - row["loss_train"]) / row["loss_hold"]
        value = raw if value is None else 0.5 * value + 0.5 * raw
        smoothed.append(value)
        if row["iteration"] >= AUTO_SETTLE:
            lowest = min(lowest, value)
        if stop is None and row["iteration"] >= AUTO_MIN_ITERATIONS and value - lowest >= AUTO_MEMORISATION_RISE:
            stop = row["iteration"]
    return smoothed, stop


BETAS = ("0.8", "0.9", "0.95", "0.98", "0.99")


def replay(paths: list[Path]) -> None:
    """Print, per recorded image, Algorithm 1's PSNR at 200 iterations and the auto rule's: stopped where the
    rule stops (or at 300), with the running mean of lowest held-out error at that check."""
    gains = []
    for path in paths:
        for result in json.loads(path.read_text())["results"]:
            rows = result["rows"]
            _, stop = stop_point(rows)
            row = next(r for r in rows if r["iteration"] == (stop or min(300, rows[-1]["iteration"])))
            beta = min(BETAS, key=lambda b: row[f"vmse_{b}"])
            fast = next(r["psnr_paper"] for r in rows if r["iteration"] == 200)
            gains.append(row[f"psnr_{beta}"] - fast)
            print(f"{result['dataset']:16s} {result['name']:10s} fast {fast:6.2f}  auto {row[f'psnr_{beta}']:6.2f} "
                  f"(iteration {row['iteration']}, beta {beta})  {gains[-1]:+.2f} dB")
    print(f"mean {sum(gains) / len(gains):+.2f} dB, worst {min(gains):+.2f} dB over {len(gains)} images")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", type=Path, nargs="+")
    parser.add_argument("--images", nargs="+", help="dataset/name pairs to plot")
    parser.add_argument("--out", type=Path, help="PNG to write")
    parser.add_argument("--replay", action="store_true", help="print the rule's PSNR per image instead")
    args = parser.parse_args()
    if args.replay:
        replay(args.studies)
        return 0
    if not (args.images and args.out):
        parser.error("--images and --out are needed for a plot (or use --replay)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = {f"{r['dataset']}/{r['name']}": r for path in args.studies for r in json.loads(path.read_text())["results"]}
    fig, axes = plt.subplots(2, len(args.images), figsize=(5.5 * len(args.images), 6.5), sharex=True, squeeze=False)
    for column, key in enumerate(args.images):
        rows = results[key]["rows"]
        its = [r["iteration"] for r in rows]
        smoothed, stop = stop_point(rows)
        top, bottom = axes[0][column], axes[1][column]
        top.plot(its, [r["psnr_paper"] for r in rows], "k-", label="Algorithm 1 (beta 0.9, starts at x)")
        for beta, style in (("0.9", "C0--"), ("0.99", "C1-")):
            top.plot(its, [r[f"psnr_{beta}"] for r in rows], style, label=f"bias-corrected mean, beta {beta}")
        top.set_title(key)
        top.set_ylabel("PSNR to the clean image (dB)")
        bottom.plot(its, smoothed, "C2-", label="memorisation: (held-out - trained) / held-out error")
        bottom.set_ylabel("self-supervised signal")
        bottom.set_xlabel("iteration")
        for ax in (top, bottom):
            ax.axvline(200, color="gray", lw=0.8, ls=":")
            if stop is not None:
                ax.axvline(stop, color="C3", lw=1.2)
        if stop is not None:
            bottom.annotate(f"auto stops ({stop})", (stop, min(smoothed)), color="C3", xytext=(4, 0),
                            textcoords="offset points")
        top.legend(fontsize=7, loc="lower right")
        bottom.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
