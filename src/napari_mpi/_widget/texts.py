"""Words the widget shows: tooltips that say when to change a value, status lines and notification messages.

Tooltips give advice, not measurements: the figures behind the advice are on the benchmarks page
(:data:`BENCHMARKS`). Nothing here imports the engine; the functions take what they word as arguments.
"""

from __future__ import annotations

import math
from typing import Any

from .engine import DeviceMemoryError, is_out_of_memory, memory_advice, summarise_reports

__all__ = [
    "ADVANCED_TIP", "BENCHMARKS", "NO_LAYER", "TIPS", "cannot_start", "engine_warning", "format_duration",
    "input_removed", "noise_hint", "output_removed", "panel_closed", "progress_text", "run_summary", "starting",
    "user_message", "window_closed", "cannot_preview", "preview_starting", "NO_QUEUED_LAYER", "layer_skipped",
    "queue_progress", "queue_summary",
]

#: Where the measurements behind the advice live (in the napari-mpi repository and on its site).
BENCHMARKS = "docs/benchmarks.md"
_SEE = f"Measurements: {BENCHMARKS}."

TIPS = {
    "layer": (
        "The image layer to denoise. Only image layers are listed; RGB layers are denoised as colour.\n"
        "The input layer is never changed: the result goes to a new layer '<name> denoised'."
    ),
    "scope": (
        "Which layers Denoise processes, one after another, each with the settings below:\n"
        "the chosen image; the image layers selected in napari's layer list; or every image layer.\n"
        "Layers made by napari-mpi (denoised and preview layers) are left out. Each result goes to its own\n"
        "layer '<name> denoised', whatever you select meanwhile. A fixed preset gives each layer the\n"
        "iterations of what it starts from (gray or colour); the channel axis applies to the layers with as\n"
        "many dimensions as the chosen image (and gray or colour like it). Cancel stops the current layer\n"
        "within one iteration, keeps what was computed, and starts no more layers."
    ),
    "preset": (
        "Fast: start here. Gray images start from the shipped pre-trained network and need few iterations;\n"
        "colour images start from the same network and run longer, since they still learn colour.\n"
        "Quality: more iterations and a longer running average. It is not better on every kind of data:\n"
        "compare it with Fast on a crop of your own images before denoising a whole stack.\n"
        "Auto (experimental): decides for each plane when to stop (at most 'Iterations') and which beta to\n"
        "use, by holding some pixels back from training and stopping when the network starts to learn the\n"
        "noise itself. Try it when you are unsure how long to run.\n"
        "Custom: your own beta and iterations (chosen automatically when you edit them).\n" + _SEE
    ),
    "mask_ratio": (
        "Fraction of pixels hidden from the network in each step (0.05-0.95).\n"
        "Keep the default for ordinary camera noise (shot and read noise, independent from pixel to pixel).\n"
        "Raise it to 0.8-0.95 when the noise is streaky or blotchy (grain larger than one pixel, e.g. after\n"
        "binning, deconvolution or lossy compression): with few hidden pixels the network could copy such\n"
        "noise from the neighbours.\n" + _SEE
    ),
    "beta": (
        "Weight of the running average of the network's predictions (0-0.999). Higher averages more\n"
        "predictions: smoother, but it needs more iterations to settle. The presets pair it with their\n"
        "iterations: change both together, or lower beta for a quick preview with few iterations."
    ),
    "iterations": (
        "Fill steps per plane; the time grows in proportion. The presets choose it from what the plane starts\n"
        "from: fewer from the shipped pre-trained network (which would start to reproduce the noise with as\n"
        "many steps as a random start needs), more for colour images. After them the trained network makes a\n"
        "few predictions without training, which the progress counts too.\n"
        "Raise it when the result still looks grainy; lower it for a quick preview."
    ),
    "lr": (
        "Learning rate of the fine-tuning on your image. It follows the chosen layer (colour images learn\n"
        "colour faster with a higher one) unless you change it.\n"
        "Rarely needs changing: lower it (e.g. 0.001) if the result shows artefacts or blotches."
    ),
    "seed": (
        "Seeds the random masks: the same image, parameters and seed give the same result.\n"
        "Change it to check that a faint detail is real: real structure appears with every seed."
    ),
    "device": (
        "Where to compute. auto: a CUDA GPU, then Apple MPS, then the CPU.\n"
        "Choose cpu when the GPU runs out of memory or is busy with other work."
    ),
    "channel_axis": (
        "Leave at 'none' for a single-channel image, stack or time-lapse.\n"
        "Pick the axis that holds separate fluorescence channels (e.g. C in a ZCYX layer) so that each\n"
        "channel is denoised on its own as a gray image. RGB layers are handled as colour automatically."
    ),
    "reuse": (
        "Z-stacks and time-lapses: a plane can continue from the previous plane's network with a fraction of\n"
        "the steps, several times faster where neighbouring planes look alike, and often better too.\n"
        "'Where planes look alike' (default) checks every plane first, without the clean image: a plane unlike\n"
        "the previous one (another field of view, stain or channel) starts afresh with its full length. The\n"
        "status line and the layer's metadata say what each plane did.\n"
        "'Every plane' skips that check; 'alone' gives each plane its full fill. Not with Auto.\n" + _SEE
    ),
    "refine": (
        "After each plane's fill, a block-matching Wiener filter with the fill's result as its guide and a\n"
        "noise model fitted to what the fill removed (no settings). Keep it on: it usually improves the result\n"
        "for little extra time. It assumes noise independent from pixel to pixel, so it is skipped at mask\n"
        "ratios above 0.65 (correlated noise). Turn it off to see the fill's own result.\n" + _SEE
    ),
    "crop": (
        "On the CPU, train each fill step on a random 256x256 window of a big gray plane (512x512 and up)\n"
        "instead of the whole plane: faster, and the memory is one window's, so big planes need no tiles.\n"
        "The plane's result gathers the windows' predictions and the Wiener refinement evens them out.\n"
        "Iterations still count whole-plane steps: the progress shows the window steps that stand for them.\n"
        "Colour planes stay whole. Not with Auto. When reusing the network, later planes continue in windows\n"
        "too. Turn it off to train on whole planes.\n" + _SEE
    ),
    "noise_hint": (
        "napari-mpi checks whether the noise of the chosen image is shared by neighbouring pixels (colour\n"
        "cameras, resampled or filtered images). At the default mask ratio the fill then learns to copy the\n"
        "noise; the suggested ratio hides enough pixels to avoid it. The check also fires on some nearly clean\n"
        "images, where a high ratio blurs detail: compare both with 'Preview on the view' if unsure.\n" + _SEE
    ),
    "threads": (
        "CPU threads torch computes with during a run; 'auto' leaves torch's own choice (one per core).\n"
        "On a laptop that is doing other work, or a small machine, one or two fewer than the cores can make a\n"
        "CPU run much faster: with one thread per core they fight with napari and other programs.\n"
        "Only the runs of this widget use it. " + _SEE
    ),
    "reset": "Set every field back to its default. The fields are remembered when napari closes and opens again.",
    "preview": (
        "Denoise only the part of the current plane that is on screen (at most 256x256 pixels) with the Fast\n"
        "preset and the current mask ratio, learning rate, seed, device and refinement, into the layer\n"
        "'<name> preview' over it: seconds instead of minutes. Zoom onto a typical region, then preview with\n"
        "each mask ratio (or refinement on and off) and compare before denoising the whole image or stack.\n"
        "Each preview replaces the previous one of the same layer; rename a preview to keep it."
    ),
    "follow": (
        "Move the viewer's sliders to the plane being denoised, so you can watch it improve.\n"
        "Untick it during a run to look at other planes while the run continues."
    ),
    "run": (
        "Denoise the chosen layer in the background; napari stays usable.\n"
        "While it runs this button cancels: what was computed so far is kept in a '(partial)' layer."
    ),
}

