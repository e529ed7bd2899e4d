"""PaperAugmentation draws what ImageDataGenerator draws, moves pixels as it does (bilinear as
the paper ran it, or nearest), and keeps frame and mask aligned and the mask binary."""

import cv2
import numpy as np
import pytest
import tensorflow as tf
from keras.src.legacy.preprocessing.image import ImageDataGenerator
from scipy.stats import ks_2samp

from lungseg.data import PaperAugmentation, StrongAugmentation
from lungseg.data.augment import intensity_table
from lungseg.errors import ConfigError

PAPER_SETTINGS = dict(
    rotation_range=0.15,
    width_shift_range=0.05,
    height_shift_range=0.05,
    shear_range=0.05,
    zoom_range=0.05,
    horizontal_flip=True,
)
STRONG_RANGES = dict(
    rotation_range=30, width_shift_range=0.2, height_shift_range=0.2, shear_range=15, zoom_range=0.3
)
EXAGGERATED = PaperAugmentation(**STRONG_RANGES)
EXAGGERATED_NEAREST = PaperAugmentation(**STRONG_RANGES, interpolation="nearest")


def keras_draws(n, shape):
    state = np.random.get_state()
    try:
        generator = ImageDataGenerator(**PAPER_SETTINGS, fill_mode="nearest")
        np.random.seed(0)
        draws = [generator.get_random_transform(shape) for _ in range(n)]
    finally:
        np.random.set_state(state)
    return {key: np.array([float(d[key]) for d in draws]) for key in draws[0] if draws[0][key] is not None}


def test_parameters_follow_image_data_generator_distributions():
    n, height, width = 3000, 256, 192
    ours = {k: v.numpy() for k, v in PaperAugmentation().random_parameters(n, height, width, 7).items()}
    theirs = keras_draws(n, (height, width, 1))
    theirs["flip"] = theirs.pop("flip_horizontal")
    bounds = {
        "theta": 0.15, "shear": 0.05, "tx": 0.05 * height, "ty": 0.05 * width,
    }
    for key, bound in bounds.items():
        assert np.abs(ours[key]).max() <= bound + 1e-6
        assert np.abs(ours[key]).max() > 0.95 * bound  # the whole range is used
    for key in ("zx", "zy"):
        assert 0.95 - 1e-6 <= ours[key].min() and ours[key].max() <= 1.05 + 1e-6
    for key in ("theta", "tx", "ty", "shear", "zx", "zy", "flip"):
        assert ks_2samp(ours[key], theirs[key]).pvalue > 1e-3, key
    assert not np.allclose(ours["zx"], ours["zy"])  # x and y zoom drawn apart
    again = PaperAugmentation().random_parameters(n, height, width, 7)
    np.testing.assert_array_equal(again["theta"].numpy(), ours["theta"])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Keras' legacy scipy import
@pytest.mark.parametrize(
    "parameters",
    [
        {"tx": 3.0},
        {"ty": -2.0},
        {"flip_horizontal": True},
        {"tx": -2.0, "ty": 1.0, "flip_horizontal": True},
        {"theta": 9.0, "tx": 2.3, "ty": -1.6, "shear": 4.0, "zx": 1.1, "zy": 0.9, "flip_horizontal": True},
    ],
)
def test_matrices_move_pixels_as_image_data_generator_does(parameters):
    rng = np.random.default_rng(1)
    height, width = 14, 22  # not square: catches swapped axes
    image = rng.integers(0, 256, (height, width, 1)).astype(np.float32)
    generator = ImageDataGenerator(fill_mode="nearest", interpolation_order=0)
    expected = generator.apply_transform(image, parameters)
    full = {"theta": 0.0, "tx": 0.0, "ty": 0.0, "shear": 0.0, "zx": 1.0, "zy": 1.0}
    full.update({k: v for k, v in parameters.items() if k != "flip_horizontal"})
    full["flip"] = float(parameters.get("flip_horizontal", False))
    tensors = {key: tf.constant([value], tf.float32) for key, value in full.items()}
    moved = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=PaperAugmentation.matrices(tensors, height, width),
        output_shape=[height, width],
        fill_value=0.0,
        interpolation="NEAREST",
        fill_mode="NEAREST",
    )
    np.testing.assert_array_equal(moved[0].numpy(), expected)


