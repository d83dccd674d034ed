"""Seconds per MPI fill iteration (forward + backward + Adam step + estimate update), and planes per second
of ``napari_mpi.denoise`` on a stack.

Per iteration: ``napari_mpi.iterative_fill`` on random data with a randomly initialised network (the cost
does not depend on the weights or the pixel values), configured like a fill of the fast preset's length
(200 iterations, so that a CUDA graph is captured as in a real fill) and stopped after ``warmup + repeats``
iterations; the first ``warmup`` are discarded, the median (and min / max) of the rest reported. 1-channel
sizes use the per-pixel mask, 3-channel sizes the per-channel (RGB) mask, as ``napari_mpi.denoise`` does.
``--cuda-graphs on,off`` times both ways of running a step on a CUDA GPU (``FillConfig.cuda_graphs``).

Stack (``--stack ZxHxW``): ``napari_mpi.denoise`` on a random stack as a user runs it, planes alone or
reusing one network (``--stack-reuse``), whole planes or windows (``--stack-crop``). Run from the
repository root::

    python benchmarks/speed.py                                   # 1x256x256, 1x512x512, 3x256x256; fp32, bf16
    python benchmarks/speed.py --sizes 1x256x256 --repeats 5 --precisions fp32 --threads 2
    python benchmarks/speed.py --sizes 1x2048x2048 --repeats 2 --isolate       # + peak RSS of a fresh process
    python benchmarks/speed.py --device cuda --sizes 1x512x512,1x2048x2048 --cuda-graphs on,off --out speed.json
    python benchmarks/speed.py --device cuda --sizes "" --stack 32x512x512 --stack-reuse off,on --out stack.json
    python benchmarks/speed.py --sizes "" --stack 1x1024x1024 --stack-crop none,auto   # whole plane vs windows

``--precisions fp32`` times the fp32 path on any CPU (what CPUs without native bf16 run). ``--out FILE.json`` is what
``plots.py --speed`` draws. The output names the torch version, its thread count, the CPU model, the vector
instructions torch computes with and whether the CPU computes bf16 natively (and the GPU, if used): compare timings
only from the same machine and the same load.
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

import numpy as np
from datasets import machine_info, run_record, versions, write_json

import napari_mpi

DEFAULT_SIZES = "1x256x256,1x512x512,3x256x256"
#: the fill's configured length (the fast preset's from a random start): the CUDA graph is captured as in a real fill
FILL_ITERATIONS = 200


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


def network_name(described: dict) -> str:
    """"WIDTH/SKIP" of the network a plan describes (``DenoisePlan.describe()["network"]``)."""
    network = described.get("network")
    if isinstance(network, dict) and "width" in network:
        return f"{network['width']}/{network.get('skip_width', '?')}"
    return str(network)


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_fill(size: tuple[int, int, int], precision: str, repeats: int, warmup: int, device: str,
              cuda_graphs: bool = True, seed: int = 0) -> dict:
    """Per-iteration wall-clock seconds of one fill of a random plane from a random start."""
    import torch

    channels, height, width = size
    plane_shape = (height, width, 3) if channels == 3 else (height, width)
    plan = napari_mpi.prepare(plane_shape, np.float32, rgb=channels == 3, weights="random", device=device)
    dev = plan.device
    config = napari_mpi.FillConfig(mask_ratio=0.3, beta=0.9, iterations=max(FILL_ITERATIONS, warmup + repeats),
                                   seed=seed, mask_mode="pixel" if channels == 1 else "channel", precision=precision,
                                   cuda_graphs=cuda_graphs)
    image = torch.rand(size, generator=torch.Generator().manual_seed(seed))
    rss_before = peak_rss_mib()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    synchronize(dev)
    last = time.perf_counter()
    for step in itertools.islice(napari_mpi.iterative_fill(image, config, None, dev), warmup + repeats):
        _ = step.loss  # reading the loss waits for the step's work before the clock is read
        synchronize(dev)
        now = time.perf_counter()
        times.append(now - last)
        last = now
    kept = times[warmup:]
    return {
        "size": "x".join(map(str, size)),
        "precision": precision,
        "device": str(dev),
        "network": network_name(plan.describe()),
        "cuda_graph": cuda_graphs if dev.type == "cuda" else None,
        "median_s": statistics.median(kept),
        "min_s": min(kept),
        "max_s": max(kept),
        "repeats": len(kept),
        "warmup": warmup,
        "first_s": times[0],
        "peak_gpu_mib": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None,
        # peak resident memory of the process, and before the fill started (imports, torch's runtime):
        # a size's own figure only with --isolate (else it includes the sizes measured before)
        "peak_rss_mib": peak_rss_mib(),
        "rss_before_mib": rss_before,
    }


def isolated(size: tuple[int, int, int], precision: str, graph: bool, args: argparse.Namespace) -> dict:
    """``time_fill`` in a fresh Python process, so that its peak RSS is this size's alone."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--sizes", "x".join(map(str, size)),
                   "--precisions", precision, "--repeats", str(args.repeats), "--warmup", str(args.warmup),
                   "--device", args.device, "--out", str(out), "--cuda-graphs", "on" if graph else "off"]
        if args.threads:
            command += ["--threads", str(args.threads)]
        child = subprocess.run(command, capture_output=True, text=True, check=False)
        if child.returncode != 0:
            raise SystemExit(f"timing {'x'.join(map(str, size))} {precision} failed:\n{child.stderr}")
        return json.loads(out.read_text())["results"][0]


