"""Which GPU path makes the fill fastest? Times one fill iteration (mask, forward, masked loss,
backward, Adam, EMA update) on a (1, 1, S, S) random plane in several ways, on CUDA:

- ``eager``: as ``napari_mpi.fill.iterative_fill`` runs it (channels_last, foreach Adam);
- ``eager-fused``: the same with ``Adam(fused=True)`` (one kernel for the optimiser);
- ``compile``: ``torch.compile`` of the network (forward + backward through inductor);
- ``graph``: the whole step captured once in a CUDA graph and replayed (static input, masks drawn
  inside the graph from the CUDA generator, ``Adam(capturable=True)``), which removes the Python and
  launch overhead that dominates an eager step of this small network;
- ``graph-compile``: ``graph`` around a ``torch.compile``d network (inductor fuses BatchNorm, activations,
  padding and upsampling into fewer kernels; the graph then removes the launches). Compile time is printed.

Each in fp32 and / or bf16 autocast. Prints s / iteration (median) and the final masked loss (the
variants must train alike). ``--profile`` first prints where an eager step's GPU time goes, by kernel.
Usage: ``python benchmarks/gpu_fill_paths.py --sizes 256,512 --iters 100``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from napari_mpi.network import SkipNet  # noqa: E402


def step_body(model, opt, x, estimate, ratio, beta, bf16):
    keep = (torch.rand(x.shape, device=x.device) >= ratio).to(x.dtype)
    hidden = 1.0 - keep
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
        pred = model(torch.cat([x * keep, keep], 1).contiguous(memory_format=torch.channels_last))
    pred = pred.float()
    loss = ((pred - x) ** 2 * hidden).sum() / hidden.sum().clamp_min(1.0)
    loss.backward()
    opt.step()
    with torch.no_grad():
        estimate.add_(hidden[0] * (1.0 - beta) * (pred.detach()[0] - estimate))
    return loss.detach()


DEVICE = torch.device("cuda")


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def run(variant: str, size: int, iters: int, bf16: bool) -> tuple[float, float]:
    dev = DEVICE
    torch.manual_seed(0)
    torch.cuda.manual_seed(0)
    model = SkipNet(2, 1).to(dev).to(memory_format=torch.channels_last).train()
    x = torch.rand(1, 1, size, size, device=dev)
    estimate = x[0].clone()
    kwargs = {"fused": True} if variant == "eager-fused" else {"capturable": True} if variant.startswith("graph") else {}
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, **kwargs)
    fwd = torch.compile(model) if variant in ("compile", "graph-compile") else model
    if variant in ("graph", "graph-compile"):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        warm_start = time.perf_counter()
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up on a side stream, as capture requires (and compiles, if asked)
                opt.zero_grad(set_to_none=False)
                step_body(fwd, opt, x, estimate, 0.3, 0.9, bf16)
        torch.cuda.current_stream().wait_stream(side)
        sync()
        print(f"  {variant} {size} {'bf16' if bf16 else 'fp32'}: warm-up (incl. compiling) {time.perf_counter() - warm_start:.1f} s",
              flush=True)
        graph = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=False)
        with torch.cuda.graph(graph):
            opt.zero_grad(set_to_none=False)
            static_loss = step_body(fwd, opt, x, estimate, 0.3, 0.9, bf16)

        def step() -> torch.Tensor:
            graph.replay()
            return static_loss
    else:

        def step() -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            return step_body(fwd, opt, x, estimate, 0.3, 0.9, bf16)

    times = []
    sync()
    start = time.perf_counter()
    for i in range(iters):
        loss_t = step()
        if i % 10 == 9:
            sync()
            now = time.perf_counter()
            times.append((now - start) / 10)
            start = now
    loss = float(loss_t)
    return statistics.median(times[1:] if len(times) > 2 else times), loss


def profile(size: int, bf16: bool, steps: int = 10, rows: int = 25) -> None:
    """Print the GPU time of an eager step by kernel (the graph replays the same kernels)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    dev = DEVICE
    model = SkipNet(2, 1).to(dev).to(memory_format=torch.channels_last).train()
    x = torch.rand(1, 1, size, size, device=dev)
    estimate = x[0].clone()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        step_body(model, opt, x, estimate, 0.3, 0.9, bf16)
    sync()
    activity = ProfilerActivity.CUDA if dev.type == "cuda" else ProfilerActivity.CPU
    with torch_profile(activities=[activity]) as prof:
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            step_body(model, opt, x, estimate, 0.3, 0.9, bf16)
        sync()
    events = prof.key_averages()
    key = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    total_us = sum(getattr(e, key) for e in events)
    print(f"profile {size}² {'bf16' if bf16 else 'fp32'}: GPU busy {total_us / steps / 1000:.2f} ms per step, "
          f"{sum(e.count for e in events) // steps} kernels per step")
    print(events.table(sort_by=key, row_limit=rows, max_name_column_width=70), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--variants", default="eager,eager-fused,graph,compile,graph-compile")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--profile", action="store_true", help="first print the kernels of an eager step, per size")
    parser.add_argument("--device", default="cuda", help="cuda; cpu only to dry-run this script")
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name() if DEVICE.type == 'cuda' else 'CPU'}")
    precisions = [p == "bf16" for p in args.precisions.split(",")]
    if args.profile:
        for size in (int(s) for s in args.sizes.split(",")):
            for bf16 in precisions:
                profile(size, bf16)
    print("| size | variant | precision | s / iteration | 1000 iterations (s) | final masked loss |")
    print("|---:|---|---|---:|---:|---:|")
    for size in (int(s) for s in args.sizes.split(",")):
        for variant in args.variants.split(","):
            for bf16 in precisions:
                try:
                    t0 = time.perf_counter()
                    seconds, loss = run(variant, size, args.iters, bf16)
                    total = time.perf_counter() - t0
                    print(f"| {size} | {variant} | {'bf16' if bf16 else 'fp32'} | {seconds:.5f} | {1000 * seconds:.2f} "
                          f"| {loss:.5f} |  (run incl. setup {total:.1f} s)", flush=True)
                except Exception as exc:  # report and go on: one failing path must not hide the others
                    print(f"| {size} | {variant} | {'bf16' if bf16 else 'fp32'} | failed: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:150]} |", flush=True)
                    traceback.print_exc(limit=3, file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
