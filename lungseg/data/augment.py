"""The paper's augmentation (Keras ``ImageDataGenerator``) for whole batches.

The authors augmented frame and mask with two ``ImageDataGenerator`` objects sharing a seed.
``PaperAugmentation`` draws the same random parameters from the same distributions and builds
the same transform matrix as ``ImageDataGenerator.apply_transform``; frame and mask of a
frame always share one matrix, so they can never drift apart.

Resampling (``interpolation``):

``"bilinear"`` (default)
    What TF 2.6 ran (keras_preprocessing 1.1.2, ``interpolation_order=1``): frame and mask
    resampled bilinearly with edge pixels repeated, the mask then thresholded at 0.5. Done by
    OpenCV's ``warpAffine`` (``INTER_LINEAR``, ``BORDER_REPLICATE``), several times faster on
    a CPU than ``ImageProjectiveTransformV3(interpolation="BILINEAR")``; OpenCV places
    samples on a 1/32-pixel grid, which moves a uint8 frame by at most one gray level from
    SciPy's exact result. Keras kept the frame as float32; our pipeline hands the model
    uint8, so the frame is rounded to the nearest level (at most half a level, 0.002 after
    dividing by 255). The mask stays exactly 0/1.
``"nearest"``
    Frame and mask (packed into one channel) moved by one nearest-neighbour
    ``ImageProjectiveTransformV3`` call: faster still, masks 0/1 without a threshold, and with
    the paper's small ranges at most a pixel's interpolation away from bilinear.

Random numbers come from TensorFlow's stateless generators keyed by a seed, not NumPy's
global state, so a given seed gives the same augmented batches in every run.

Geometry follows Keras to the pixel, quirks included: ``ImageDataGenerator`` scales the shift
it calls ``tx`` by the image *height* but applies it along the columns (and ``ty``, scaled by
the width, along the rows), and it puts the centre of rotation and zoom at
``(height / 2 - 0.5, width / 2 - 0.5)`` in (column, row) order. For the paper's square
256 x 256 inputs both quirks vanish; for other sizes this class does what Keras did.
"""

import cv2
import numpy as np
import tensorflow as tf

from lungseg.config import AUGMENT_INTERPOLATIONS
from lungseg.errors import ConfigError

# Columns of the uniform random draw in ``random_parameters``.
_DRAWS = ("theta", "tx", "ty", "shear", "zx", "zy", "flip")