def time_stack(shape: tuple[int, ...], iterations: int | None, precision: str, device: str, seed: int = 0,
               reuse: bool | str = "auto", cuda_graphs: bool = True, crop: str | int = "auto") -> dict:
    """Planes per second of ``napari_mpi.denoise`` on a (planes, H, W) random stack, as a user runs it
    (``reuse``: ``reuse_network``; ``iterations`` None: the fast preset's count for the start the default
    weights give; ``crop``: the ``crop`` option, whole planes or windows)."""
    import torch

    tuning = {"cuda_graphs": cuda_graphs}
    stack = np.random.default_rng(seed).random(shape, dtype=np.float32)
    napari_mpi.denoise(stack[:1], iterations=3, device=device, precision=precision, tuning=tuning)  # warm-up
    plan = napari_mpi.prepare(shape, stack.dtype, iterations=iterations, device=device, precision=precision, seed=seed,
                              reuse_network=reuse, crop=crop, tuning=tuning)
    on_cuda = plan.device.type == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(plan.device)
    start = time.perf_counter()
    napari_mpi.denoise(stack, iterations=iterations, device=device, precision=precision, seed=seed,
                       reuse_network=reuse, crop=crop, tuning=tuning)
    seconds = time.perf_counter() - start
    described = plan.describe()
    return {
        "stack": "x".join(map(str, shape)),
        "iterations": described["iterations"],
        "crop_option": crop,
        "crop": described["crop"],
        "weights": described["weights"],
        "network": network_name(described),
        "precision": precision,
        "reuse_network": reuse,
        "cuda_graph": cuda_graphs if on_cuda else None,
        "device": str(plan.device),
        "seconds": seconds,
        "planes_per_s": shape[0] / seconds,
        "peak_gpu_mib": torch.cuda.max_memory_allocated(plan.device) / 2**20 if on_cuda else None,
    }


def _projected(result: dict, preset: str) -> str:
    """Seconds of the fill's training steps at the preset's length for the defaults' start (gray planes from the
    shipped weights, colour planes from them spread over RGB), without the first step and the final predictions."""
    start = "pretrained" if result["size"].startswith("1x") else "gray_as_colour"
    iterations = napari_mpi.PRESETS[preset].config(start).iterations
    return f"{iterations * result['median_s']:.1f} ({iterations} it)"


