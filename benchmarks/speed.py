"""Seconds per MPI fill iteration (forward + backward + Adam step + estimate update).

Calls ``napari_mpi.fill.iterative_fill`` directly on random data with a randomly initialised network
(the cost does not depend on the weights or the pixel values): one fill of ``warmup + repeats``
iterations per size and precision, the first ``warmup`` iterations discarded, the median (and min /
max) of the rest reported. 1-channel sizes use the per-pixel mask, 3-channel sizes the per-channel
(RGB) mask, as ``napari_mpi.denoise`` does. Run from the repository root::

    python benchmarks/speed.py                                   # 1x256x256, 1x512x512, 3x256x256; fp32, bf16
    python benchmarks/speed.py --sizes 1x256x256 --repeats 5 --precisions fp32 --threads 2
    python benchmarks/speed.py --device cuda --out speed.json --md speed.md
    python benchmarks/speed.py --sizes 1x2048x2048 --repeats 2 --isolate       # + peak RSS of a fresh process
    python benchmarks/speed.py --sizes 1x512x512 --precisions fp32 --network 64/64   # the paper's network
    python benchmarks/speed.py --device cuda --cuda-graphs on,off --stack 32x512x512 --stack-reuse off,on
    python benchmarks/speed.py --sizes 1x512x512 --fill-crop 0,256            # whole-plane steps vs 256² windows
    python benchmarks/speed.py --sizes "" --stack 1x1024x1024 --stack-crop none,auto   # denoise() whole vs windows

The output names the torch version, its thread count, the CPU model (and GPU, if used): compare
timings only from the same machine and the same load.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import machine_info  # noqa: E402

DEFAULT_SIZES = "1x256x256,1x512x512,3x256x256"


def parse_size(text: str) -> tuple[int, int, int]:
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) == 2:
        parts = ["1", *parts]
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"size must look like CxHxW (e.g. 1x256x256), got {text!r}")
    channels, height, width = (int(p) for p in parts)
    if channels not in (1, 3):
        raise argparse.ArgumentTypeError(f"channels must be 1 (gray) or 3 (RGB), got {channels}")
    return channels, height, width


def peak_rss_mib() -> float | None:
    """This process's peak resident memory so far (Linux VmHWM; ru_maxrss elsewhere), MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024
    except (ImportError, OSError):
        return None


def network_state(channels: int, network: str | None) -> dict | None:
    """A random state dict of SkipNet(width, skip_width) for ``network`` = "WIDTH/SKIP" (the fill builds the
    network a state dict describes); None = the default network."""
    if network is None:
        return None
    from network_width import random_weights

    width, skip_width = (int(v) for v in network.split("/"))
    return random_weights(channels, width, skip_width, seed=0).state_dict


def time_fill(size: tuple[int, int, int], precision: str, repeats: int, warmup: int, device: str, seed: int = 0,
              network: str | None = None, cuda_graph: bool = True, crop: int = 0) -> dict:
    """Per-iteration wall-clock seconds of one fill on random data (``cuda_graph``: ``fill.CUDA_GRAPHS``).

    ``crop``: time ``fill.crop_fill`` on windows of this side instead, and report seconds per whole-plane iteration
    it stands for: the median window step x ``crop_steps(N, H, W, crop) / N`` (``repeats`` window steps are timed)."""
    import torch

    from napari_mpi import fill
    from napari_mpi.fill import FillConfig, crop_fill, crop_steps, iterative_fill, resolve_device
    from napari_mpi.network import SkipNet, architecture_of

    fill.CUDA_GRAPHS = cuda_graph

    dev = resolve_device(device)
    channels = size[0]
    # a crop fill runs more (window) steps than its iterations: ask for enough, stop after warmup + repeats
    iterations = warmup + repeats if not crop else 10_000
    config = FillConfig(mask_ratio=0.3, beta=0.9, iterations=iterations, seed=seed,
                        mask_mode="pixel" if channels == 1 else "channel", precision=precision)
    image = torch.rand(size, generator=torch.Generator().manual_seed(seed))

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        elif dev.type == "mps":
            torch.mps.synchronize()

    times = []
    rss_before = peak_rss_mib()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    sync()
    last = time.perf_counter()
    state = network_state(channels, network)
    built = architecture_of(state if state is not None else SkipNet(2 * channels, channels).state_dict())
    steps = crop_fill(image, config, state, dev, crop) if crop else iterative_fill(image, config, state, dev)
    for step in itertools.islice(steps, warmup + repeats):
        step.loss_tensor.item()  # make sure the step's work is done before the clock is read
        sync()
        now = time.perf_counter()
        times.append(now - last)
        last = now
    # window steps per whole-plane iteration they stand for (1 for whole-plane steps)
    scale = crop_steps(iterations, size[1], size[2], crop) / iterations if crop else 1.0
    times = [t * scale for t in times]
    kept = times[warmup:]
    return {
        "size": "x".join(map(str, size)),
        "crop": crop,
        "precision": precision,
        "device": str(dev),
        "network": f"{built['width']}/{built['skip_width']}",
        "cuda_graph": cuda_graph if dev.type == "cuda" else None,
        "median_s": statistics.median(kept),
        "min_s": min(kept),
        "max_s": max(kept),
        "repeats": len(kept),
        "warmup": warmup,
        "first_s": times[0],
        "peak_gpu_mib": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None,
        # peak resident memory of the process, and before the fill started (imports, torch's runtime):
        # a process's own figure only with --isolate (else it includes the sizes measured before)
        "peak_rss_mib": peak_rss_mib(),
        "rss_before_mib": rss_before,
    }


