import pytest
import torch

from napari_mpi.engine.masking import draw_mask, make_generator


def test_hidden_fraction_matches_ratio():
    mask = draw_mask((4, 1, 128, 128), 0.3, "pixel", make_generator(0, "cpu"), "cpu")
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert abs(float(1 - mask.mean()) - 0.3) < 0.01


def test_pixel_mode_shares_one_mask_across_channels():
    mask = draw_mask((1, 3, 64, 64), 0.5, "pixel", make_generator(1, "cpu"), "cpu")
    assert torch.equal(mask[:, 0], mask[:, 1]) and torch.equal(mask[:, 1], mask[:, 2])


def test_channel_mode_draws_each_channel_independently():
    mask = draw_mask((1, 3, 64, 64), 0.5, "channel", make_generator(1, "cpu"), "cpu")
    assert not torch.equal(mask[:, 0], mask[:, 1])


def test_same_seed_same_masks_and_sequence_advances():
    a, b = make_generator(7, "cpu"), make_generator(7, "cpu")
    first = draw_mask((1, 1, 32, 32), 0.3, "pixel", a, "cpu")
    assert torch.equal(first, draw_mask((1, 1, 32, 32), 0.3, "pixel", b, "cpu"))
    assert not torch.equal(first, draw_mask((1, 1, 32, 32), 0.3, "pixel", a, "cpu"))


def test_per_sample_ratios():
    ratios = torch.tensor([0.1, 0.9])
    mask = draw_mask((2, 1, 128, 128), ratios, "pixel", make_generator(0, "cpu"), "cpu")
    hidden = 1 - mask.mean(dim=(1, 2, 3))
    assert abs(float(hidden[0]) - 0.1) < 0.02 and abs(float(hidden[1]) - 0.9) < 0.02


def test_bad_mode_is_rejected():
    with pytest.raises(ValueError, match="mask mode"):
        draw_mask((1, 1, 8, 8), 0.3, "pixels", make_generator(0, "cpu"), "cpu")
