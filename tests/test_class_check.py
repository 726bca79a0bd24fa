"""The class check of stage 3: what its classifiers see, and that they flag images of the wrong class."""

import torch

from pipeline.class_check import CHECK_SEEDS, fit_class_check, recognised, spread_subset
from pipeline.evaluate import read_back_view


def _bands(n, row, seed):
    """n decoded-looking images (3, 32, 48) in [-1, 1]: noise with one bright band of Doppler rows from `row`."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 32, 48, generator=g) * 0.4 - 1
    x[:, :, row:row + 6] += 1.2
    return x.clamp(-1, 1)


def test_read_back_view_is_the_written_image_at_64_px():
    x = torch.randint(0, 256, (2, 3, 32, 48)) / 127.5 - 1   # on the 8-bit grid
    x[0, 1] = 1.0                                   # a colour the grey image cannot keep
    rgb, gray = read_back_view(x, gray=False), read_back_view(x, gray=True)
    assert rgb.shape == gray.shape == (2, 3, 64, 64)
    assert 0 <= float(rgb.min()) and float(rgb.max()) <= 1
    assert torch.equal(gray[:, 0], gray[:, 2]) and not torch.equal(rgb[:, 0], rgb[:, 1])
    # 8 bits, like the PNG stage 3 writes: a change below half a grey level is not seen
    assert torch.equal(read_back_view(x + 0.001, gray=True)[1], gray[1])


def test_majority_of_the_classifiers_recognises_the_own_class_and_flags_the_other():
    train = torch.cat([_bands(24, 4, 0), _bands(24, 20, 1)])
    labels = torch.tensor([0] * 24 + [1] * 24)
    checkers = fit_class_check(read_back_view(train, gray=True), labels, 2)
    assert len(checkers) == len(CHECK_SEEDS)
    test = read_back_view(torch.cat([_bands(8, 4, 2), _bands(8, 20, 3)]), gray=True)
    truth = torch.tensor([0] * 8 + [1] * 8)
    assert recognised(checkers, test, truth).all()
    assert not recognised(checkers, test, 1 - truth).any()   # labelled as the other class: drawn again


def test_a_large_class_is_subsampled_evenly_and_a_small_one_kept_whole():
    x = torch.arange(1000.0)
    assert torch.equal(spread_subset(x[:150], 200), x[:150])
    part = spread_subset(x, 200)
    assert len(part) == 200 and part[0] == 0 and part[-1] == 999 and (part.diff() > 0).all()
    assert part.diff().max() - part.diff().min() <= 1   # evenly spread over the whole class
