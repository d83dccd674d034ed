"""Stacks carry the network from plane to plane by default: the per-plane decision, the chains a resumed run and
Dask workers take whole, and the per-plane reports. Tiny planes, few iterations, one thread."""

from __future__ import annotations

import numpy as np
import pytest

import napari_mpi
from napari_mpi._sample_data import clean_fluorescence
from napari_mpi.chains import needed_planes, plane_chains, summarise_reports
from napari_mpi.engine.chain import CarriedNetwork, PlaneLength, continuation_steps, most_continuation_steps
from napari_mpi.settings import FillConfig

ITERATIONS = 20


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mixed_stack() -> np.ndarray:
    """Three noisy frames of one fluorescence scene, then a noisy crop of the camera picture (unlike them)."""
    from skimage import data

    rng = np.random.default_rng(0)
    scene = clean_fluorescence((64, 64), seed=0).astype(np.float32)
    scene /= scene.max()
    other = data.camera()[200:264, 200:264].astype(np.float32) / 255.0
    planes = [scene + rng.normal(0, 0.08, scene.shape) for _ in range(3)] + [other + rng.normal(0, 0.08, other.shape)]
    return np.stack(planes).astype(np.float32)


def _run(stack: np.ndarray, skip=(), out=None, **options):
    plan = napari_mpi.prepare(stack.shape, stack.dtype, iterations=ITERATIONS, refine="none", **options)
    reports, events = [], []
    result = napari_mpi.drain(napari_mpi.denoise_steps(stack, plan, out, skip=skip, reports=reports), events.append)
    return result, reports, events


def test_alike_planes_carry_the_network_and_an_unlike_plane_starts_from_the_weights(mixed_stack):
    result, reports, events = _run(mixed_stack)  # reuse_network="auto", the default
    assert [r.carried for r in reports] == [False, True, True, False]
    assert reports[0].mismatch is None
    assert all(r.mismatch < 1.5 for r in reports[1:3]), reports
    assert reports[3].mismatch > FillConfig().reuse_max_mismatch, reports
    assert all(r.change < 0.1 for r in reports[1:3]) and reports[3].change > FillConfig().reuse_max_change
    config = napari_mpi.prepare(mixed_stack.shape, mixed_stack.dtype, iterations=ITERATIONS).config
    assert reports[3].steps == ITERATIONS and continuation_steps(config) <= reports[1].steps <= ITERATIONS
    assert [e.start.carried for e in events if e.plane == 1] == [True] * reports[1].iterations

    alone, alone_reports, _ = _run(mixed_stack, reuse_network=False)
    assert not any(r.carried for r in alone_reports)
    # a plane that starts from the weights is filled exactly as when alone, masks and all
    np.testing.assert_array_equal(result[0], alone[0])
    np.testing.assert_array_equal(result[3], alone[3])
    assert not np.array_equal(result[1], alone[1])

    always, always_reports, _ = _run(mixed_stack, reuse_network=True)
    assert [r.carried for r in always_reports] == [False, True, True, True]
    assert {r.steps for r in always_reports[1:]} == {continuation_steps(config)}


def test_a_resumed_run_fills_the_chain_again_and_writes_only_the_missing_planes(mixed_stack):
    whole, _, _ = _run(mixed_stack)
    out = np.full(mixed_stack.shape, np.nan, np.float32)
    _, reports, events = _run(mixed_stack, skip={0, 1}, out=out)
    assert np.isnan(out[:2]).all()  # skipped planes are not written
    np.testing.assert_array_equal(out[2:], whole[2:])  # the same result as the uninterrupted run
    assert [r.plane for r in reports] == [2, 3]
    assert {e.plane for e in events if e.replay} == {0, 1} and not any(e.replay for e in events if e.plane > 1)

    chain = [(n, (n,)) for n in range(4)]
    assert needed_planes(chain, {0, 1}) == chain and needed_planes(chain, {2, 3}) == chain[:2]
    assert needed_planes(chain, {0, 1, 2, 3}) == []


def test_chains_follow_the_channel_and_are_cut_every_so_many_planes():
    tuning = {"reuse_chain_planes": 2}
    plan = napari_mpi.prepare((5, 2, 32, 32), np.float32, channel_axis=1, tuning=tuning)  # Z, C, Y, X
    chains = [[number for number, _ in chain] for chain in plane_chains(plan)]
    assert chains == [[0, 2], [1, 3], [4, 6], [5, 7], [8], [9]]  # planes of one channel, two at a time
    alone = napari_mpi.prepare((5, 2, 32, 32), np.float32, channel_axis=1, reuse_network=False)
    assert [[number for number, _ in chain] for chain in plane_chains(alone)] == [[n] for n in range(10)]


def test_reuse_network_choices_and_what_they_refuse():
    assert napari_mpi.prepare((3, 32, 32), np.float32).reuse_network == "auto"
    assert napari_mpi.prepare((3, 32, 32), np.float32, reuse_network=True).reuse_network is True
    # the auto preset decides per plane alone: "auto" reuse means none for it, True is refused
    assert napari_mpi.prepare((3, 32, 32), np.float32, preset="auto").reuse_network is False
    with pytest.raises(ValueError, match="auto preset .* cannot reuse one network"):
        napari_mpi.prepare((3, 32, 32), np.float32, preset="auto", reuse_network=True)
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match="reuse_network must be 'auto', True or False"):
            napari_mpi.prepare((3, 32, 32), np.float32, reuse_network=bad)
    with pytest.raises(ValueError, match="mode must be one of auto, always"):
        CarriedNetwork(mode="sometimes")
    for name, bad in [("reuse_max_mismatch", 0.5), ("reuse_check_every", 0), ("reuse_chain_planes", 0),
                      ("reuse_probe_masks", 1.5), ("reuse_max_step_fraction", 0.0), ("reuse_fit_tolerance", -1),
                      ("reuse_min_fall", 1.0), ("reuse_max_change", -0.1)]:
        with pytest.raises(ValueError, match=name):
            FillConfig(**{name: bad})


def test_a_continuing_plane_grows_a_few_steps_at_a_time_up_to_its_bound():
    length = PlaneLength(2, 10, most=8, grow=5)
    assert (length.training, length.iterations) == (2, 12)
    assert not length.can_extend(1) and length.can_extend(2)
    length.extend()
    assert (length.training, length.iterations) == (7, 17) and length.can_extend(7)
    length.extend()
    assert (length.training, length.iterations) == (8, 18) and not length.can_extend(8)
    config = FillConfig(iterations=100)
    assert (continuation_steps(config), most_continuation_steps(config)) == (10, 40)


def test_reports_in_words_and_as_plain_values(mixed_stack):
    _, reports, _ = _run(mixed_stack)
    plain = [r.as_dict() for r in reports]
    assert plain[0] == {"plane": 0, "start": "weights", "mismatch": None, "change": None, "steps": ITERATIONS,
                        "iterations": reports[0].iterations}
    assert plain[1]["start"] == "carried" and isinstance(plain[1]["mismatch"], float)
    assert summarise_reports(plain).startswith("2 of 4 planes carried the previous plane's network (")
    assert "2 of 4 planes started from the weights (20 steps on average)" in summarise_reports(plain)
