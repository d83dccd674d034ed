"""Masked pre-training (paper Sec. 3.2): teach the skip network to restore clean natural images
from which a random Bernoulli mask hid pixels, with the loss on the hidden pixels only.

Resumable and time-budgeted: every batch and mask is a pure function of (seed, step), so a run
resumed from a checkpoint (model, optimiser, scheduler, step) continues bit-exactly, and the
background loader can run ahead without owning any random state.
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch

from .engine.devices import precision_advice, resolve_precision
from .engine.masking import MaskMode, draw_mask, make_generator, masked_mse
from .engine.network import SkipNet, architecture_of
from .settings import Precision
from .weights import Checkpoint, load_checkpoint, read_payload, save_checkpoint

__all__ = ["PretrainConfig", "PretrainStep", "ImageCorpus", "pretrain", "masked_loss"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}
LossKind = Literal["mse", "psnr"]


@dataclass(frozen=True)
class PretrainConfig:
    """Recipe of one pre-training run (defaults follow the paper, scaled to a CPU)."""

    channels: int = 1
    mask_mode: MaskMode = "pixel"
    mask_ratios: tuple[float, float] = (0.3, 0.3)
    crop: int = 128
    batch: int = 16
    steps: int = 10000  # 0 = "auto": fit the cosine schedule to the time budget (see pretrain)
    lr: float = 2e-3
    min_lr: float = 1e-5
    weight_decay: float = 1e-2
    loss: LossKind = "mse"
    seed: int = 0
    #: "auto": bf16 autocast where the device computes bf16 natively (CUDA, CPUs with AVX-512 BF16), fp32 elsewhere;
    #: resolved when the run starts, so a checkpoint records the arithmetic it trained with.
    precision: Precision = "auto"
    checkpoint_minutes: float = 5.0
    short_side: int | None = None  # shrink larger images to this shorter side on loading
    #: channels of every convolution and skip branch of a fresh network (None: the default, 48); a run from
    #: ``init`` or ``resume`` takes its weights' width, and naming another one is refused
    width: int | None = None

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        low, high = self.mask_ratios
        if not 0.0 < low <= high < 1.0:
            raise ValueError(f"mask ratios must satisfy 0 < low <= high < 1, got {self.mask_ratios}")
        if self.crop < 32 or self.batch < 1 or self.steps < 0:
            raise ValueError("crop must be >= 32, batch >= 1 and steps >= 1 (or 0 for auto)")
        if self.short_side is not None and self.short_side < self.crop:
            raise ValueError(f"short side ({self.short_side}) must be at least the crop ({self.crop})")
        if self.loss not in ("mse", "psnr"):
            raise ValueError(f"loss must be 'mse' or 'psnr', got {self.loss!r}")
        if self.precision not in get_args(Precision):
            raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {self.precision!r}")
        if self.width is not None and not 4 <= self.width <= 256:
            raise ValueError(f"width must be 4 to 256 channels (or left out for the default network), got {self.width}")


@dataclass
class PretrainStep:
    step: int
    steps: int
    loss: float
    lr: float
    checkpointed: bool


class ImageCorpus:
    """Clean training images held in memory as uint8 (gray conversions for 1-channel models).

    Images smaller than the crop are skipped. Batches are drawn by :meth:`batch` from a seed and a
    step number only, so they are reproducible in any thread and after a resume.
    """

    def __init__(self, folder: str | Path, channels: int, crop: int, short_side: int | None = None):
        from PIL import Image  # pillow comes with scikit-image

        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"training image folder not found: {folder}")
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        self.images: list[np.ndarray] = []
        mode = "L" if channels == 1 else "RGB"
        for path in files:
            try:
                with Image.open(path) as img:
                    img = img.convert(mode)
                    if short_side is not None and min(img.size) > short_side:
                        # Downscaling removes most JPEG artefacts and sensor noise from the "clean" targets.
                        factor = short_side / min(img.size)
                        size = (max(crop, round(img.size[0] * factor)), max(crop, round(img.size[1] * factor)))
                        img = img.resize(size, Image.LANCZOS)
                    array = np.asarray(img)
            except OSError:
                continue
            if array.ndim == 2:
                array = array[..., None]
            if min(array.shape[:2]) >= crop:
                self.images.append(np.ascontiguousarray(array.transpose(2, 0, 1)))
        if not self.images:
            raise ValueError(f"no readable images of at least {crop}x{crop} pixels in {folder}")
        self.channels = channels
        self.crop = crop

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, seed: int, step: int, size: int, ratios: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
        """Random crops with random flips / 90-degree turns, and one mask ratio per sample."""
        rng = np.random.default_rng([seed, step])
        crop = self.crop
        out = np.empty((size, self.channels, crop, crop), dtype=np.float32)
        for i in range(size):
            img = self.images[rng.integers(len(self.images))]
            top = rng.integers(img.shape[1] - crop + 1)
            left = rng.integers(img.shape[2] - crop + 1)
            patch = img[:, top : top + crop, left : left + crop]
            if rng.random() < 0.5:
                patch = patch[:, :, ::-1]
            patch = np.rot90(patch, k=int(rng.integers(4)), axes=(1, 2))
            out[i] = patch / 255.0
        ratio = rng.uniform(ratios[0], ratios[1], size=size).astype(np.float32)
        return torch.from_numpy(out), torch.from_numpy(ratio)


def masked_loss(prediction: torch.Tensor, target: torch.Tensor, hidden: torch.Tensor, kind: LossKind) -> torch.Tensor:
    """MSE over hidden pixels (paper Eq. 5), or its log ("psnr", as the reference code trains)."""
    mse = masked_mse(prediction, target, hidden)
    if kind == "psnr":
        return 10.0 * torch.log10(mse + 1e-10)
    return mse


def _prefetch(
    corpus: ImageCorpus, config: PretrainConfig, start: int, depth: int = 4
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Build batches in a background thread so the compute never waits on cropping."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        for step in itertools.count(start):  # the consumer decides when to stop
            item = corpus.batch(config.seed, step, config.batch, config.mask_ratios)
            while not stop.is_set():
                try:
                    buffer.put(item, timeout=0.2)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return

    thread = threading.Thread(target=work, name="napari-mpi-pretrain-loader", daemon=True)
    thread.start()
    try:
        while True:
            yield buffer.get()
    finally:
        stop.set()
        thread.join(timeout=5)


#: With ``steps=0`` ("auto"), steps timed after the first few (warm-up) to plan the schedule.
AUTO_WARMUP_STEPS, AUTO_PROBE_STEPS = 10, 40
_UNPLANNED = 10**9  # cosine length while an "auto" run is still timing itself: lr stays ~ its start


def pretrain(
    images: str | Path,
    out: str | Path,
    config: PretrainConfig,
    *,
    resume: str | Path | None = None,
    init: str | Path | None = None,
    max_minutes: float | None = None,
    device: torch.device | str = "cpu",
    history: str | Path | None = None,
) -> Iterator[PretrainStep]:
    """Run masked pre-training, yielding after every step; checkpoints to ``out`` every
    ``config.checkpoint_minutes``, at the end, and when ``max_minutes`` runs out.

    ``config.steps == 0`` ("auto") needs ``max_minutes``: a few steps are timed, then the cosine
    schedule is planned to end as the time runs out (the planned length is saved with the checkpoint,
    so a resumed run continues that schedule). ``history`` keeps a weights-only fp16 copy of every
    checkpoint, ``<out stem>-<step>.pt``, to measure what more steps buy.

    ``init`` starts from the weights of another checkpoint (a finished run, or a shipped file) with a fresh
    optimiser and schedule: a finished cosine schedule cannot be resumed, but its weights can train on
    (a warm restart) when a longer run is affordable. Gray weights can start a colour run: they are spread
    over the channels as the fill spreads them (``Checkpoint.as_colour``).
    """
    if config.steps == 0 and max_minutes is None and resume is None:
        raise ValueError("automatic steps (steps=0) need a time budget (max_minutes)")
    if init is not None and resume is not None:
        raise ValueError("give either resume (continue a run) or init (start from its weights), not both")
    dev = torch.device(device)
    torch.manual_seed(config.seed)
    payload = read_payload(resume) if resume is not None else None
    start_weights, earlier_steps = _start_weights(init, config.channels)
    model, optimizer, scheduler = _build(config, dev, payload, start_weights)
    start, elapsed_before = 0, 0.0
    if start_weights is not None:
        model.load_state_dict(start_weights.state_dict)
    if payload is not None:
        config, start, elapsed_before = _restore(resume, payload, config, model, optimizer, scheduler, max_minutes)
    config = _resolved_precision(config, dev)
    if dev.type == "cpu" or dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model.train()
    corpus = ImageCorpus(images, config.channels, config.crop, config.short_side)
    run = _Run(config, model, optimizer, scheduler, corpus, dev, start, elapsed_before)
    output = _Output(Path(out), images, init, start_weights, earlier_steps, history, _hardware(dev))
    yield from _train(run, output, max_minutes)


def _start_weights(init: str | Path | None, channels: int) -> tuple[Checkpoint | None, int]:
    """The checkpoint ``init`` names, as ``channels`` channels (gray weights spread over colour ones), and
    the steps that made it (its own and those of the runs it started from)."""
    start_weights = load_checkpoint(init) if init is not None else None
    if start_weights is not None and start_weights.channels == 1 and channels == 3:
        start_weights = start_weights.as_colour()  # a colour run from gray weights: the fill's colour start
    if start_weights is not None and start_weights.channels != channels:
        raise ValueError(f"{init} has {start_weights.channels} channel(s); this run trains {channels}")
    earlier_steps = 0
    if start_weights is not None:
        earlier = start_weights.metadata
        earlier_steps = int(earlier.get("steps", 0)) + int(earlier.get("earlier_steps", 0))
    return start_weights, earlier_steps


def _resolved_precision(config: PretrainConfig, dev: torch.device) -> PretrainConfig:
    """``config`` with "auto" precision made concrete for ``dev``; a warning when bf16 would be emulated."""
    advice = precision_advice(config.precision, dev)
    if advice is not None:
        warnings.warn(advice, stacklevel=3)
    return replace(config, precision=resolve_precision(config.precision, dev))


def _build(
    config: PretrainConfig, dev: torch.device, payload: dict | None, start_weights: Checkpoint | None
) -> tuple[SkipNet, torch.optim.Optimizer, torch.optim.lr_scheduler.CosineAnnealingLR]:
    """The network (seeded by the caller), its AdamW optimiser and cosine learning-rate schedule."""
    # a resumed (or warm-started) run keeps the width it was started with, even after the default network changed
    if payload is not None:
        architecture = architecture_of(payload["state_dict"])
    elif start_weights is not None:
        architecture = architecture_of(start_weights.state_dict)
    else:
        architecture = {} if config.width is None else {"width": config.width, "skip_width": config.width}
    if architecture and config.width is not None and (architecture["width"], architecture["skip_width"]) != (
        config.width, config.width
    ):
        raise ValueError(f"the starting weights hold a {architecture['width']}/{architecture['skip_width']}-channel "
                         f"network, not {config.width}/{config.width}; leave the width out to train at theirs")
    model = SkipNet(2 * config.channels, config.channels, **architecture).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.9), weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.steps or _UNPLANNED, eta_min=config.min_lr
    )
    return model, optimizer, scheduler


def _restore(
    resume: str | Path,
    payload: dict,
    config: PretrainConfig,
    model: SkipNet,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.CosineAnnealingLR,
    max_minutes: float | None,
) -> tuple[PretrainConfig, int, float]:
    """Load a checkpoint's training state into the run: (its config, the step, the seconds it trained)."""
    training = payload.get("training")
    if not training:
        raise ValueError(f"{resume} holds no training state (a shipped checkpoint?): cannot resume from it")
    saved = PretrainConfig(**{**training["config"], "mask_ratios": tuple(training["config"]["mask_ratios"])})
    if config.steps == 0:
        config = replace(config, steps=saved.steps)  # "auto" keeps the schedule the run planned
    if config.precision == "auto":
        config = replace(config, precision=saved.precision)  # and the arithmetic it started with
    if config.width is None or saved.width is None:  # and its network (_build checked a width named with it)
        config = replace(config, width=saved.width)
    if replace(saved, checkpoint_minutes=config.checkpoint_minutes) != config:
        raise ValueError(f"{resume} was trained with a different recipe: {saved}; resume with the same options")
    model.load_state_dict(payload["state_dict"])
    optimizer.load_state_dict(training["optimizer"])
    scheduler.load_state_dict(training["scheduler"])
    start, elapsed_before = int(training["step"]), float(training.get("seconds", 0.0))
    if config.steps == 0 and max_minutes is None:
        raise ValueError(f"{resume} stopped before it planned its steps: resume it with a time budget")
    return config, start, elapsed_before


