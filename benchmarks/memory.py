"""Peak memory of ``napari-mpi denoise`` on a stack bigger than the memory it is allowed.

Writes a float64 TIFF stack of ``--planes`` planes of ``--side`` x ``--side`` pixels, gray (ZYX) or with
``--rgb`` colour (ZYXS: three times the bytes for about the same network work), one plane at a time,
then runs the CLI on it (TIFF in, memory-mapped; TIFF out, written plane by plane) in a subprocess whose
address space is capped with ``RLIMIT_AS`` below the stack's size. A small stack under the same cap
gives the baseline (interpreter + torch + one plane's network), and a control process that reads the big
stack whole under the same cap must fail: the cap is real. Reports the child's peak resident memory
(VmHWM), peak address space (VmPeak), and time. Linux only (``/proc``, ``RLIMIT_AS``). Run from the
repository root::

    python benchmarks/memory.py --rgb --planes 1200 --limit-gb 1.4 --out memory-rgb.json
    python benchmarks/memory.py --planes 4096 --out memory-gray.json      # 2 GiB gray: about 1 h on 1 CPU thread

It needs a few GB of free disk in ``--workdir`` (default: a temporary folder, removed at the end).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from datasets import run_record, write_json

#: Run in the capped child: the CLI, then its own peak memory figures from /proc on stderr (JSON, last line).
CHILD = r"""
import json, sys
from napari_mpi.cli import main
code = main(sys.argv[1:])
status = dict(line.split(":", 1) for line in open("/proc/self/status") if line.startswith(("VmPeak", "VmHWM")))
print(json.dumps({k: int(v.split()[0]) * 1024 for k, v in status.items()}), file=sys.stderr)
sys.exit(code)
"""


def make_stack(path: Path, planes: int, side: int, rgb: bool) -> int:
    """A noisy float64 stack written plane by plane (never whole in memory); returns its data size in bytes."""
    import tifffile

    shape = (planes, side, side, 3) if rgb else (planes, side, side)
    sink = tifffile.memmap(path, shape=shape, dtype=np.float64, photometric="rgb" if rgb else "minisblack",
                           metadata={"axes": "ZYXS" if rgb else "ZYX"})
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:side, :side]
    cells = 200 + 800 * (np.sin(yy / 9.0) * np.cos(xx / 13.0) > 0.6)
    if rgb:
        cells = np.stack([cells, cells[::-1], cells[:, ::-1]], axis=-1)
    for z in range(planes):
        sink[z] = rng.poisson(cells * (1 + 0.1 * np.sin(z / 50))).astype(np.float64)
    sink.flush()
    del sink
    return int(np.prod(shape)) * 8


def capped(limit_bytes: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    return apply


def run_cli(source: Path, target: Path, limit_bytes: int, iterations: int, threads: int) -> dict:
    args = [sys.executable, "-c", CHILD, "denoise", str(source), "-o", str(target), "--iterations", str(iterations),
            "--weights", "random", "--threads", str(threads), "--device", "cpu", "-q"]
    start = time.monotonic()
    run = subprocess.run(args, capture_output=True, text=True, preexec_fn=capped(limit_bytes))
    seconds = time.monotonic() - start
    if run.returncode != 0:
        raise SystemExit(f"CLI failed under the cap (exit {run.returncode}): {run.stderr.strip()[-2000:]}")
    figures = json.loads(run.stderr.strip().splitlines()[-1])
    return {"seconds": round(seconds, 1), "peak_rss_bytes": figures["VmHWM"],
            "peak_address_space_bytes": figures["VmPeak"]}


def control(source: Path, limit_bytes: int) -> str:
    """Reading the stack whole under the same cap must fail, or the cap proves nothing."""
    code = f"import tifffile; tifffile.imread({str(source)!r})"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=capped(limit_bytes))
    if run.returncode == 0:
        raise SystemExit("the control read the whole stack under the cap: raise --planes or lower --limit-gb")
    return run.stderr.strip().splitlines()[-1][:200]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--planes", type=int, default=4096, help="planes of the big stack (default 4096)")
    parser.add_argument("--side", type=int, default=256, help="plane side in pixels (default 256)")
    parser.add_argument("--rgb", action="store_true", help="colour planes (Y, X, 3)")
    parser.add_argument("--small-planes", type=int, default=16, help="planes of the baseline stack")
    parser.add_argument("--limit-gb", type=float, default=1.5, help="RLIMIT_AS of the CLI process, in GiB")
    parser.add_argument("--iterations", type=int, default=1, help="fill iterations per plane (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of the CLI (default 1)")
    parser.add_argument("--workdir", type=Path, default=None, help="folder for the stacks (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON")
    return parser


def measure(args: argparse.Namespace) -> dict:
    """Write both stacks, check the cap with the control, run the CLI on both under it."""
    limit = int(args.limit_gb * 2**30)
    with tempfile.TemporaryDirectory(dir=args.workdir) as folder:
        work = Path(folder)
        small, big = work / "small.tif", work / "big.tif"
        small_bytes = make_stack(small, args.small_planes, args.side, args.rgb)
        big_bytes = make_stack(big, args.planes, args.side, args.rgb)
        print(f"stacks written: {small_bytes / 2**20:.1f} MiB and {big_bytes / 2**30:.2f} GiB; cap {args.limit_gb} GiB",
              flush=True)
        refused = control(big, limit)
        print(f"control (read whole under the cap): {refused}", flush=True)
        baseline = run_cli(small, work / "small-out.tif", limit, args.iterations, args.threads)
        print(f"small stack: {baseline}", flush=True)
        result = run_cli(big, work / "big-out.tif", limit, args.iterations, args.threads)
        print(f"big stack: {result}", flush=True)
        out_bytes = (work / "big-out.tif").stat().st_size
    return {
        "stack": {"planes": args.planes, "side": args.side, "rgb": args.rgb, "dtype": "float64",
                  "input_bytes": big_bytes, "output_bytes": out_bytes},
        "cap_rlimit_as_bytes": limit,
        "control_read_whole": refused,
        "small_stack": {"planes": args.small_planes, **baseline},
        "big_stack": result,
        "peak_rss_growth_bytes": result["peak_rss_bytes"] - baseline["peak_rss_bytes"],
        "plane_bytes": args.side * args.side * 8 * (3 if args.rgb else 1),
    }


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    config = {k: v for k, v in vars(args).items() if k != "out"}
    record = run_record(config, argv) | measure(args)
    print(json.dumps(record, indent=2, default=str))
    if args.out:
        write_json(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
