"""Collaborative Wiener refinement: the fill's estimate as the pilot of a block-matching Wiener filter.

The fill's estimate is smooth where the network is sure and keeps little texture where it is not. The
second stage of BM3D (Dabov et al., "Image denoising by sparse 3-D transform-domain collaborative
filtering", IEEE TIP 2007) turns a pilot estimate into a better one: it groups blocks that look alike in
the pilot, and shrinks each group's 3-D transform coefficients *of the noisy image* by the empirical
Wiener factor ``pilot**2 / (pilot**2 + noise variance)``. The noise variance comes from the same pair:
a Poisson-Gaussian model ``var = a * signal + b`` fitted to the residual ``noisy - pilot``, so no clean
image, noise level or camera gain is needed, and bright and dark regions get their own variance
(fluorescence noise is mostly shot noise). This is our own torch implementation (no block-matching
library), so it runs wherever the fill runs, CPU or CUDA (Apple MPS has no float64: the CPU there), in
bounded memory.

Pure torch / numpy: no Qt, no napari.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "REFINE_MODES", "NoiseModel", "fit_noise_model", "collaborative_wiener", "refine_estimate",
    "resolve_refine",
]

#: "auto": "wiener" up to ``FillConfig.refine_max_mask_ratio``, else "none" (the default); "wiener": the
#: collaborative Wiener filter after the fill; "none": the fill's estimate as is. The filter assumes noise
#: independent from pixel to pixel, and a high mask ratio is how a user says the noise is spatially correlated.
REFINE_MODES = ("auto", "wiener", "none")

BLOCK = 8  #: block side in pixels (BM3D's Wiener stage: 8)
GROUP = 16  #: blocks per group, the reference included
SEARCH_RADIUS = 12  #: blocks are sought within +-SEARCH_RADIUS pixels of the reference
STEP = 3  #: pixels between reference blocks
KAISER_BETA = 2.0  #: aggregation window, as BM3D
#: (H x W x displacements) elements the matching holds at once; bounds its memory (float32: x 4 bytes, a few times over)
MATCH_BUDGET = 1 << 22  # smaller batches stay in cache: 2.5x faster at 1024x1024 than 1 << 24
#: references per batch of the filtering; bounds its memory (x GROUP x BLOCK**2 x channels x 4 bytes x ~6)
REFERENCE_BATCH = 4096

# An orthonormal colour transform (luminance, red-green, blue-yellow): white noise stays white and equal in
# each channel, and the blocks are matched on the luminance, where the signal is strongest (as CBM3D).
_OPPONENT = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, -1.0], [1.0, -2.0, 1.0]], dtype=torch.float64)
_OPPONENT = _OPPONENT / _OPPONENT.norm(dim=1, keepdim=True)


@dataclass(frozen=True)
class NoiseModel:
    """Noise variance ``a * signal + b`` in the fill's normalised units, fitted without a clean image."""

    a: float
    b: float

    def variance(self, signal: torch.Tensor) -> torch.Tensor:
        return (self.a * signal.clamp_min(0) + self.b).clamp_min(1e-12)


NOISE_BINS = 16  #: intensity bins of the noise model fit


