"""Is an image's noise correlated between neighbouring pixels? A per-image test from the noisy image alone.

The denoiser wants mask ratio 0.85 for spatially correlated noise (camera noise, white noise seen through a
blur) and 0.3 for pixel-independent noise (Gaussian, Poisson, Poisson-Gaussian). A previous statistic (the
Haar-sigma ratio of ``correlated_noise.py``) could not tell correlated noise from a clean image's own fine
structure. This one looks only where the signal is weakest and checks that what it sees there behaves like noise:

1. cut each plane into 8x8 blocks and remove a least-squares plane (a + bx + cy) from each block;
2. sort the blocks into 8 intensity bins (quantiles of the block means: Poisson noise grows with intensity) and
   keep, per bin, the quarter of the blocks with the smallest residual variance (the flattest ones);
3. ``r1``: the median over the kept blocks of the residuals' lag-1 autocorrelation (horizontal and vertical
   averaged). White noise gives about -0.05 (the detrending), Gaussian-filtered noise of sigma 0.7 about 0.39,
   of sigma 1 about 0.55, the FMD widefield camera 0.43;
4. two checks that the kept residual is noise, not signal, each shrinking ``r1`` towards 0:
   amplitude ``a`` = median over bins of the kept blocks' residual std / the plane's 0.1-99.9 percentile range
   (score times min(1, a / 0.012): nearly clean images have little left in their flattest blocks), and
   homogeneity ``h`` = median over bins of the 25th / 5th percentile of the block variances (noise is about as
   strong in every flat block of a bin, 1.2-1.5; texture and edges spread it, 2-12; exactly repeated blocks
   give 1.0): score times min(1, 1.6 / h) and min(1, (h - 1) / 0.2).

``napari_mpi.noise.noise_correlation`` (the statistic, moved into the package) averages that score over the
planes of an RGB image; above ``CORRELATED_NOISE_THRESHOLD`` the noise is called correlated. The study prints, for
each group of test images, the score's range and the misclassified cases (expected: 'corr' = must fire, 'white' =
must not), then the time per 512x512 image. ``--false-calls`` instead denoises the clean images it wrongly calls
correlated at mask ratios 0.3 and 0.85: what a false call would cost.

    OMP_NUM_THREADS=1 python benchmarks/noise_correlation_study.py [--data DIR]
    OMP_NUM_THREADS=1 python benchmarks/noise_correlation_study.py --false-calls
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import zlib
from pathlib import Path

import numpy as np

from napari_mpi.noise import CORRELATED_NOISE_THRESHOLD as THRESHOLD
from napari_mpi.noise import noise_correlation

# ------------------------------------------------------------------------------------------------ the study


def _correlated(rng, shape, sigma, std, rgb=False):
    from scipy.ndimage import gaussian_filter

    noise = rng.standard_normal(shape)
    noise = np.stack([gaussian_filter(noise[..., c], sigma) for c in range(3)], -1) if rgb else gaussian_filter(noise, sigma)
    return noise * (std / noise.std())


def _rng(tag: str):
    return np.random.default_rng(zlib.crc32(tag.encode()))


SKIMAGE = ("camera", "astronaut", "coins", "moon", "brick", "gravel", "grass", "text", "page", "cell", "chelsea",
           "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "checkerboard", "clock", "retina",
           "colorwheel", "cat")


def cases(root: Path):
    """(group, name, image, rgb, expected correlated?) for every test image."""
    from datasets import center_crop, load
    from scipy.ndimage import gaussian_filter
    from skimage.color import rgb2gray
    from skimage.io import imread

    sets = [("fmd-confocal", 256, 19), ("fmd-nd", 256, None), ("gigadb", 256, None), ("kodak-poisson30", 256, 10),
            ("kodak-gauss25", 256, 10), ("cbsd68-gauss25", 256, 10), ("fmd-confocal", None, 4), ("fmd-nd", None, None),
            ("gigadb", None, None)]
    for dataset, crop, limit in sets:
        for s in load(dataset, root, crop=crop, limit=limit):
            pairs = [(f"{s.name}[{i}]", s.noisy[i], s.clean[i]) for i in range(len(s.noisy))] if s.kind == "stack" \
                else [(s.name, s.noisy, s.clean)]
            rgb = s.kind == "rgb"
            for name, noisy, clean in pairs:
                tag = f"{dataset}{'' if crop else '/full'}:{name}"
                corr = "WideField" in name
                real = dataset in ("gigadb", "fmd-nd")
                yield ("1 noisy, correlated (WideField)" if corr else "1 noisy, white", tag, noisy, rgb, corr)
                if real:
                    yield ("6 real microscope noisy (= in 1)", tag, noisy, rgb, corr)
                yield ("2 clean (ground truth)", tag, clean, rgb, False)
                span = float(clean.max() - clean.min())
                for level in (0.01, 0.02):
                    noise = _rng(tag + str(level)).normal(0, level * span, clean.shape)
                    yield ("3 clean + white 1-2% of range", f"{tag}+w{level}", clean + noise, rgb, False)
    for s in load("kodak-poisson30", root, crop=256, limit=10):
        for sigma in (0.7, 1.0):
            for std in (0.05, 0.1):
                tag = f"{s.name} s{sigma} std{std}"
                yield ("4 kodak gray + blurred noise", tag, s.clean + _correlated(_rng(tag), s.clean.shape, sigma, std), False, True)
    for crop, limit in ((256, 19), (None, 4)):
        for s in load("fmd-confocal", root, crop=crop, limit=limit):
            clean = s.clean.astype(np.float64)
            peak = 30 / clean.max()
            tag = f"{s.name}{'' if crop else '/full'}"
            noisy = gaussian_filter(_rng(tag).poisson(clean * peak) / peak, 0.7)
            yield ("4 fmd Poisson 30 blurred 0.7", tag, noisy, False, True)
    import skimage.data

    def held_out(group, name, a):
        yield (f"{group} clean", name, a, False, False)
        for std in (0.03, 0.1):
            yield (f"{group} + white .03/.1", f"{name} w{std}", a + _rng(f"{name}w{std}").normal(0, std, a.shape), False, False)
        for sigma in (0.7, 1.0):
            for std in (0.05, 0.1):
                tag = f"{name} s{sigma} std{std}"
                yield (f"{group} + blurred noise", tag, a + _correlated(_rng(tag), a.shape, sigma, std), False, True)

    for name in SKIMAGE:
        a = getattr(skimage.data, name)()
        a = rgb2gray(a[..., :3]) if a.ndim == 3 else a / 255.0
        yield from held_out("5 skimage", name, center_crop(a.astype(np.float64), 512, "gray"))
    for path in sorted((root / "set12").glob("*.png")) + sorted((root / "bsd68").glob("*.png"))[:10]:
        yield from held_out("7 set12+bsd68", path.parent.name + "/" + path.stem, imread(path).astype(np.float64) / 255.0)
    for path in sorted((root / "rni6").glob("*.png")) + sorted((root / "rni15").glob("*.[pj][np]g")):
        a = imread(path)
        a = a[..., :3] if a.ndim == 3 else a
        yield ("8 RNI real noisy (no label)", path.stem, a.astype(np.float64) / 255.0, a.ndim == 3, None)


def false_call_cost(root: Path) -> int:
    """Denoise clean images the check calls correlated at 0.3 and 0.85 (default settings otherwise, 1 thread): the
    PSNR against the image itself says how much detail each ratio removes."""
    import skimage.data
    import torch
    from datasets import load
    from skimage.util import img_as_float32

    import napari_mpi

    torch.set_num_threads(1)
    images = [("gigadb actin-60x clean", s.clean, False) for s in load("gigadb", root, crop=256) if "actin" in s.name]
    for name in ("immunohistochemistry", "retina", "gravel", "text"):
        picture = img_as_float32(getattr(skimage.data, name)())
        picture = picture[..., :3] if picture.ndim == 3 else picture
        top, left = picture.shape[0] // 2 - 128, picture.shape[1] // 2 - 128
        images.append((name, np.ascontiguousarray(picture[top:top + 256, left:left + 256]), picture.ndim == 3))
    for name, image, rgb in images:
        cells = [f"{name}: score {noise_correlation(image, rgb):.2f}"]
        for ratio in (0.3, 0.85):
            start = time.perf_counter()
            out = napari_mpi.denoise(image, rgb=rgb, mask_ratio=ratio)
            psnr = 10 * np.log10(1.0 / np.mean((out.astype(np.float64) - image) ** 2))
            cells.append(f"mask ratio {ratio}: {psnr:.2f} dB ({time.perf_counter() - start:.0f} s)")
        print(", ".join(cells), flush=True)
    return 0


def main(argv=None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from datasets import require_data_root

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="shared data folder (default: $NAPARI_MPI_DATA or ../shared/data)")
    parser.add_argument("--verbose", action="store_true", help="print every image's score")
    parser.add_argument("--false-calls", action="store_true",
                        help="only denoise the clean 256x256 images the check calls correlated, at mask ratio 0.3 and "
                             "0.85, and print their PSNR against themselves (what a false call costs; minutes)")
    args = parser.parse_args(argv)
    root = require_data_root(args.data)
    if args.false_calls:
        return false_call_cost(root)
    groups: dict[str, list] = {}
    for group, name, image, rgb, expected in cases(root):
        score = noise_correlation(image, rgb)
        groups.setdefault(group, []).append((name, score, expected))
        if args.verbose:
            print(f"{group:34s} {name:44s} {score:+.3f}")
    print(f"threshold {THRESHOLD}\n{'group':34s} {'n':>4s} {'expect':>6s} {'min':>7s} {'max':>7s} {'wrong':>5s}  misclassified")
    total = 0
    for group in sorted(groups):
        rows = groups[group]
        scores = [s for _, s, _ in rows]
        labels = {e for _, _, e in rows}
        wrong = [(n, s) for n, s, e in rows if e is not None and (s > THRESHOLD) != e]
        total += len(wrong)
        expect = "mixed" if len(labels) > 1 else {True: "corr", False: "white", None: "?"}[labels.pop()]
        fired = sum(s > THRESHOLD for s in scores)
        extra = ", ".join(f"{n} {s:.2f}" for n, s in wrong) if expect != "?" else f"{fired} of {len(rows)} fire: " + \
            ", ".join(f"{n} {s:.2f}" for n, s, _ in rows if s > THRESHOLD)
        if group.startswith("6"):
            extra = "; ".join(f"{n} {s:.2f}" for n, s, _ in rows)
        print(f"{group:34s} {len(rows):4d} {expect:>6s} {min(scores):+7.3f} {max(scores):+7.3f} {len(wrong):5d}  {extra}")
    print(f"misclassified in all: {total} (group 6 repeats images of group 1)")
    import skimage.data

    for label, image, rgb in (("512x512 gray", skimage.data.camera() / 255.0, False),
                              ("512x512 RGB", skimage.data.astronaut() / 255.0, True)):
        noise_correlation(image, rgb)
        start = time.perf_counter()
        for _ in range(10):
            noise_correlation(image, rgb)
        print(f"time per {label} image: {(time.perf_counter() - start) / 10 * 1000:.1f} ms "
              f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
