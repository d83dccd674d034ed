"""Make the screenshots of docs/usage.md and measure how responsive napari stays during a run.

    python docs/make_screenshots.py            # re-runs itself under ``xvfb-run`` when there is no display

Opens napari with the package's noisy sample (a crop, so that a CPU finishes in minutes), opens
the MPI denoise widget through the plugin manifest, starts a run and saves

* ``docs/screenshot-running.png``: the whole window (``canvas_only=False``) mid-run,
* ``docs/screenshot-done.png``: the window when the run has finished,
* ``docs/screenshot-widget.png``: the dock widget with its advanced section open,
* ``docs/screenshot-preview.png``: the canvas after *Preview on the view* on a synthetic noisy image
  (``--preview-size`` pixels a side), whose time is measured too.

The widget starts from its defaults: its remembered settings go to a temporary file for this script.

Responsiveness: a 10 ms ``QTimer`` probe runs on the GUI thread for the whole run; each gap
between two of its ticks longer than 10 ms is time the event loop could not serve the user.
The longest gap (minus the 10 ms interval) is the longest event-loop stall. The two screenshot
grabs are excluded (the probe is paused around them). The numbers are printed and written to
``--stats`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="side of the crop of the 256x256 sample (pixels)")
    parser.add_argument("--iterations", type=int, default=100, help="fill iterations (Custom preset, beta 0.9)")
    parser.add_argument("--mid", type=float, default=0.4, help="fraction of the run at which to take the mid-run shot")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the PNG files")
    parser.add_argument("--stats", type=Path, default=None, help="write the responsiveness numbers here (JSON)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--preview-size", type=int, default=512,
                        help="side of the synthetic image previewed (0: no preview)")
    return parser.parse_args()


def ensure_display() -> None:
    """Without an X display, run this script again inside a virtual one (Xvfb)."""
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or sys.platform != "linux":
        return
    xvfb_run = shutil.which("xvfb-run")
    if xvfb_run is None:
        sys.exit("no display: install Xvfb (apt-get install xvfb libxcb-icccm4 libxcb-keysyms1) or set DISPLAY")
    os.execv(xvfb_run, [xvfb_run, "-a", "-s", "-screen 0 1600x1000x24", sys.executable, *sys.argv])


def wait_until(condition, timeout: float) -> None:
    """Run the Qt event loop (a real one, not processEvents polling) until ``condition()`` holds."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    deadline = time.monotonic() + timeout
    check = QTimer()
    check.setInterval(20)
    check.timeout.connect(lambda: (condition() or time.monotonic() > deadline) and loop.quit())
    check.start()
    loop.exec()
    check.stop()
    if not condition():
        raise TimeoutError(f"gave up after {timeout:.0f} s")


def pump(seconds: float) -> None:
    """Keep the event loop running for ``seconds`` (lets the window paint)."""
    end = time.monotonic() + seconds
    wait_until(lambda: time.monotonic() >= end, seconds + 10)


class StallProbe:
    """Ticks every ``interval_ms`` on the GUI thread and records the gaps between ticks."""

    def __init__(self, interval_ms: int = 10) -> None:
        from qtpy.QtCore import QElapsedTimer, QTimer

        self.interval_ms = interval_ms
        self.gaps: list[int] = []
        self.clock = QElapsedTimer()
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(lambda: self.gaps.append(self.clock.restart()))

    def start(self) -> None:
        self.clock.start()
        self.timer.start()

    def pause(self) -> None:
        self.timer.stop()

    def resume(self) -> None:
        self.clock.restart()
        self.timer.start()

    def summary(self) -> dict:
        import numpy as np

        gaps = np.array(self.gaps or [0], dtype=float)
        return {
            "probe_interval_ms": self.interval_ms,
            "ticks": int(len(self.gaps)),
            "longest_stall_ms": float(max(gaps.max() - self.interval_ms, 0.0)),
            "p99_gap_ms": float(np.percentile(gaps, 99)),
            "median_gap_ms": float(np.median(gaps)),
            "gaps_over_100ms": int((gaps > 100).sum()),
        }