def fit_noise_model(noisy: torch.Tensor, pilot: torch.Tensor) -> NoiseModel:
    """Fit ``var = a * pilot + b`` (a, b >= 0) to the residual ``noisy - pilot``, over all pixels and channels.

    The fill predicts each pixel from masks that hid it, so its residual holds the pixel's noise (plus the
    estimate's own error). The pixels are split into NOISE_BINS bins of equal count by pilot intensity;
    each bin's variance is the robust one of its residual, (1.4826 x median absolute deviation)**2, so that
    hot pixels, defects and the estimate's errors at edges do not inflate it; a line is then fitted to the
    bins by least squares.
    """
    x = pilot.detach().double().flatten()
    r = noisy.detach().double().flatten() - x
    order = torch.argsort(x)
    centres, variances = [], []
    for chunk in torch.tensor_split(order, min(NOISE_BINS, max(1, x.numel() // 64))):
        if chunk.numel() == 0:
            continue
        residual = r[chunk]
        deviation = (residual - residual.median()).abs().median()
        centres.append(x[chunk].median())
        variances.append((1.4826 * deviation) ** 2)
    xs, vs = torch.stack(centres), torch.stack(variances)
    n = float(xs.numel())
    sx, sxx, sv, sxv = xs.sum(), (xs * xs).sum(), vs.sum(), (xs * vs).sum()
    det = n * sxx - sx * sx
    a = float((n * sxv - sx * sv) / det) if det > 1e-30 else 0.0
    b = float((sv - a * sx) / n)
    if a < 0:  # no signal dependence: constant variance
        a, b = 0.0, float(vs.mean())
    elif b < 0:  # pure shot noise: variance proportional to the signal
        a, b = float(sxv / sxx) if sxx > 0 else 0.0, 0.0
    return NoiseModel(a, b)


def _dct_matrix(n: int, device, dtype) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64)
    matrix = torch.cos(math.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * math.sqrt(2.0 / n)
    matrix[0] /= math.sqrt(2.0)
    return matrix.to(device=device, dtype=dtype)


def _reference_positions(size: int, block: int, step: int) -> torch.Tensor:
    """Top-left coordinates of reference blocks along one side: every ``step``, and the last block."""
    last = size - block
    positions = list(range(0, last + 1, step))
    if positions[-1] != last:
        positions.append(last)
    return torch.tensor(positions, dtype=torch.long)


def _match_blocks(guide: torch.Tensor, ref_i: torch.Tensor, ref_j: torch.Tensor, block: int, group: int,
                  radius: int) -> torch.Tensor:
    """For each reference block, the top-left flat indices of the ``group`` most alike blocks in ``guide``.

    Alike means the smallest sum of squared differences over the block, searched within +-``radius``
    pixels; the reference itself comes first. The distance between the blocks at p and p + d is also the
    one between p + d and p, so one map of block distances per displacement d serves the references'
    candidates at +d and at -d: half the displacements are computed. Block sums come from running sums along
    each axis in turn (float32: a separable box filter, 3-4x faster than the float64 integral image it
    replaced and picking the same blocks up to near-ties, as no running sum spans both axes), a batch of
    displacements at a time, and a running top-k keeps memory at O(references x group).
    """
    height, width = guide.shape
    g = guide.float()
    padded = torch.nn.functional.pad(g[None, None], (radius, radius, radius, radius), mode="replicate")[0, 0]
    device = g.device
    best_d = torch.zeros((ref_i.numel(), 1), dtype=torch.float32, device=device)
    best_idx = (ref_i * width + ref_j)[:, None]
    chunk = max(1, min(2 * radius + 1, MATCH_BUDGET // max(1, height * width)))
    for dy in range(0, radius + 1):
        shifts = torch.arange(1 if dy == 0 else -radius, radius + 1, device=device)  # d and -d: one of each pair
        rows = padded[radius + dy: radius + dy + height]
        for start in range(0, shifts.numel(), chunk):
            dxs = shifts[start:start + chunk]
            shifted = torch.stack([rows[:, radius + int(dx): radius + int(dx) + width] for dx in dxs])
            boxes = _box_sums((g[None] - shifted) ** 2, block)  # (dx, H - block + 1, W - block + 1)
            k = torch.arange(dxs.numel(), device=device)[:, None]
            distances, candidates = [best_d], [best_idx]
            for sign in (1, -1):  # candidates at reference + d, then at reference - d
                cand_i = (ref_i + sign * dy)[None, :]
                cand_j = ref_j[None, :] + sign * dxs[:, None]
                valid = (cand_i >= 0) & (cand_i <= height - block) & (cand_j >= 0) & (cand_j <= width - block)
                # the distance map is indexed by the first block of the pair (p, p + d)
                i0 = (ref_i[None, :] if sign == 1 else cand_i).clamp(0, height - block)
                j0 = (ref_j[None, :] if sign == 1 else cand_j).clamp(0, width - block)
                sums = boxes[k, i0, j0]  # (dx, ref)
                sums = torch.where(valid, sums, torch.full_like(sums, math.inf))
                distances.append(sums.T)
                candidates.append((cand_i.clamp(0, height - block) * width + cand_j.clamp(0, width - block)).T)
            all_d, all_idx = torch.cat(distances, dim=1), torch.cat(candidates, dim=1)
            best_d, order = torch.topk(all_d, min(group, all_d.shape[1]), dim=1, largest=False)
            best_idx = torch.gather(all_idx, 1, order)
    return best_idx


def _box_sums(values: torch.Tensor, block: int) -> torch.Tensor:
    """Sums of ``values`` (N, H, W) over every block x block window: (N, H - block + 1, W - block + 1)."""
    rows = torch.nn.functional.pad(values.cumsum(2), (1, 0))
    rows = rows[..., block:] - rows[..., :-block]
    columns = torch.nn.functional.pad(rows.cumsum(1), (0, 0, 1, 0))
    return columns[:, block:] - columns[:, :-block]


def _kaiser(block: int, beta: float, device, dtype) -> torch.Tensor:
    window = torch.kaiser_window(block, periodic=False, beta=beta, dtype=torch.float64)
    return torch.outer(window, window).flatten().to(device=device, dtype=dtype)


def _filter_groups(matches: torch.Tensor, flat: tuple, numerator: torch.Tensor, denominator: torch.Tensor,
                   block: int, width: int) -> None:
    """Wiener-filter the groups whose blocks start at ``matches`` (n, group) and add them to the aggregation."""
    flat_noisy, flat_pilot, flat_var = flat
    device, dtype = flat_noisy.device, flat_noisy.dtype
    group = matches.shape[1]
    span = torch.arange(block, device=device)
    offsets = (span[:, None] * width + span[None, :]).flatten()
    basis_2d = torch.kron(_dct_matrix(block, device, dtype), _dct_matrix(block, device, dtype))  # (b*b, b*b)
    basis_group = _dct_matrix(group, device, dtype)  # (group, group)
    kaiser = _kaiser(block, KAISER_BETA, device, dtype)
    for start in range(0, matches.shape[0], REFERENCE_BATCH):
        pixels = matches[start:start + REFERENCE_BATCH, :, None] + offsets  # (n, group, b*b)
        group_var = flat_var[pixels].mean(dim=(1, 2))[:, None, None]  # (n, 1, 1)
        flat_pixels = pixels.flatten()
        for c in range(flat_noisy.shape[0]):
            spectrum_noisy = basis_group @ (flat_noisy[c][pixels] @ basis_2d.T)
            spectrum_pilot = basis_group @ (flat_pilot[c][pixels] @ basis_2d.T)
            power = spectrum_pilot**2
            gain = power / (power + group_var)
            blocks = basis_group.T @ (gain * spectrum_noisy) @ basis_2d  # back to (n, group, b*b) pixels
            weight = 1.0 / (group_var * (gain**2).sum(dim=(1, 2), keepdim=True)).clamp_min(1e-12)
            window = weight * kaiser  # (n, 1, b*b)
            numerator[c].index_add_(0, flat_pixels, (blocks * window).flatten())
            denominator[c].index_add_(0, flat_pixels, window.expand_as(blocks).flatten())


def collaborative_wiener(
    noisy: torch.Tensor, pilot: torch.Tensor, variance: torch.Tensor, *, block: int = BLOCK, group: int = GROUP,
    radius: int = SEARCH_RADIUS, step: int = STEP,
) -> torch.Tensor:
    """BM3D's Wiener stage on (C, H, W) tensors: blocks matched on channel 0 of ``pilot``, filtered per channel.

    ``variance`` (H, W) is the per-pixel noise variance; each group uses the mean over its blocks.
    The noise is taken as white (independent from pixel to pixel): see ``FillConfig.refine_max_mask_ratio``.
    Planes smaller than a block are returned as the pilot.
    """
    channels, height, width = noisy.shape
    if height < block or width < block:
        return pilot.clone()
    device, dtype = noisy.device, torch.float32
    ref_i_axis = _reference_positions(height, block, step).to(device)
    ref_j_axis = _reference_positions(width, block, step).to(device)
    ref_i = ref_i_axis[:, None].expand(-1, ref_j_axis.numel()).flatten()
    ref_j = ref_j_axis[None, :].expand(ref_i_axis.numel(), -1).flatten()
    group = min(group, (height - block + 1) * (width - block + 1))
    matches = _match_blocks(pilot[0], ref_i, ref_j, block, group, radius)  # (n_ref, group) top-left flat indices
    numerator = torch.zeros((channels, height * width), dtype=dtype, device=device)
    denominator = torch.zeros((channels, height * width), dtype=dtype, device=device)
    flat = (noisy.to(dtype).reshape(channels, -1), pilot.to(dtype).reshape(channels, -1), variance.to(dtype).flatten())
    _filter_groups(matches, flat, numerator, denominator, block, width)
    out = numerator / denominator.clamp_min(1e-30)
    covered = denominator > 0
    out = torch.where(covered, out, flat[1])
    return out.reshape(channels, height, width).to(pilot.dtype)


def refine_estimate(noisy: torch.Tensor, estimate: torch.Tensor, *, colour: bool = False, fill_weight: float = 0.0,
                    **options) -> tuple[torch.Tensor, NoiseModel]:
    """The fill's ``estimate`` of ``noisy`` (both (C, H, W), normalised units) refined by :func:`collaborative_wiener`.

    Colour (C = 3) is filtered in an orthonormal opponent space with blocks matched on its luminance;
    other channel counts filter each channel with its own matches. The result is ``(1 - fill_weight)`` x the
    filter's output + ``fill_weight`` x ``estimate`` (``FillConfig.refine_fill_weight``; 0 = the filter's output).
    ``options`` go to ``collaborative_wiener``.
    """
    if estimate.device.type == "mps":  # the noise model is fitted in float64, which MPS lacks
        refined, model = refine_estimate(noisy.cpu(), estimate.cpu(), colour=colour, fill_weight=fill_weight,
                                         **options)
        return refined.to(estimate.device), model
    noisy = noisy.detach().float()
    estimate = estimate.detach().float()
    model = fit_noise_model(noisy, estimate)
    if colour and noisy.shape[0] == 3:
        variance = model.variance(estimate.mean(dim=0))
        opponent = _OPPONENT.to(device=noisy.device, dtype=noisy.dtype)
        to_opp = lambda t: torch.einsum("kc,chw->khw", opponent, t)  # noqa: E731
        refined = collaborative_wiener(to_opp(noisy), to_opp(estimate), variance, **options)
        refined = torch.einsum("kc,khw->chw", opponent, refined)
    else:
        refined = torch.cat([collaborative_wiener(noisy[c:c + 1], estimate[c:c + 1], model.variance(estimate[c]),
                                                  **options) for c in range(noisy.shape[0])])
    if fill_weight:
        refined = torch.lerp(refined, estimate, fill_weight)
    return refined, model


def resolve_refine(refine: str, mask_ratio: float, max_mask_ratio: float) -> str:
    """"wiener" or "none": what ``refine`` (one of REFINE_MODES) does at ``mask_ratio`` ("auto": "wiener" up to
    ``max_mask_ratio``); ValueError otherwise."""
    if refine not in REFINE_MODES:
        raise ValueError(f"refine must be one of {', '.join(map(repr, REFINE_MODES))}, got {refine!r}")
    if refine == "auto":
        return "wiener" if mask_ratio <= max_mask_ratio else "none"
    return refine