@dataclass
class _Run:
    """What a pre-training run changes from step to step, and the clock it keeps."""

    config: PretrainConfig
    model: SkipNet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.CosineAnnealingLR
    corpus: ImageCorpus
    device: torch.device
    start: int  # the step this call started from (0, or a resumed run's step)
    elapsed_before: float  # seconds trained before this call (a resumed run)
    step: int = field(init=False)
    t0: float = field(init=False)
    last_save: float = field(init=False)
    probe_start: float = field(init=False)

    def __post_init__(self) -> None:
        self.step = self.start
        self.t0 = self.last_save = self.probe_start = time.monotonic()

    def seconds(self) -> float:
        """Seconds trained so far, earlier calls included."""
        return self.elapsed_before + time.monotonic() - self.t0


@dataclass(frozen=True)
class _Output:
    """Where a run's checkpoints go, and what their metadata say about where it started."""

    out: Path
    images: str | Path
    init: str | Path | None
    start_weights: Checkpoint | None
    earlier_steps: int
    history: str | Path | None
    hardware: str


def _train(run: _Run, output: _Output, max_minutes: float | None) -> Iterator[PretrainStep]:
    """The training loop: one step per batch, the "auto" plan, checkpoints, and a record per step."""
    config, dev = run.config, run.device
    autocast = torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
    clip = 0.01 if config.loss == "psnr" else None  # the reference code's setting for its log loss
    batches = _prefetch(run.corpus, config, run.start)
    try:
        for clean, ratios in batches:
            if run.config.steps and run.step >= run.config.steps:
                return
            loss_value = _step(run, clean, ratios, autocast, clip)
            now = time.monotonic()
            if run.config.steps == 0:  # "auto": time a few steps, then plan the schedule to end with the budget
                _plan(run, now, max_minutes)
            out_of_time = max_minutes is not None and now - run.t0 >= max_minutes * 60
            due = now - run.last_save >= run.config.checkpoint_minutes * 60 or run.step == run.config.steps
            due = due or out_of_time
            if due:
                _checkpoint(run, output, loss_value)
                run.last_save = now
            yield PretrainStep(run.step, run.config.steps, loss_value, run.scheduler.get_last_lr()[0], due)
            if out_of_time or run.step == run.config.steps:
                return
    finally:
        batches.close()