def time_preview(viewer, widget, size: int, out: Path) -> dict:
    """Open a noisy ``size`` x ``size`` image, fit it in the view, time *Preview on the view* and save the window."""
    import numpy as np

    from napari_mpi._sample_data import clean_fluorescence, noisy_fluorescence

    noisy = noisy_fluorescence(clean_fluorescence((size, size), seed=3), seed=4)
    low, high = np.percentile(noisy, [0.5, 99.8])
    (viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid).enabled = False  # napari >= 0.9 / older
    for layer in viewer.layers:
        layer.visible = False
    viewer.add_image(noisy, name="preview input", colormap="gray", contrast_limits=(float(low), float(high)))
    viewer.reset_view()
    pump(0.5)
    started = time.monotonic()
    run = widget.preview()
    if run is None:
        sys.exit("the widget refused to preview (see the notification above)")
    wait_until(lambda: run.finished, 3600)
    seconds = time.monotonic() - started
    pump(0.3)
    viewer.screenshot(str(out / "screenshot-preview.png"), canvas_only=True)
    crop = run.settings["preview"]
    return {"image": f"{size}x{size} synthetic fluorescence", "crop": f"{crop['height']}x{crop['width']}",
            "plan": run.plan.describe_length(), "state": run.state, "seconds": round(seconds, 1)}


def open_viewer(args: argparse.Namespace):
    """napari with a crop of the package's noisy sample and the widget opened through the plugin manifest."""
    import napari
    import numpy as np

    from napari_mpi._sample_data import make_sample_2d

    viewer = napari.Viewer(title="napari-mpi", show=True)
    viewer.window.resize(1500, 820)
    sample, _, _ = make_sample_2d()[0]
    top = (sample.shape[0] - args.size) // 2
    crop = np.ascontiguousarray(sample[top:top + args.size, top:top + args.size])
    low, high = np.percentile(crop, [0.5, 99.8])
    viewer.add_image(crop, name="noisy fluorescence", colormap="gray", contrast_limits=(float(low), float(high)))
    _, widget = viewer.window.add_plugin_dock_widget("napari-mpi", "MPI denoise")
    widget.form.iterations.value = args.iterations
    widget.form.device.value = args.device
    grid = viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid  # napari >= 0.9 / older
    grid.enabled = True  # input and output side by side
    pump(1.0)
    return viewer, widget


def shoot_run(viewer, widget, args: argparse.Namespace, probe: StallProbe):
    """Denoise with the probe ticking, with a screenshot mid-run and one at the end; the run and its seconds."""
    probe.start()
    started = time.monotonic()
    run = widget.start()
    if run is None:
        sys.exit("the widget refused to start (see the notification above)")
    wait_until(lambda: run.finished or (run.latest is not None and run.latest.fraction >= args.mid
                                        and run.layer is not None), 3600)
    pump(0.3)  # let the latest redraw reach the canvas
    probe.pause()
    viewer.reset_view()
    viewer.screenshot(str(args.out / "screenshot-running.png"), canvas_only=False)
    probe.resume()
    wait_until(lambda: run.finished, 3600)
    seconds = time.monotonic() - started
    probe.pause()
    viewer.reset_view()
    pump(0.3)
    viewer.screenshot(str(args.out / "screenshot-done.png"), canvas_only=False)
    return run, seconds


def main() -> None:
    args = parse_args()
    ensure_display()
    os.environ["NAPARI_MPI_SETTINGS"] = str(Path(tempfile.mkdtemp(prefix="napari-mpi-")) / "widget.json")

    import napari
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    viewer, widget = open_viewer(args)

    idle = StallProbe()
    idle.start()
    wait_until(lambda: len(idle.gaps) >= 200, 30)  # ~2 s of an idle napari, for comparison
    idle.pause()

    probe = StallProbe()
    run, seconds = shoot_run(viewer, widget, args, probe)
    widget.form.advanced_toggle.value = True
    pump(0.3)
    widget.grab().save(str(args.out / "screenshot-widget.png"))
    widget.form.advanced_toggle.value = False
    preview = time_preview(viewer, widget, args.preview_size, args.out) if args.preview_size else None

    stats = {
        "image": f"{args.size}x{args.size} uint16 (napari-mpi sample, cropped)",
        "iterations": args.iterations,
        "device": run.plan.describe()["device"],
        "precision": run.plan.config.precision,
        "run_seconds": round(seconds, 1),
        "redraws": run.redraws,
        "during_run": probe.summary(),
        "idle": idle.summary(),
        "preview": preview,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} torch threads, load average {os.getloadavg()[0]:.1f}",
        "napari": napari.__version__,
    }
    print(json.dumps(stats, indent=2))
    if args.stats is not None:
        args.stats.write_text(json.dumps(stats, indent=2) + "\n")
    viewer.close()


if __name__ == "__main__":
    main()