class PaperAugmentation:
    """Random rotation, shift, shear, zoom and horizontal flip of frames and masks together.

    Defaults are the paper's ``ImageDataGenerator`` settings. Ranges mean what they mean in
    Keras: ``rotation_range`` and ``shear_range`` in degrees (uniform in ``[-r, r]``), shift
    ranges as fractions of the image side (below 1) or pixels (1 or more), ``zoom_range``
    ``z`` as a scale uniform in ``[1 - z, 1 + z]`` drawn separately for x and y (or an explicit
    ``(low, high)`` pair), and a horizontal flip with probability one half. ``interpolation``
    is ``"bilinear"`` (the paper's) or ``"nearest"`` (see the module notes).
    """

    def __init__(
        self,
        rotation_range=0.15,
        width_shift_range=0.05,
        height_shift_range=0.05,
        shear_range=0.05,
        zoom_range=0.05,
        horizontal_flip=True,
        interpolation="bilinear",
    ):
        if interpolation not in AUGMENT_INTERPOLATIONS:
            raise ConfigError(
                f"unknown augmentation interpolation {interpolation!r}: use one of "
                f"{', '.join(AUGMENT_INTERPOLATIONS)}"
            )
        self.interpolation = interpolation
        self.rotation_range = float(rotation_range)
        self.width_shift_range = float(width_shift_range)
        self.height_shift_range = float(height_shift_range)
        self.shear_range = float(shear_range)
        if isinstance(zoom_range, (int, float)):
            self.zoom_range = (1.0 - zoom_range, 1.0 + zoom_range)
        else:
            low, high = zoom_range
            self.zoom_range = (float(low), float(high))
        self.horizontal_flip = bool(horizontal_flip)
        ranges = (rotation_range, width_shift_range, height_shift_range, shear_range)
        if min(ranges) < 0 or not 0 < self.zoom_range[0] <= self.zoom_range[1]:
            raise ConfigError(
                f"augmentation ranges must be >= 0 and zoom scales positive and ordered: {self!r}"
            )

    def __repr__(self):
        return (
            f"PaperAugmentation(rotation_range={self.rotation_range}, "
            f"width_shift_range={self.width_shift_range}, "
            f"height_shift_range={self.height_shift_range}, shear_range={self.shear_range}, "
            f"zoom_range={self.zoom_range}, horizontal_flip={self.horizontal_flip}, "
            f"interpolation={self.interpolation!r})"
        )

    def random_parameters(self, n, height, width, seed):
        """Draw parameters for ``n`` frames of ``height`` x ``width``, as Keras would.

        Returns a dict of float32 tensors of shape ``[n]`` with the keys of
        ``ImageDataGenerator.get_random_transform``: ``theta`` and ``shear`` (degrees), ``tx``
        and ``ty`` (pixels; ``tx`` from ``height_shift_range`` times the height, ``ty`` from
        ``width_shift_range`` times the width), ``zx`` and ``zy`` (scales) and ``flip``
        (1.0 to flip horizontally, else 0.0). ``seed`` is an int or an int tensor of shape
        ``[2]``; the same seed gives the same parameters.
        """
        uniform = tf.random.stateless_uniform([n, len(_DRAWS)], seed=_seed_pair(seed))
        draw = dict(zip(_DRAWS, tf.unstack(uniform, axis=1)))

        def symmetric(u, limit):
            return (2.0 * u - 1.0) * limit

        def shift(u, fraction, side):
            pixels = fraction * side if fraction < 1 else fraction
            return symmetric(u, pixels)

        low, high = self.zoom_range
        flip_probability = 0.5 if self.horizontal_flip else 0.0
        return {
            "theta": symmetric(draw["theta"], self.rotation_range),
            "tx": shift(draw["tx"], self.height_shift_range, tf.cast(height, tf.float32)),
            "ty": shift(draw["ty"], self.width_shift_range, tf.cast(width, tf.float32)),
            "shear": symmetric(draw["shear"], self.shear_range),
            "zx": low + (high - low) * draw["zx"],
            "zy": low + (high - low) * draw["zy"],
            "flip": tf.cast(draw["flip"] < flip_probability, tf.float32),
        }

    @staticmethod
    def matrices(parameters, height, width):
        """One projective transform per frame, ``[n, 8]`` float32, for ImageProjectiveTransformV3.

        Composes rotation, shift, shear and zoom as ``apply_affine_transform`` does
        (``R @ T @ S @ Z`` about the centre from ``transform_matrix_offset_center``), then the
        horizontal flip that ``apply_transform`` applies afterwards. Each row maps an output
        pixel (x = column, y = row) to the input position it is read from.
        """
        theta = parameters["theta"] * (np.pi / 180)
        shear = parameters["shear"] * (np.pi / 180)
        flip = parameters["flip"]
        zero, one = tf.zeros_like(theta), tf.ones_like(theta)
        height = tf.cast(height, tf.float32)
        width = tf.cast(width, tf.float32)

        def matrices_3x3(*entries):
            """[n, 3, 3] from nine [n] tensors, row by row."""
            return tf.reshape(tf.stack(entries, axis=-1), [-1, 3, 3])

        def translation(x, y):
            return matrices_3x3(one, zero, x * one, zero, one, y * one, zero, zero, one)

        rotation = matrices_3x3(
            tf.cos(theta), -tf.sin(theta), zero,
            tf.sin(theta), tf.cos(theta), zero,
            zero, zero, one,
        )
        shift = translation(parameters["tx"], parameters["ty"])
        shearing = matrices_3x3(
            one, -tf.sin(shear), zero,
            zero, tf.cos(shear), zero,
            zero, zero, one,
        )
        zoom = matrices_3x3(
            parameters["zx"], zero, zero,
            zero, parameters["zy"], zero,
            zero, zero, one,
        )
        mirror = matrices_3x3(
            1 - 2 * flip, zero, flip * (width - 1),
            zero, one, zero,
            zero, zero, one,
        )
        centre_x, centre_y = height / 2 - 0.5, width / 2 - 0.5  # Keras' order, see module doc
        combined = (
            translation(centre_x, centre_y)
            @ rotation @ shift @ shearing @ zoom
            @ translation(-centre_x, -centre_y)
            @ mirror
        )
        return tf.reshape(combined, [-1, 9])[:, :8]  # the last row is (0, 0, 1)

    def transform(self, batch, seed):
        """One random nearest-neighbour transform per frame of ``batch`` [B, H, W, C].

        Edges are repeated (``fill_mode="nearest"``). Every channel of a frame moves together,
        so a frame and its mask stacked or packed into one tensor stay aligned. Returns a
        tensor of the input's shape and dtype (uint8, int32, float16/32/64).
        """
        batch = tf.convert_to_tensor(batch)
        shape = tf.shape(batch)
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=batch,
            transforms=self._random_matrices(shape, seed),
            output_shape=shape[1:3],
            fill_value=0.0,
            interpolation="NEAREST",
            fill_mode="NEAREST",
        )

    def __call__(self, images, masks, seed):
        """Augment a batch: ``images`` [B, H, W, C], ``masks`` [B, H, W, 1] of 0 and 1.

        Frame and mask move with the same matrix, edge pixels repeated outside the frame
        (Keras' ``fill_mode="nearest"``); masks come back exactly 0/1. Returns tensors of the
        input dtypes and shapes.
        """
        images = tf.convert_to_tensor(images)
        masks = tf.convert_to_tensor(masks)
        if self.interpolation == "bilinear":
            new_images, new_masks = tf.numpy_function(
                _warp_bilinear,
                [images, masks, self._random_matrices(tf.shape(images), seed)],
                [images.dtype, masks.dtype],
                stateful=False,
            )
            new_images.set_shape(images.shape)
            new_masks.set_shape(masks.shape)
            return new_images, new_masks
        if images.dtype == tf.uint8 and images.shape[-1] == 1:
            new_images, new_masks = unpack(self.transform(pack(images, masks), seed))
        else:
            stacked = tf.concat([tf.cast(images, tf.float32), tf.cast(masks, tf.float32)], -1)
            moved = self.transform(stacked, seed)
            new_images, new_masks = moved[..., :-1], moved[..., -1:]
        return tf.cast(new_images, images.dtype), tf.cast(new_masks, masks.dtype)

    def batch_loader(self, frames):
        """A function ``(indices, seed) -> (images, masks)``: augmented batches of ``frames``.

        ``frames`` (a ``FrameSet``) is prepared once in the form this resampling wants:
        nearest packs frame and mask into one uint16 array, so a batch is one gather and one
        single-channel resampling; bilinear gathers the uint8 frames and 0/1 masks.
        """
        if self.interpolation == "nearest":
            packed = tf.constant(pack_numpy(frames.images, frames.masks))

            def load(indices, seed):
                batch = tf.cast(tf.gather(packed, indices), tf.int32)
                return unpack(self.transform(batch, seed))

            return load
        images, masks = tf.constant(frames.images), tf.constant(frames.masks)
        return lambda indices, seed: self(
            tf.gather(images, indices), tf.gather(masks, indices), seed
        )

    def _random_matrices(self, shape, seed):
        """Random transform matrices [B, 8] for a batch of ``shape`` [B, H, W, C]."""
        size, height, width = shape[0], shape[1], shape[2]
        return self.matrices(self.random_parameters(size, height, width, seed), height, width)


