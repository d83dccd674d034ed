import pytest
import torch

from napari_mpi.engine.network import MIN_SIDE, SkipNet


def test_parameter_count_matches_the_paper_network():
    count = sum(p.numel() for p in SkipNet(2, 1, width=64, skip_width=64).parameters())
    assert 735_000 <= count <= 755_000  # the paper's DIP skip net: ~745k


@pytest.mark.parametrize("height,width", [(MIN_SIDE, MIN_SIDE), (33, 47), (64, 64), (70, 129)])
def test_any_size_comes_back_with_its_shape_and_in_unit_range(height, width):
    net = SkipNet(6, 3)
    with torch.no_grad():
        out = net(torch.rand(2, 6, height, width))
    assert out.shape == (2, 3, height, width)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_too_small_image_is_a_clear_error():
    with pytest.raises(ValueError, match="too small"):
        SkipNet(2, 1)(torch.rand(1, 2, MIN_SIDE - 1, 64))


def test_wrong_channel_count_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\(N, 2, H, W\)"):
        SkipNet(2, 1)(torch.rand(1, 3, 64, 64))


@pytest.mark.parametrize("width,skip_width,depth", [(64, 64, 5), (32, 16, 4)])
def test_a_state_dict_says_which_network_it_came_from(width, skip_width, depth):
    from napari_mpi.engine.network import architecture_of

    net = SkipNet(2, 1, width=width, skip_width=skip_width, depth=depth)
    assert architecture_of(net.state_dict()) == {"width": width, "skip_width": skip_width, "depth": depth}


def test_a_foreign_state_dict_is_a_clear_error():
    from napari_mpi.engine.network import architecture_of

    with pytest.raises(ValueError, match="not the state of a napari-mpi SkipNet"):
        architecture_of({"conv.weight": torch.zeros(3, 3)})