def isolated(size: tuple[int, int, int], precision: str, graph: bool, crop: int, args: argparse.Namespace) -> dict:
    """``time_fill`` in a fresh Python process, so that its peak RSS is this size's alone."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--sizes", "x".join(map(str, size)),
                   "--precisions", precision, "--repeats", str(args.repeats), "--warmup", str(args.warmup),
                   "--device", args.device, "--out", str(out), "--cuda-graphs", "on" if graph else "off",
                   "--fill-crop", str(crop)]
        command += ["--network", args.network] if args.network else []
        if args.threads:
            command += ["--threads", str(args.threads)]
        child = subprocess.run(command, capture_output=True, text=True, check=False)
        if child.returncode != 0:
            raise SystemExit(f"timing {'x'.join(map(str, size))} {precision} failed:\n{child.stderr}")
        return json.loads(out.read_text())["results"][0]


def time_stack(shape: tuple[int, int, int], iterations: int | None, precision: str, device: str, seed: int = 0,
               reuse: bool = False, cuda_graph: bool = True, crop: str = "auto") -> dict:
    """Planes per second of ``napari_mpi.denoise`` on a (planes, H, W) random stack, as a user runs it
    (``reuse``: the planes reuse one network, ``reuse_network=True``; ``iterations`` None: the fast preset's
    count for the start the default weights give; ``crop``: the ``crop`` option, whole planes or windows)."""
    import numpy as np
    import torch

    import napari_mpi
    from napari_mpi import fill

    fill.CUDA_GRAPHS = cuda_graph

    stack = np.random.default_rng(seed).random(shape, dtype=np.float32)
    napari_mpi.denoise(stack[:1], iterations=3, device=device, precision=precision)  # warm-up (kernels, caches)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    napari_mpi.denoise(stack, iterations=iterations, device=device, precision=precision, seed=seed,
                       reuse_network=reuse, crop=crop)
    seconds = time.perf_counter() - start
    plan = napari_mpi.prepare(shape, stack.dtype, iterations=iterations, device=device, reuse_network=reuse, crop=crop)
    return {
        "stack": "x".join(map(str, shape)),
        "iterations": plan.config.iterations,
        "crop": plan.crop,
        "steps_per_plane": plan.steps_per_plane,
        "precision": precision,
        "reuse_network": reuse,
        "cuda_graph": cuda_graph if torch.cuda.is_available() and device != "cpu" else None,
        "device": device,
        "seconds": seconds,
        "planes_per_s": shape[0] / seconds,
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
    }


def markdown(results: list[dict], machine: dict) -> str:
    lines = [
        f"torch {machine.get('torch')} ({machine.get('torch_threads')} threads), CPU: {machine.get('cpu')} "
        f"({machine.get('cpu_count')} logical CPUs){', GPU: ' + machine['gpu'] if machine.get('gpu') else ''}, "
        f"napari-mpi {machine.get('napari-mpi')}.",
        "",
        "| size (CxHxW) | network (width/skip) | steps on | precision | device | CUDA graph | s / iteration (median) "
        "| min – max | fast preset, 200 it (s) | quality preset, 1000 it (s) | peak GPU memory (MiB) | peak RSS (MiB) |",
        "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    per_iteration = [r for r in results if "stack" not in r]
    if not per_iteration:
        lines = lines[:2]
    for r in per_iteration:
        peak = f"{r['peak_gpu_mib']:.0f}" if r.get("peak_gpu_mib") is not None else "–"
        rss = f"{r['peak_rss_mib']:.0f}" if r.get("isolated") and r.get("peak_rss_mib") is not None else "–"
        steps_on = f"{r['crop']}² windows" if r.get("crop") else "whole plane"
        lines.append(f"| {r['size']} | {r.get('network', '64/64')} | {steps_on} | {r['precision']} | {r['device']} "
                     f"| {_yes_no(r.get('cuda_graph'))} | {r['median_s']:.4f} | "
                     f"{r['min_s']:.4f} – {r['max_s']:.4f} | {200 * r['median_s']:.1f} | {1000 * r['median_s']:.1f} "
                     f"| {peak} | {rss} |")
    stacks = [r for r in results if "stack" in r]
    if stacks:
        lines += ["", ("| stack (ZxHxW) | iterations | windows (steps / plane) | network reused | precision | device "
                       "| CUDA graph | seconds | planes / s | peak GPU memory (MiB) |"),
                  "|---|---:|---|---|---|---|---|---:|---:|---:|"]
        for r in stacks:
            peak = f"{r['peak_gpu_mib']:.0f}" if r.get("peak_gpu_mib") is not None else "–"
            windows = f"{r['crop']}² ({r['steps_per_plane']})" if r.get("crop") else "whole plane"
            lines.append(f"| {r['stack']} | {r['iterations']} | {windows} | {_yes_no(r.get('reuse_network'))} "
                         f"| {r['precision']} "
                         f"| {r['device']} | {_yes_no(r.get('cuda_graph'))} | {r['seconds']:.1f} "
                         f"| {r['planes_per_s']:.3f} | {peak} |")
    return "\n".join(lines) + "\n"


def _yes_no(flag: bool | None) -> str:
    return "–" if flag is None else "yes" if flag else "no"


def _on_off(text: str, option: str) -> list[bool]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or any(v not in ("on", "off") for v in values):
        raise SystemExit(f"{option} takes a comma-separated list of on / off, got {text!r}")
    return [v == "on" for v in values]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"comma-separated CxHxW (default {DEFAULT_SIZES})")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated from fp32, bf16 (default both)")
    parser.add_argument("--repeats", type=int, default=10, help="timed iterations per size (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first (default 3)")
    parser.add_argument("--device", default="auto", help='"auto", "cpu", "cuda" or "mps"')
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--network", default=None,
                        help='time SkipNet(width, skip_width) given as "WIDTH/SKIP" (e.g. the paper\'s "64/64") '
                             "instead of the default network")
    parser.add_argument("--stack", default=None, help="also time napari_mpi.denoise on a ZxHxW random stack")
    parser.add_argument("--stack-iterations", type=int, default=None,
                        help="iterations per plane (default: the fast preset's, 100 from the shipped gray prior)")
    parser.add_argument("--stack-reuse", default="off",
                        help="comma-separated on / off: time the stack with its planes reusing one network, or not")
    parser.add_argument("--fill-crop", default="0",
                        help="comma-separated window sides for the per-iteration timing (0 = whole plane, default): "
                             "a crop fill's seconds per whole-plane iteration it stands for")
    parser.add_argument("--stack-crop", default="auto",
                        help="comma-separated crop options for the stack: auto, none or a window side (default auto)")
    parser.add_argument("--cuda-graphs", default="on",
                        help="comma-separated on / off: replay the fill step from a CUDA graph (fill.CUDA_GRAPHS)")
    parser.add_argument("--isolate", action="store_true",
                        help="time each size and precision in a fresh process and report its peak RSS")
    parser.add_argument("--out", default=None, help="write the results as JSON")
    parser.add_argument("--md", default=None, help="write the Markdown table to this file")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    for p in precisions:
        if p not in ("fp32", "bf16"):
            parser.error(f"unknown precision {p!r}; use fp32 or bf16")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_info()
    results = []
    graphs = _on_off(args.cuda_graphs, "--cuda-graphs")
    reuses = _on_off(args.stack_reuse, "--stack-reuse")
    fill_crops = [int(c) for c in args.fill_crop.split(",") if c.strip()]
    for size, precision, graph, crop in itertools.product(sizes, precisions, graphs, fill_crops):
        if args.isolate:
            result = dict(isolated(size, precision, graph, crop, args), isolated=True)
        else:
            result = time_fill(size, precision, args.repeats, args.warmup, args.device, network=args.network,
                               cuda_graph=graph, crop=crop)
        results.append(result)
        print(f"{result['size']:>12s} {precision} graph {graph} crop {crop}: {result['median_s']:.4f} s / iteration "
              f"(min {result['min_s']:.4f}, max {result['max_s']:.4f}, first {result['first_s']:.3f})"
              + (f", peak RSS {result['peak_rss_mib']:.0f} MiB" if result.get("isolated") else ""),
              file=sys.stderr, flush=True)
    if args.stack:
        shape = tuple(int(v) for v in args.stack.lower().split("x"))
        crops = [c.strip() if c.strip() in ("auto", "none") else int(c) for c in args.stack_crop.split(",") if c.strip()]
        for precision, graph, reuse, crop in itertools.product(precisions, graphs, reuses, crops):
            result = time_stack(shape, args.stack_iterations, precision, args.device, reuse=reuse, cuda_graph=graph,
                                crop=crop)
            results.append(result)
            print(f"stack {result['stack']} {precision} graph {graph} reuse {reuse} crop {result['crop']}: "
                  f"{result['planes_per_s']:.3f} planes/s", file=sys.stderr, flush=True)
    text = markdown(results, machine)
    print(text)
    if args.md:
        Path(args.md).write_text(text)
    if args.out:
        config = {k: v for k, v in vars(args).items() if k not in ("out", "md")}
        Path(args.out).write_text(json.dumps({"config": config, "machine": machine, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