def shapes_batch(n=12, size=64, seed=0):
    """Frames with a bright ellipse on textured background, and the ellipse as the mask."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    images, masks = [], []
    for _ in range(n):
        centre = rng.uniform(0.3, 0.7, 2) * size
        radii = rng.uniform(0.1, 0.25, 2) * size
        inside = ((rows - centre[0]) / radii[0]) ** 2 + ((cols - centre[1]) / radii[1]) ** 2 <= 1
        image = rng.integers(0, 100, (size, size))
        image[inside] = rng.integers(200, 256, inside.sum())
        images.append(image)
        masks.append(inside)
    images = np.stack(images)[..., None].astype(np.uint8)
    return images, np.stack(masks)[..., None].astype(np.uint8)


def iou(a, b):
    return np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1)


@pytest.mark.parametrize(
    "augmentation",
    [PaperAugmentation(), EXAGGERATED, PaperAugmentation(interpolation="nearest"), EXAGGERATED_NEAREST],
    ids=["paper", "exaggerated", "paper-nearest", "exaggerated-nearest"],
)
def test_masks_stay_binary_and_aligned(augmentation):
    images, masks = shapes_batch()
    for seed in range(5):
        new_images, new_masks = augmentation(images, masks, seed=seed)
        assert new_images.dtype == tf.uint8 and new_masks.dtype == tf.uint8
        assert new_images.shape == images.shape and new_masks.shape == masks.shape
        new_images, new_masks = new_images.numpy(), new_masks.numpy()
        assert set(np.unique(new_masks)) <= {0, 1}
        for image, mask in zip(new_images, new_masks):
            assert iou(image > 150, mask > 0) >= 0.95
    moved = EXAGGERATED(images, masks, seed=1)[0].numpy()
    assert np.mean(moved != images) > 0.2  # the exaggerated ranges really move things


@pytest.mark.parametrize("augmentation", [EXAGGERATED, EXAGGERATED_NEAREST], ids=["bilinear", "nearest"])
def test_other_dtypes_and_channels_take_the_general_path(augmentation):
    images, masks = shapes_batch(n=4)
    rgb = np.repeat(images, 3, axis=-1)
    new_rgb, new_masks = augmentation(rgb, masks.astype(np.float32), seed=3)
    assert new_rgb.dtype == tf.uint8 and new_masks.dtype == tf.float32
    new_gray, gray_masks = augmentation(images, masks, seed=3)
    np.testing.assert_array_equal(new_rgb.numpy()[..., :1], new_gray.numpy())
    np.testing.assert_array_equal(new_masks.numpy(), gray_masks.numpy().astype(np.float32))
    wide = np.repeat(images, 5, axis=-1).astype(np.int32)  # > 4 channels, a type OpenCV lacks
    new_wide, _ = augmentation(wide, masks, seed=3)
    assert new_wide.dtype == tf.int32
    np.testing.assert_array_equal(new_wide.numpy()[..., 4:], new_gray.numpy())


def keras_bilinear(images, masks, parameters):
    """What the notebooks ran: ImageDataGenerator (interpolation_order=1) on float frames and
    0/255 masks with the given draws, masks then divided by 255 and thresholded at 0.5."""
    generator = ImageDataGenerator(fill_mode="nearest", interpolation_order=1)
    frames, labels = [], []
    for i in range(len(images)):
        draw = {key: float(parameters[key][i]) for key in ("theta", "tx", "ty", "shear", "zx", "zy")}
        draw["flip_horizontal"] = bool(parameters["flip"][i] > 0)
        frames.append(generator.apply_transform(images[i].astype(np.float32), draw))
        labels.append(generator.apply_transform(masks[i].astype(np.float32) * 255, draw) / 255 > 0.5)
    return np.stack(frames), np.stack(labels)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Keras' legacy scipy import
@pytest.mark.parametrize("augmentation", [PaperAugmentation(), EXAGGERATED], ids=["paper", "exaggerated"])
def test_bilinear_matches_image_data_generator_with_the_same_draws(augmentation):
    height, width = 48, 40  # not square: catches swapped axes
    images, masks = shapes_batch(n=12, size=64, seed=2)
    images, masks = images[:, :height, :width], masks[:, :height, :width]
    parameters = augmentation.random_parameters(len(images), height, width, 5)
    expected_frames, expected_masks = keras_bilinear(images, masks, parameters)
    frames, new_masks = (t.numpy() for t in augmentation(images, masks, seed=5))
    assert frames.dtype == np.uint8 and set(np.unique(new_masks)) <= {0, 1}
    # Masks: measured identical to Keras' (0 of 23,040 pixels differ in both settings, Dice 1);
    # allow a pixel per thousand for values that land on the 0.5 threshold.
    assert np.count_nonzero(new_masks.astype(bool) != expected_masks) <= expected_masks.size // 1000
    # Frames: Keras kept float32, we round to uint8, so the mean absolute difference is the
    # rounding's (measured 0.251 and 0.247 gray levels, at most 0.50); 2 and 1 of 23,040 pixels
    # differ by one level from Keras' values rounded (OpenCV's 1/32-pixel sample grid).
    difference = np.abs(frames - expected_frames)
    assert difference.mean() < 0.26 and difference.max() < 0.51
    assert np.count_nonzero(frames != np.round(expected_frames)) <= frames.size // 1000


def test_unknown_interpolation_is_refused():
    with pytest.raises(ConfigError, match="unknown augmentation interpolation 'cubic'"):
        PaperAugmentation(interpolation="cubic")
    assert "interpolation='nearest'" in repr(PaperAugmentation(interpolation="nearest"))


def test_seeds_decide_the_draws():
    images, masks = shapes_batch(n=4)
    first = EXAGGERATED(images, masks, seed=tf.constant([5, 6], tf.int64))[0].numpy()
    same = EXAGGERATED(images, masks, seed=tf.constant([5, 6], tf.int64))[0].numpy()
    other = EXAGGERATED(images, masks, seed=tf.constant([5, 7], tf.int64))[0].numpy()
    np.testing.assert_array_equal(first, same)
    assert not np.array_equal(first, other)


# --- strong augmentation (nnU-Net's, issue 16) --------------------------------------------

INTENSITY_OFF = {"p_noise": 0, "p_blur": 0, "p_brightness": 0, "p_contrast": 0, "p_gamma": 0,
                 "p_gamma_inverted": 0}
INTENSITY_ALWAYS = {"p_noise": 1, "p_blur": 1, "p_brightness": 1, "p_contrast": 1, "p_gamma": 1,
                    "p_gamma_inverted": 0}


def test_strong_draws_follow_their_ranges_and_probabilities():
    strong = StrongAugmentation()
    n = 4000
    geometry = {k: v.numpy() for k, v in strong.random_parameters(n, 64, 48, 3).items()}
    for key in ("tx", "ty", "shear"):
        assert not geometry[key].any()
    np.testing.assert_array_equal(geometry["zx"], geometry["zy"])  # isotropic
    rotated, scaled = geometry["theta"] != 0, geometry["zx"] != 1
    assert np.abs(geometry["theta"]).max() <= 15 and np.abs(geometry["theta"]).max() > 14
    assert 0.85 <= geometry["zx"].min() and geometry["zx"].max() <= 1.25
    for share, p in ((rotated.mean(), 0.2), (scaled.mean(), 0.2), (geometry["flip"].mean(), 0.5)):
        assert abs(share - p) < 0.03
    assert abs((rotated & scaled).mean() - 0.04) < 0.015  # drawn independently
    intensity = strong.intensity_parameters(n, 3).numpy()
    noise, blur, brightness, contrast, gamma, inverted = intensity.T
    expected = {"noise": (noise > 0, 0.1), "blur": (blur > 0, 0.2),
                "brightness": (brightness != 1, 0.15), "contrast": (contrast != 1, 0.15),
                "gamma": ((gamma != 1) & (inverted == 0), 0.3), "inverted": (inverted == 1, 0.1)}
    for name, (drawn, p) in expected.items():
        assert abs(drawn.mean() - p) < 0.025, name
    assert noise.max() <= np.sqrt(0.1) and 0.5 <= blur[blur > 0].min() and blur.max() <= 1
    assert 0.75 <= brightness.min() and brightness.max() <= 1.25
    assert 0.7 <= gamma.min() and gamma.max() <= 1.5
    assert abs((gamma[gamma != 1] < 1).mean() - 0.5) < 0.05
    assert not np.array_equal(intensity, strong.intensity_parameters(n, 4).numpy())


def test_intensity_table_by_hand():
    levels = np.arange(256)
    # brightness 1.2: level 100 -> 120
    assert intensity_table(brightness=1.2)[100] == 120
    # contrast 2 about the mean 100: 150 -> 100 + 2 * 50 = 200; 40 -> -20, clipped to 0
    table = intensity_table(contrast=2.0, mean=100.0)
    assert (table[150], table[40], table[100]) == (200, 0, 100)
    # gamma 2: 128 -> 255 * (128/255)^2 = 64.25; inverted: 255 * (1 - (127/255)^2) = 191.75
    assert intensity_table(gamma=2.0)[128] == 64
    assert intensity_table(gamma=2.0, inverted=True)[128] == 192
    np.testing.assert_array_equal(intensity_table(), levels)  # identity
    assert (np.diff(intensity_table(1.1, 1.3, 0.8, True, 90.0).astype(int)) >= 0).all()  # monotone


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_strong_geometry_moves_frame_and_mask_with_one_known_matrix(interpolation):
    strong = StrongAugmentation(p_rotation=1, p_scale=1, p_flip=0.5, **INTENSITY_OFF,
                                interpolation=interpolation)
    height, width = 41, 31  # odd: the centre is a pixel, (row 20, column 15)
    images, masks = shapes_batch(n=8, size=64, seed=3)
    images, masks = images[:, :height, :width].copy(), masks[:, :height, :width].copy()
    images[:, 20, 15], masks[:, 20, 15] = 255, 1
    new_images, new_masks = (t.numpy() for t in strong(images, masks, seed=9))
    matrices = strong.matrices(strong.random_parameters(8, height, width, 9), height, width,
                               keras_centre=False).numpy()
    assert np.abs(matrices[:, 1]).max() > 0.05  # they really rotate
    flags = cv2.WARP_INVERSE_MAP | (cv2.INTER_LINEAR if interpolation == "bilinear"
                                    else cv2.INTER_NEAREST)
    for i, row in enumerate(matrices):
        affine = row[:6].astype(np.float64).reshape(2, 3)

        def warp(picture, affine=affine):
            return cv2.warpAffine(picture, affine, (width, height), flags=flags,
                                  borderMode=cv2.BORDER_CONSTANT)

        expected_mask = warp(masks[i, ..., 0] * 255) > 127
        assert np.count_nonzero(new_masks[i, ..., 0] != expected_mask) <= 2
        if interpolation == "bilinear":  # the frame: exactly OpenCV's resampling
            np.testing.assert_array_equal(new_images[i, ..., 0], warp(images[i, ..., 0]))
        # Rotation and scaling turn about the true centre: the centre pixel stays put.
        assert new_masks[i, 20, 15] == 1 and new_images[i, 20, 15] == 255
        assert new_images[i, 0, 0] == 0 or matrices[i, 1] == 0  # zeros outside, not edges


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_strong_augmentation_keeps_frames_on_masks_and_mask_values(interpolation):
    from skimage.filters import threshold_otsu

    images, masks = shapes_batch(n=12)
    strong = StrongAugmentation(interpolation=interpolation)
    for seed in range(4):
        new_images, new_masks = (t.numpy() for t in strong(images, masks, seed=seed))
        assert new_images.dtype == np.uint8 and set(np.unique(new_masks)) <= {0, 1}
        for image, mask in zip(new_images, new_masks):
            assert iou(image > threshold_otsu(image), mask > 0) >= 0.9
    # Intensity alone: masks come back untouched, frames changed, the same way for each seed.
    intensity_only = StrongAugmentation(p_rotation=0, p_scale=0, p_flip=0, **INTENSITY_ALWAYS,
                                        interpolation=interpolation)
    new_images, new_masks = (t.numpy() for t in intensity_only(images, masks, seed=2))
    np.testing.assert_array_equal(new_masks, masks)
    assert (np.abs(new_images.astype(int) - images).mean(axis=(1, 2, 3)) > 2).all()
    again = intensity_only(images, masks, seed=2)[0].numpy()
    np.testing.assert_array_equal(again, new_images)
    assert not np.array_equal(intensity_only(images, masks, seed=3)[0].numpy(), new_images)


def test_strong_augmentation_in_the_pipeline_and_by_name():
    from lungseg.data import FrameSet, make_augmentation, make_dataset

    assert isinstance(make_augmentation("strong", "nearest"), StrongAugmentation)
    assert type(make_augmentation("paper")) is PaperAugmentation
    with pytest.raises(ConfigError, match="unknown augmentation policy 'wild'"):
        make_augmentation("wild")
    with pytest.raises(ConfigError, match="probabilities"):
        StrongAugmentation(p_noise=1.5)
    images, masks = shapes_batch(n=10, size=32)
    frames = FrameSet([f"f{i}" for i in range(10)], list(range(10)), images, masks)
    for interpolation in ("bilinear", "nearest"):
        strong = make_augmentation("strong", interpolation)
        batches = list(make_dataset(frames, 4, training=True, augment=strong, seed=1))
        again = list(make_dataset(frames, 4, training=True, augment=strong, seed=1))
        assert [len(x) for x, _ in batches] == [4, 4, 2]
        for (x, y), (x2, y2) in zip(batches, again):
            assert x.dtype == tf.uint8 and y.dtype == tf.float32
            assert set(np.unique(y.numpy())) <= {0.0, 1.0}
            np.testing.assert_array_equal(x.numpy(), x2.numpy())
    with pytest.raises(ConfigError, match="uint8 frames"):
        StrongAugmentation()(images.astype(np.float32), masks, seed=1)
