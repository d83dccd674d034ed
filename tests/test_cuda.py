"""CUDA paths: device choice, a real fill on the GPU, memory freed afterwards, a real out-of-memory
error turned into a clear message. Skipped where there is no CUDA GPU (as on CI); run on a GPU
machine with ``pytest tests/test_cuda.py``."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import napari_mpi
from napari_mpi.engine.cuda_graph import CudaGraphStep
from napari_mpi.engine.devices import available_devices, resolve_device, resolve_precision
from napari_mpi.engine.fill import continuation_steps
from napari_mpi.settings import FillConfig

from .conftest import psnr

DEFAULTS = FillConfig()

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_auto_picks_cuda_and_bf16():
    assert "cuda" in available_devices()
    device = resolve_device("auto")
    assert device.type == "cuda"
    assert resolve_precision("auto", device) == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")


def test_fill_on_gpu_denoises_like_the_cpu(camera_crop):
    noisy = camera_crop + np.random.default_rng(0).normal(0, 25 / 255, camera_crop.shape).astype(np.float32)
    on_gpu = napari_mpi.denoise(noisy, iterations=100, device="cuda", seed=0)
    on_cpu = napari_mpi.denoise(noisy, iterations=100, device="cpu", seed=0)
    gain_gpu = psnr(on_gpu, camera_crop) - psnr(noisy, camera_crop)
    gain_cpu = psnr(on_cpu, camera_crop) - psnr(noisy, camera_crop)
    assert gain_gpu >= 4.0
    assert abs(gain_gpu - gain_cpu) < 1.0  # different kernels and masks' streams, same method


def test_gpu_memory_is_freed_after_a_run(camera_crop):
    torch.cuda.synchronize()
    allocated, reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    napari_mpi.denoise(np.stack([camera_crop] * 2), iterations=5, device="cuda")
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == allocated
    assert torch.cuda.memory_reserved() <= reserved + (2 << 20)  # the cache was emptied (one small block may stay)


@pytest.fixture
def replays(monkeypatch) -> list[int]:
    """Counts the replays of the captured fill step."""
    counted: list[int] = []
    replay = CudaGraphStep.__call__

    def counting(self, keep, weight):
        counted.append(1)
        return replay(self, keep, weight)

    monkeypatch.setattr(CudaGraphStep, "__call__", counting)
    return counted


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_cuda_graph_trains_like_the_eager_step(camera_crop, replays, precision):
    noisy = camera_crop + np.random.default_rng(0).normal(0, 25 / 255, camera_crop.shape).astype(np.float32)
    graphed = napari_mpi.denoise(noisy, iterations=60, device="cuda", seed=0, precision=precision)
    assert len(replays) == 60 - DEFAULTS.cuda_graph_warmup
    eager = napari_mpi.denoise(noisy, iterations=60, device="cuda", seed=0, precision=precision,
                               tuning={"cuda_graphs": False})
    assert len(replays) == 60 - DEFAULTS.cuda_graph_warmup  # none more: the switch turns it off
    # same masks, same arithmetic up to the order of floating-point sums
    assert abs(psnr(graphed, camera_crop) - psnr(eager, camera_crop)) < 0.1
    assert float(np.abs(graphed - eager).mean()) < 0.005


def test_the_auto_preset_replays_the_graph_with_its_held_out_pixels(camera_crop, replays):
    noisy = camera_crop + np.random.default_rng(1).normal(0, 25 / 255, camera_crop.shape).astype(np.float32)
    out = napari_mpi.denoise(noisy, preset="auto", device="cuda", seed=0)
    assert replays and psnr(out, camera_crop) - psnr(noisy, camera_crop) >= 4.0


def test_a_stack_reusing_its_network_replays_one_graph_and_frees_it(camera_crop, replays):
    stack = np.stack([camera_crop, camera_crop[::-1], camera_crop[:, ::-1]])
    torch.cuda.synchronize()
    allocated = torch.cuda.memory_allocated()
    out = napari_mpi.denoise(stack, iterations=40, device="cuda", reuse_network=True)
    assert len(replays) == (40 - DEFAULTS.cuda_graph_warmup) + 2 * continuation_steps(FillConfig(iterations=40))
    assert np.isfinite(out).all() and out.shape == stack.shape
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == allocated  # the graph's memory pool went with the run


def test_short_fills_stay_eager(camera_crop, replays):
    napari_mpi.denoise(camera_crop, iterations=DEFAULTS.cuda_graph_min_steps - 1, device="cuda")
    assert replays == []


OUT_OF_MEMORY = """
import numpy as np, torch, napari_mpi
image = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
napari_mpi.denoise(image[:64, :64], iterations=2, device="cuda")  # CUDA loads kernels lazily, into GPU memory
torch.cuda.synchronize()
before = torch.cuda.memory_allocated()
free, _ = torch.cuda.mem_get_info()
ballast = torch.empty(max(0, free - (64 << 20)), dtype=torch.uint8, device="cuda")  # leave ~64 MB free
try:
    napari_mpi.denoise(image, iterations=2, device="cuda")