def markdown(results: list[dict], machine: dict, versions: dict) -> str:
    gpu = f", GPU: {machine['gpu']}" if machine.get("gpu") else ""
    bf16 = {True: "native bf16", False: "no native bf16"}.get(machine.get("cpu_bf16"), "bf16 unknown")
    lines = [f"torch {versions.get('torch')} ({machine.get('torch_threads')} threads), CPU: {machine.get('cpu')} "
             f"({machine.get('cpu_count')} logical CPUs, {machine.get('cpu_capability', '?')}, {bf16}){gpu}, "
             f"napari-mpi {versions.get('napari_mpi')}.", ""]
    per_iteration = [r for r in results if "size" in r]
    stacks = [r for r in results if "stack" in r]
    if per_iteration:
        lines += ["| size (CxHxW) | network (width/skip) | precision | device | CUDA graph | s / iteration (median) "
                  "| min – max | fast preset at the defaults' length (s) | quality preset (s) "
                  "| peak GPU memory (MiB) | peak RSS (MiB) |",
                  "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in per_iteration:
        rss = _number(r.get("peak_rss_mib")) if r.get("isolated") else "–"
        lines.append(f"| {r['size']} | {r['network']} | {r['precision']} | {r['device']} "
                     f"| {_yes_no(r.get('cuda_graph'))} | {r['median_s']:.4f} | {r['min_s']:.4f} – {r['max_s']:.4f} "
                     f"| {_projected(r, 'fast')} | {_projected(r, 'quality')} | {_number(r.get('peak_gpu_mib'))} "
                     f"| {rss} |")
    if stacks:
        lines += [""] if per_iteration else []
        lines += [("| stack (ZxHxW) | iterations | windows (crop option) | network reused | precision | device "
                       "| CUDA graph | seconds | planes / s | peak GPU memory (MiB) |"),
                  "|---|---:|---|---|---|---|---|---:|---:|---:|"]
    for r in stacks:
        windows = (f"{r['crop']}²" if r.get("crop") else "whole plane") + f" ({r.get('crop_option')})"
        lines.append(f"| {r['stack']} | {r['iterations']} | {windows} | {_yes_no(r.get('reuse_network'))} "
                     f"| {r['precision']} | {r['device']} | {_yes_no(r.get('cuda_graph'))} | {r['seconds']:.1f} "
                     f"| {r['planes_per_s']:.3f} | {_number(r.get('peak_gpu_mib'))} |")
    return "\n".join(lines) + "\n"


def _yes_no(flag: bool | str | None) -> str:
    """"–", "yes", "no", or a choice by name (a stack's "auto" reuse)."""
    if isinstance(flag, str):
        return flag
    return "–" if flag is None else "yes" if flag else "no"


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def _reuse_choices(text: str) -> list[bool | str]:
    """``--stack-reuse``: "auto,off" -> ["auto", False] (reuse_network values; "on" is True)."""
    choices = {"auto": "auto", "on": True, "off": False}
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or any(v not in choices for v in values):
        raise SystemExit(f"--stack-reuse takes a comma-separated list of auto / on / off, got {text!r}")
    return [choices[v] for v in values]


def _on_off(text: str, option: str) -> list[bool]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or any(v not in ("on", "off") for v in values):
        raise SystemExit(f"{option} takes a comma-separated list of on / off, got {text!r}")
    return [v == "on" for v in values]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES,
                        help=f'comma-separated CxHxW (default {DEFAULT_SIZES}; "" = stack only)')
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated from fp32, bf16 (default both)")
    parser.add_argument("--repeats", type=int, default=10, help="timed iterations per size (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first (default 3)")
    parser.add_argument("--device", default="auto", help='"auto", "cpu", "cuda" or "mps"')
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--cuda-graphs", default="on",
                        help="comma-separated on / off: replay the fill step from a CUDA graph or run it eagerly "
                             "(FillConfig.cuda_graphs; default on)")
    parser.add_argument("--isolate", action="store_true",
                        help="time each size and precision in a fresh process and report its peak RSS")
    parser.add_argument("--stack", default=None, help="also time napari_mpi.denoise on a ZxHxW random stack")
    parser.add_argument("--stack-iterations", type=int, default=None,
                        help="iterations per plane (default: the fast preset's for the shipped weights)")
    parser.add_argument("--stack-reuse", default="auto",
                        help="comma-separated auto / on / off: the stack's planes reuse one network where alike (the "
                             "default of napari_mpi.denoise), on every plane, or each runs alone")
    parser.add_argument("--stack-crop", default="auto",
                        help="comma-separated crop options for the stack: auto, none or a window side (default auto)")
    parser.add_argument("--out", default=None, help="write the results as JSON (what plots.py --speed reads)")
    parser.add_argument("--md", default=None, help="write the Markdown tables to this file")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if any(p not in ("fp32", "bf16") for p in precisions):
        parser.error(f"unknown precision in {args.precisions!r}; use fp32 or bf16")
    graphs = _on_off(args.cuda_graphs, "--cuda-graphs")
    reuses = _reuse_choices(args.stack_reuse)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if napari_mpi.prepare((64, 64), np.float32, device=args.device).device.type != "cuda":
        graphs = graphs[:1]  # CUDA graphs exist on CUDA devices only: one setting is enough elsewhere
    results = []
    for size, precision, graph in itertools.product(sizes, precisions, graphs):
        if args.isolate:
            result = dict(isolated(size, precision, graph, args), isolated=True)
        else:
            result = time_fill(size, precision, args.repeats, args.warmup, args.device, cuda_graphs=graph)
        results.append(result)
        print(f"{result['size']:>12s} {precision} graph {result['cuda_graph']}: {result['median_s']:.4f} s / iteration "
              f"(min {result['min_s']:.4f}, max {result['max_s']:.4f}, first {result['first_s']:.3f})"
              + (f", peak RSS {result['peak_rss_mib']:.0f} MiB" if result.get("isolated") else ""),
              file=sys.stderr, flush=True)
    if args.stack:
        shape = tuple(int(v) for v in args.stack.lower().split("x"))
        crops = [c.strip() for c in args.stack_crop.split(",") if c.strip()]
        crops = [c if c in ("auto", "none") else int(c) for c in crops]
        for precision, graph, reuse, crop in itertools.product(precisions, graphs, reuses, crops):
            result = time_stack(shape, args.stack_iterations, precision, args.device, reuse=reuse, cuda_graphs=graph,
                                crop=crop)
            results.append(result)
            print(f"stack {result['stack']} {precision} graph {result['cuda_graph']} reuse {reuse} "
                  f"crop {result['crop']}: {result['planes_per_s']:.3f} planes/s", file=sys.stderr, flush=True)
    text = markdown(results, machine_info(), versions())
    print(text)
    if args.md:
        Path(args.md).write_text(text)
    if args.out:
        config = {k: v for k, v in vars(args).items() if k not in ("out", "md")}
        write_json(args.out, run_record(config, argv) | {"results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