def _step(run: _Run, clean: torch.Tensor, ratios: torch.Tensor, autocast: torch.autocast, clip: float | None) -> float:
    """One optimiser step on a batch, its mask drawn from (seed, step); the loss, checked to be finite."""
    config, dev, model = run.config, run.device, run.model
    clean = clean.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
    gen = make_generator(config.seed * 1_000_003 + run.step, dev)
    keep = draw_mask(clean.shape, ratios, config.mask_mode, gen, dev)
    hidden = 1.0 - keep
    with autocast:
        prediction = model(torch.cat([clean * keep, keep], dim=1))
    loss = masked_loss(prediction.float(), clean, hidden, config.loss)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    run.optimizer.step()
    run.scheduler.step()
    run.step += 1
    loss_value = float(loss.detach())
    if not math.isfinite(loss_value):
        raise RuntimeError(f"pre-training diverged at step {run.step} (loss {loss_value}); lower the learning rate")
    return loss_value


def _plan(run: _Run, now: float, max_minutes: float) -> None:
    """An "auto" run: start timing after the warm-up steps; after the probe steps, fit the schedule to the time left."""
    done = run.step - run.start
    if done == AUTO_WARMUP_STEPS:
        run.probe_start = now
    elif done == AUTO_WARMUP_STEPS + AUTO_PROBE_STEPS:
        per_step = (now - run.probe_start) / AUTO_PROBE_STEPS
        remaining = max_minutes * 60 - (now - run.t0)
        run.config = replace(run.config, steps=run.step + max(1, int(0.98 * remaining / per_step)))
        run.scheduler.T_max = run.config.steps