except MemoryError as exc:
    print("MemoryError:", exc)
print("left behind:", torch.cuda.memory_allocated() - before - ballast.numel())
small = napari_mpi.denoise(image[:64, :64], iterations=2, device="cuda")  # still runs in what is left
print("small run finite:", bool(np.isfinite(small).all()))
"""


def test_out_of_gpu_memory_is_a_clear_error_and_frees_memory():
    # In a subprocess: the GPU is filled to the brim there, and a hang cannot take pytest with it.
    done = subprocess.run([sys.executable, "-c", OUT_OF_MEMORY], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "MemoryError: CUDA ran out of memory on a 2048x2048 plane" in done.stdout
    assert "left behind: 0" in done.stdout
    assert "small run finite: True" in done.stdout


def test_pretraining_runs_on_gpu(tmp_path):
    from skimage import data, io

    from napari_mpi.pretrain import PretrainConfig, pretrain

    folder = tmp_path / "images"
    folder.mkdir()
    io.imsave(folder / "astronaut.png", data.astronaut())
    config = PretrainConfig(crop=64, batch=4, steps=3, precision="bf16")
    records = list(pretrain(folder, tmp_path / "gray.pt", config, device="cuda"))
    assert [r.step for r in records] == [1, 2, 3] and np.isfinite(records[-1].loss)
    out = napari_mpi.denoise(data.camera()[:64, :64], iterations=3, weights=tmp_path / "gray.pt", device="cuda")
    assert out.shape == (64, 64)


def test_the_wiener_refinement_on_gpu_matches_the_cpu(camera_crop):
    from napari_mpi.engine.refine import refine_estimate

    rng = np.random.default_rng(4)
    noisy = torch.from_numpy((camera_crop + rng.normal(0, 0.1, camera_crop.shape)).astype(np.float32))[None]
    pilot = torch.from_numpy(camera_crop)[None]
    on_cpu, _ = refine_estimate(noisy, pilot)
    on_gpu, _ = refine_estimate(noisy.cuda(), pilot.cuda())
    assert on_gpu.device.type == "cuda"
    # other kernels may order tied block distances differently: compare the quality, not every pixel
    assert abs(psnr(on_gpu[0].cpu().numpy(), camera_crop) - psnr(on_cpu[0].numpy(), camera_crop)) < 0.05


def test_auto_keeps_whole_planes_on_the_gpu_and_an_asked_crop_fill_runs_there():
    from skimage import data

    assert napari_mpi.prepare((512, 512), np.float32, device="cuda").crop == 0  # launch-bound: windows not used
    clean = data.camera()[128:384, 64:448].astype(np.float32) / 255.0  # 256x384
    noisy = clean + np.random.default_rng(0).normal(0, 25 / 255, clean.shape).astype(np.float32)
    on_gpu = napari_mpi.denoise(noisy, iterations=60, device="cuda", crop=128)
    on_cpu = napari_mpi.denoise(noisy, iterations=60, device="cpu", crop=128)
    assert psnr(on_gpu, clean) - psnr(noisy, clean) >= 4.0
    assert abs(psnr(on_gpu, clean) - psnr(on_cpu, clean)) < 1.0