def _warp_bilinear(images, masks, matrices):
    """NumPy side of bilinear augmentation: OpenCV resamples each frame and mask.

    Frames keep their dtype (uint8 rounded to the nearest level; types OpenCV cannot resample
    go through float32 and are rounded back); masks are resampled as 0/255 and thresholded at
    half, as the notebooks thresholded at 0.5.
    """
    source = images if images.dtype in _OPENCV_DTYPES else images.astype(np.float32)
    levels = masks.astype(bool).astype(np.uint8) * np.uint8(255)
    new_images = np.empty_like(images)
    new_masks = np.empty_like(masks)
    for i, row in enumerate(matrices):
        affine = np.asarray(row[:6], np.float64).reshape(2, 3)
        frame = _warp(source[i], affine)
        if source.dtype != images.dtype and np.issubdtype(images.dtype, np.integer):
            frame = np.rint(frame)
        new_images[i] = frame
        new_masks[i] = _warp(levels[i], affine) > 127
    return new_images, new_masks


def _warp(picture, affine):
    """``picture`` [H, W, C] resampled bilinearly at ``affine`` (output to input), edges kept."""
    if picture.shape[-1] > 4:  # OpenCV resamples at most 4 channels at once
        channels = range(picture.shape[-1])
        return np.concatenate([_warp(picture[..., c:c + 1], affine) for c in channels], -1)
    height, width = picture.shape[:2]
    moved = cv2.warpAffine(
        picture, affine, (width, height),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE,
    )
    return moved.reshape(height, width, -1)


# Pixel types OpenCV's warpAffine resamples directly.
_OPENCV_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)


def pack(images, masks):
    """One int32 channel per pixel: the uint8 frame in the low byte, the 0/1 mask above it.

    The projective transform's cost is per output value, so moving one packed channel costs
    half as much as moving frame and mask as two channels.
    """
    mask_bits = tf.bitwise.left_shift(tf.cast(tf.cast(masks, tf.bool), tf.int32), 8)
    return tf.bitwise.bitwise_or(tf.cast(images, tf.int32), mask_bits)


def unpack(packed, mask_dtype=tf.uint8):
    """Inverse of ``pack``: (uint8 frames, 0/1 masks of ``mask_dtype``)."""
    packed = tf.cast(packed, tf.int32)
    images = tf.cast(tf.bitwise.bitwise_and(packed, 255), tf.uint8)
    masks = tf.cast(packed > 255, mask_dtype)
    return images, masks


def pack_numpy(images, masks):
    """``pack`` done once in NumPy, as uint16 (half the memory of int32) for a cached data set."""
    return images.astype(np.uint16) | (masks.astype(bool).astype(np.uint16) << 8)


def _seed_pair(seed):
    """An int or a shape-[2] tensor -> the int64 shape-[2] seed stateless ops take."""
    if isinstance(seed, int):
        return tf.constant([seed, 0], tf.int64)
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    if seed.shape.rank == 0:
        return tf.stack([seed, tf.zeros_like(seed)])
    return seed