def _checkpoint(run: _Run, output: _Output, loss: float) -> None:
    """Save the run, resumable, to ``output.out`` (and a weights-only fp16 copy to the history folder)."""
    config, model = run.config, run.model
    common = dict(channels=config.channels, mask_mode=config.mask_mode, mask_ratios=config.mask_ratios,
                  metadata=_metadata(run, output, loss))
    save_checkpoint(
        output.out,
        model.state_dict(),
        training={
            "config": {**asdict(config), "mask_ratios": list(config.mask_ratios)},
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "step": run.step,
            "seconds": run.seconds(),
        },
        **common,
    )
    if output.history is not None:
        history_path = Path(output.history) / f"{output.out.stem}-{run.step}.pt"
        save_checkpoint(history_path, model.state_dict(), half=True, **common)


def _metadata(run: _Run, output: _Output, loss: float) -> dict:
    """What a checkpoint says about the run that made it."""
    config = run.config
    metadata = {
        "data": str(output.images),
        "images": len(run.corpus),
        "steps": run.step,
        "planned_steps": config.steps,
        "batch": config.batch,
        "crop": config.crop,
        "short_side": config.short_side,
        "loss": config.loss,
        "last_loss": loss,
        "precision": config.precision,
        "network": architecture_of(run.model.state_dict()),
        "seconds": round(run.seconds(), 1),
        "hardware": output.hardware,
        "torch": str(torch.__version__),
    }
    if output.start_weights is not None:
        metadata.update(initialised_from=Path(output.init).name, earlier_steps=output.earlier_steps,
                        initialised_as_colour=output.start_weights.from_gray)
    return metadata


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import os
    import platform

    processor = platform.processor() or platform.machine()
    return f"{processor} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