ADVANCED_TIP = "Learning rate, seed, device, channel axis, the Wiener refinement and windows: rarely needed."

NO_LAYER = "Open or choose an image layer to denoise first."

NO_QUEUED_LAYER = (
    "No image layer to denoise: select image layers in the layer list (layers made by napari-mpi are left out), "
    "or set Layers to 'The chosen image'."
)


def format_duration(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``; ``?`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_text(event: Any) -> str:
    """"plane i/N, iteration k/T, elapsed m:ss, ETA m:ss" for one progress event (a DenoiseProgress)."""
    fraction = event.fraction
    eta = event.elapsed * (1.0 - fraction) / fraction if fraction > 0 else math.inf
    tiles = f" (in {event.tiles} tiles)" if event.tiles > 1 else ""
    carried = " (carried the previous plane's network)" if event.start.carried else ""
    auto = event.auto
    decided = f", auto: beta {auto.beta:g}, memorisation +{max(auto.rise, 0):.0%}" if auto is not None else ""
    return (
        f"plane {event.plane + 1}/{event.n_planes}{tiles}{carried}, iteration {event.iteration}/{event.iterations}, "
        f"elapsed {format_duration(event.elapsed)}, ETA {format_duration(eta)}{decided}"
    )


def starting(plan: Any) -> str:
    """The status line while a run starts (``plan``: a DenoisePlan)."""
    return f"Starting on {plan.device.type.upper()}: {plan.layout.n_planes} plane(s) of {plan.describe_length()}..."


def preview_starting(plan: Any, crop: Any) -> str:
    """The status line while a preview starts (``crop``: a ViewCrop)."""
    plane = f" of plane {', '.join(str(i) for i in crop.plane)}" if crop.plane else ""
    return f"Previewing {crop.height}x{crop.width} pixels{plane} on {plan.device.type.upper()}..."


def cannot_preview(reason: Any, name: str) -> str:
    return f"Cannot preview '{name}': {str(reason).strip().rstrip('.')}."


def noise_hint(score: float, mask_ratio: float) -> str:
    """The hint shown under the mask ratio when the chosen layer's noise looks spatially correlated."""
    return f"Noise looks spatially correlated (score {score:.2f}): a mask ratio of {mask_ratio:g} may do much better."


def user_message(exc: BaseException, name: str, device: str | None = None) -> str:
    """One clear sentence for an error raised while denoising layer ``name`` on ``device`` ("cpu", "cuda", ...)."""
    text = str(exc).strip().rstrip(".")
    if is_out_of_memory(exc):
        cpu_option = "choose device 'cpu' under Advanced"
        if isinstance(exc, DeviceMemoryError):  # the engine's own words, advice in the widget's terms
            detail, advice = exc.what, exc.advice(cpu_option)
        else:
            detail = text or "not enough memory"
            advice = memory_advice("cpu" if device == "cpu" else "cuda", cpu_option)
        return f"Denoising '{name}' ran out of memory ({detail}). {advice[0].upper()}{advice[1:]}."
    if isinstance(exc, ValueError):
        return f"Cannot denoise '{name}': {text}."
    return (
        f"Denoising '{name}' stopped because of an unexpected error ({type(exc).__name__}: {text}). "
        "What was computed so far is kept."
    )


def cannot_start(exc: BaseException, name: str) -> str:
    """Preparing a run failed for another reason than the parameters (e.g. a damaged weights file)."""
    return f"Cannot start denoising '{name}' ({type(exc).__name__}: {exc})."


def engine_warning(name: str, message: Any) -> str:
    """A warning of the engine's own (e.g. a plane denoised in tiles after running out of memory)."""
    return f"Denoising '{name}': {message}."


def input_removed(name: str) -> str:
    return f"The layer '{name}' was removed while it was being denoised, so denoising stopped."


def output_removed(output: str, name: str) -> str:
    return f"The output layer '{output}' was removed, so denoising of '{name}' stopped."


def panel_closed(name: str) -> str:
    return f"The MPI denoise panel was closed, so denoising '{name}' stopped; what was computed so far is kept."


def window_closed(name: str) -> str:
    return f"Denoising '{name}' was cancelled because its napari window was closed."


def _auto_summary(reports: list[Any]) -> str:
    """What the Auto preset decided (AutoReports, one per plane), appended to the "Done" line."""
    if len(reports) == 1:
        return f" {reports[0].describe()}."
    if not reports:
        return ""
    stops = [report.iteration for report in reports]
    stopped = sum(report.stopped for report in reports)
    return f" Auto ran {min(stops)}-{max(stops)} iterations per plane ({stopped} of {len(reports)} stopped early)."


def run_summary(state: str, elapsed: float, output: str | None, latest: Any, reports: list[Any],
                planes: list[dict] | None = None) -> str:
    """The status line after a run: "Done in 0:12; ..." or "Cancelled at plane 1/3, iteration 5/100 after 0:04";
    ``reports``: the Auto preset's, ``planes``: how each plane was filled when the network went from plane to plane
    (``PlaneReport.as_dict``)."""
    took = format_duration(elapsed)
    told = summarise_reports(planes) if planes else ""
    reuse = f" {told[:1].upper()}{told[1:]}." if told else ""
    if state == "done":
        return f"Done in {took}; the result is the layer '{output or ''}'." + _auto_summary(reports) + reuse
    where = ""
    if latest is not None:
        where = f" at plane {latest.plane + 1}/{latest.n_planes}, iteration {latest.iteration}/{latest.iterations}"
    verb = {"cancelled": "Cancelled", "stopped": "Stopped", "failed": "Failed"}.get(state, "Stopped")
    kept = "; the partial result is kept" if output is not None else ""
    return f"{verb}{where} after {took}{kept}."


def layer_skipped(name: str) -> str:
    return f"The layer '{name}' was removed before its turn, so it was skipped; the other layers go on."


def queue_progress(position: int, total: int, name: str, text: str) -> str:
    """A run's status line within a queue: "layer k/n 'name': ..." (``position`` counts from 0)."""
    return f"Layer {position + 1}/{total} '{name}': {text}"


def _names(names: list[str]) -> str:
    return ", ".join(f"'{name}'" for name in names)


def queue_summary(outcomes: list[Any], elapsed: float) -> str:
    """The status line after a queue of layers (``outcomes``: one Outcome per layer, in queue order): how many
    were denoised, and what became of the others and of their output layers."""
    by_state: dict[str, list[Any]] = {}
    for outcome in outcomes:
        by_state.setdefault(outcome.state, []).append(outcome)
    done = by_state.get("done", [])
    cancelled = "cancelled" in by_state
    head = f"{'Cancelled' if cancelled else 'Done'}: {len(done)} of {len(outcomes)} layers denoised in " \
           f"{format_duration(elapsed)}"
    parts = []
    if done:
        parts.append(f"complete: {_names([o.output or o.name for o in done])}")
    partial = [o for o in outcomes if o.state in ("cancelled", "stopped", "failed") and o.output]
    if partial:
        parts.append(f"partial, what was computed is kept: {_names([o.output for o in partial])}")
    failed = [o for o in outcomes if o.state in ("failed", "refused")]
    if failed:
        parts.append(f"failed (see the notifications): {_names([o.name for o in failed])}")
    stopped = by_state.get("stopped", [])
    if stopped:
        parts.append(f"stopped, a layer was removed: {_names([o.name for o in stopped])}")
    if "skipped" in by_state:
        parts.append(f"skipped, removed before their turn: {_names([o.name for o in by_state['skipped']])}")
    if "waiting" in by_state:
        parts.append(f"not started: {_names([o.name for o in by_state['waiting']])}")
    return head + ("; " + "; ".join(parts) if parts else "") + "."
