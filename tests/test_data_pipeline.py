"""make_dataset: shapes, dtypes, value ranges, batching, shuffling and seeded augmentation."""

import numpy as np
import pytest
import tensorflow as tf

from lungseg.data import FrameSet, PaperAugmentation, make_dataset
from lungseg.errors import ConfigError

RANGES = dict(rotation_range=20, width_shift_range=0.2, height_shift_range=0.2)
STRONG = PaperAugmentation(**RANGES)
STRONG_NEAREST = PaperAugmentation(**RANGES, interpolation="nearest")


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(0)
    n, size = 10, 16
    images = rng.integers(0, 256, (n, size, size, 1), dtype=np.uint8)
    masks = (rng.random((n, size, size, 1)) < 0.3).astype(np.uint8)
    return FrameSet([f"f{i}" for i in range(n)], ["g"] * n, images, masks)


def epochs(dataset, count):
    return [[(x.numpy(), y.numpy()) for x, y in dataset] for _ in range(count)]


def test_evaluation_batches_keep_order_and_values(frames):
    batches = epochs(make_dataset(frames, batch_size=4), 1)[0]
    assert [len(x) for x, _ in batches] == [4, 4, 2]  # the last batch is kept
    images = np.concatenate([x for x, _ in batches])
    masks = np.concatenate([y for _, y in batches])
    assert images.dtype == np.uint8 and images.shape == (10, 16, 16, 1)
    assert masks.dtype == np.float32 and masks.shape == (10, 16, 16, 1)
    np.testing.assert_array_equal(images, frames.images)
    np.testing.assert_array_equal(masks, frames.masks.astype(np.float32))


def test_three_channels_repeat_the_grey_channel(frames):
    x, y = next(iter(make_dataset(frames, batch_size=3, channels=3)))
    assert x.shape == (3, 16, 16, 3) and y.shape == (3, 16, 16, 1)
    np.testing.assert_array_equal(x.numpy()[..., 2], frames.images[:3, ..., 0])
    x, _ = next(iter(make_dataset(frames, 3, channels=3, training=True, augment=STRONG)))
    assert x.shape == (3, 16, 16, 3) and x.dtype == tf.uint8


@pytest.mark.parametrize("augment", [STRONG, STRONG_NEAREST], ids=["bilinear", "nearest"])
def test_training_shuffles_and_augments_deterministically(frames, augment):
    run = epochs(make_dataset(frames, 4, training=True, augment=augment, seed=3), 2)
    rerun = epochs(make_dataset(frames, 4, training=True, augment=augment, seed=3), 2)
    other_seed = epochs(make_dataset(frames, 4, training=True, augment=augment, seed=4), 1)
    for (x, y), (x2, y2) in zip(run[0] + run[1], rerun[0] + rerun[1]):
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(run[0][0][0], run[1][0][0])  # epochs differ
    assert not np.array_equal(run[0][0][0], other_seed[0][0][0])
    for x, y in run[0]:
        assert x.dtype == np.uint8 and y.dtype == np.float32
        assert set(np.unique(y)) <= {0.0, 1.0}
    assert sum(len(x) for x, _ in run[0]) == len(frames)


def test_bilinear_and_nearest_make_the_same_moves():
    """Same seed, same order and draws: the two resamplings differ only by interpolation."""
    rows, cols = np.mgrid[:32, :32]
    disc = ((rows - 14) ** 2 + (cols - 17) ** 2 < 80)[None, ..., None]
    images = np.repeat(np.where(disc, 220, 30).astype(np.uint8), 6, axis=0)
    images += np.arange(6, dtype=np.uint8)[:, None, None, None]  # tell the frames apart
    masks = disc.repeat(6, axis=0).astype(np.uint8)
    smooth = FrameSet([f"f{i}" for i in range(6)], ["g"] * 6, images, masks)
    bilinear = epochs(make_dataset(smooth, 3, training=True, augment=STRONG, seed=2), 1)[0]
    nearest = epochs(make_dataset(smooth, 3, training=True, augment=STRONG_NEAREST, seed=2), 1)[0]
    for (x, y), (x2, y2) in zip(bilinear, nearest):
        assert set(np.unique(y)) <= {0.0, 1.0}
        np.testing.assert_array_equal(x.min(axis=(1, 2, 3)), x2.min(axis=(1, 2, 3)))  # same order
        assert np.mean(y != y2) < 0.02  # masks differ only along the disc's edge
        assert ((x > 125) == (y > 0)).mean() > 0.98  # frame and mask move alike


def test_training_without_augmentation_only_shuffles(frames):
    batches = epochs(make_dataset(frames, 10, training=True, seed=1), 1)[0]
    x, y = batches[0]
    order = [int(np.flatnonzero((frames.images == image).all(axis=(1, 2, 3)))[0]) for image in x]
    assert sorted(order) == list(range(10)) and order != list(range(10))
    np.testing.assert_array_equal(y, frames.masks[order].astype(np.float32))


def test_custom_augmentation_callables_are_used(frames):
    def invert(images, masks, seed):
        return 255 - images, masks

    x, _ = next(iter(make_dataset(frames, 10, training=True, augment=invert, seed=0)))
    assert sorted(map(bytes, x.numpy())) == sorted(map(bytes, 255 - frames.images))


def test_bad_arguments(frames):
    with pytest.raises(ConfigError, match="batch_size"):
        make_dataset(frames, 0)
    with pytest.raises(ConfigError, match="channels"):
        make_dataset(frames, 2, channels=2)
    with pytest.raises(ConfigError, match="empty"):
        make_dataset(frames.take(0), 2)


@pytest.mark.parametrize("training, augment", [(False, None), (True, None), (True, PaperAugmentation())])
def test_autotuning_is_off(frames, training, augment):
    # With tf.data's autotuning on, model.predict and fit epochs ended only when its optimisation
    # thread woke (0.31, 0.63, 1.27, 2.55 s ...); see lungseg.data.pipeline.
    dataset = make_dataset(frames, 4, training=training, augment=augment)
    assert dataset.options().autotune.enabled is False
    assert sum(len(x) for x, _ in dataset) == len(frames)
