"""The paper's augmentation (Keras ``ImageDataGenerator``) for whole batches, and a strong one.

``PaperAugmentation`` is what the authors ran; ``StrongAugmentation`` is the geometric and
intensity augmentation nnU-Net uses for 2D (see its class notes). ``make_augmentation(policy,
interpolation)`` gives either, by the names of ``config.AUGMENT_POLICIES``.

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

from lungseg.config import AUGMENT_INTERPOLATIONS, AUGMENT_POLICIES
from lungseg.errors import ConfigError

# Columns of the uniform random draw in ``random_parameters``.
_DRAWS = ("theta", "tx", "ty", "shear", "zx", "zy", "flip")
# Columns of ``StrongAugmentation.intensity_parameters`` (identity: 0, 0, 1, 1, 1, 0).
INTENSITY_COLUMNS = ("noise", "blur", "brightness", "contrast", "gamma", "gamma_inverted")


class PaperAugmentation:
    """Random rotation, shift, shear, zoom and horizontal flip of frames and masks together.

    Defaults are the paper's ``ImageDataGenerator`` settings. Ranges mean what they mean in
    Keras: ``rotation_range`` and ``shear_range`` in degrees (uniform in ``[-r, r]``), shift
    ranges as fractions of the image side (below 1) or pixels (1 or more), ``zoom_range``
    ``z`` as a scale uniform in ``[1 - z, 1 + z]`` drawn separately for x and y (or an explicit
    ``(low, high)`` pair), and a horizontal flip with probability one half. ``interpolation``
    is ``"bilinear"`` (the paper's) or ``"nearest"`` (see the module notes).
    """

    # Outside the frame: "nearest" repeats edge pixels (Keras' fill_mode="nearest");
    # "constant" fills frame and mask with 0.
    fill_mode = "nearest"
    # Rotate and zoom about Keras' centre, (height / 2 - 0.5, width / 2 - 0.5) as (x, y).
    keras_centre = True

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
    def matrices(parameters, height, width, keras_centre=True):
        """One projective transform per frame, ``[n, 8]`` float32, for ImageProjectiveTransformV3.

        Composes rotation, shift, shear and zoom as ``apply_affine_transform`` does
        (``R @ T @ S @ Z`` about the centre from ``transform_matrix_offset_center``), then the
        horizontal flip that ``apply_transform`` applies afterwards. Each row maps an output
        pixel (x = column, y = row) to the input position it is read from. ``keras_centre``
        False turns about the frame's true centre instead of Keras' (the same when square).
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
        if not keras_centre:
            centre_x, centre_y = centre_y, centre_x
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
            fill_mode=self.fill_mode.upper(),
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
                [images, masks, self._random_matrices(tf.shape(images), seed),
                 self.fill_mode == "constant", *self._intensity_arguments(images, seed)],
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
        new_images = self._intensity(tf.cast(new_images, images.dtype), seed)
        return new_images, tf.cast(new_masks, masks.dtype)

    def batch_loader(self, frames):
        """A function ``(indices, seed) -> (images, masks)``: augmented batches of ``frames``.

        ``frames`` (a ``FrameSet``) is prepared once in the form this resampling wants:
        nearest packs frame and mask into one uint16 array, so a batch is one gather and one
        single-channel resampling; bilinear gathers the uint8 frames and 0/1 masks.
        """
        if self.interpolation == "nearest":
            with tf.device("/CPU:0"):  # packed once on the host, where tf.data gathers batches
                packed = pack(frames.images, frames.masks, tf.uint16)

            def load(indices, seed):
                batch = tf.cast(tf.gather(packed, indices), tf.int32)
                images, masks = unpack(self.transform(batch, seed))
                return self._intensity(images, seed), masks

            return load
        images, masks = tf.constant(frames.images), tf.constant(frames.masks)
        return lambda indices, seed: self(
            tf.gather(images, indices), tf.gather(masks, indices), seed
        )

    def _random_matrices(self, shape, seed):
        """Random transform matrices [B, 8] for a batch of ``shape`` [B, H, W, C]."""
        size, height, width = shape[0], shape[1], shape[2]
        parameters = self.random_parameters(size, height, width, seed)
        return self.matrices(parameters, height, width, keras_centre=self.keras_centre)

    def _intensity_arguments(self, images, seed):
        """What ``_warp_bilinear`` needs for the intensity transforms: none for the paper's."""
        return []

    def _intensity(self, images, seed):
        """The intensity transforms of a resampled batch: none for the paper's."""
        return images


class StrongAugmentation(PaperAugmentation):
    """The 2D augmentation nnU-Net trains with (Isensee et al., 2021), for frames and masks.

    Geometry, one matrix per frame through the same single resampling as the paper's:
    rotation uniform in ``±rotation`` degrees with probability ``p_rotation``, isotropic
    scaling uniform in ``scale`` with probability ``p_scale`` (nnU-Net's ``(0.85, 1.25)``:
    above 1 the content shrinks), a horizontal flip with probability ``p_flip`` (no vertical
    flip: the probe is at the top), about the frame's true centre, zeros outside the frame
    (frame and mask). Rotation is limited to ±15 degrees (nnU-Net rotates 2D data freely),
    since an ultrasound frame has a fixed up.

    Intensity, on the frame only and in nnU-Net's order, each with its probability: Gaussian
    noise of variance uniform in ``noise_variance`` times the frame's (``p_noise``), Gaussian
    blur of sigma uniform in ``blur_sigma`` (``p_blur``), multiplicative brightness
    (``p_brightness``), contrast about the frame's mean (``p_contrast``), gamma in ``gamma``
    (below and above 1 equally often; ``p_gamma``) or, with ``p_gamma_inverted``, on the
    inverted intensities. Values are clipped to 0-255 and rounded to uint8; gamma works on
    the 0-255 range (nnU-Net on each image's own range, then restores its mean and SD).
    Noise and blur run only on the frames that draw them, and brightness, contrast and gamma
    are one lookup table per frame, so the batch costs little more than its resampling; frames
    whose geometry is only a flip (most of them) are flipped, not resampled.
    """

    fill_mode = "constant"
    keras_centre = False

    def __init__(
        self,
        rotation=15.0,
        p_rotation=0.2,
        scale=(0.85, 1.25),
        p_scale=0.2,
        p_flip=0.5,
        noise_variance=(0.0, 0.1),
        p_noise=0.1,
        blur_sigma=(0.5, 1.0),
        p_blur=0.2,
        brightness=(0.75, 1.25),
        p_brightness=0.15,
        contrast=(0.75, 1.25),
        p_contrast=0.15,
        gamma=(0.7, 1.5),
        p_gamma=0.3,
        p_gamma_inverted=0.1,
        interpolation="bilinear",
    ):
        super().__init__(rotation_range=rotation, width_shift_range=0.0, height_shift_range=0.0,
                         shear_range=0.0, zoom_range=tuple(scale), horizontal_flip=p_flip > 0,
                         interpolation=interpolation)
        self.p_rotation, self.p_scale, self.p_flip = float(p_rotation), float(p_scale), float(p_flip)
        self.noise_variance, self.p_noise = tuple(map(float, noise_variance)), float(p_noise)
        self.blur_sigma, self.p_blur = tuple(map(float, blur_sigma)), float(p_blur)
        self.brightness, self.p_brightness = tuple(map(float, brightness)), float(p_brightness)
        self.contrast, self.p_contrast = tuple(map(float, contrast)), float(p_contrast)
        self.gamma, self.p_gamma = tuple(map(float, gamma)), float(p_gamma)
        self.p_gamma_inverted = float(p_gamma_inverted)
        probabilities = (self.p_rotation, self.p_scale, self.p_flip, self.p_noise, self.p_blur,
                         self.p_brightness, self.p_contrast, self.p_gamma, self.p_gamma_inverted)
        if not all(0 <= p <= 1 for p in probabilities) or self.p_gamma + self.p_gamma_inverted > 1:
            raise ConfigError(f"augmentation probabilities must lie in [0, 1]: {self!r}")

    def __repr__(self):
        return (
            f"StrongAugmentation(rotation={self.rotation_range}, p_rotation={self.p_rotation}, "
            f"scale={self.zoom_range}, p_scale={self.p_scale}, p_flip={self.p_flip}, "
            f"noise_variance={self.noise_variance}, p_noise={self.p_noise}, "
            f"blur_sigma={self.blur_sigma}, p_blur={self.p_blur}, "
            f"brightness={self.brightness}, p_brightness={self.p_brightness}, "
            f"contrast={self.contrast}, p_contrast={self.p_contrast}, gamma={self.gamma}, "
            f"p_gamma={self.p_gamma}, p_gamma_inverted={self.p_gamma_inverted}, "
            f"interpolation={self.interpolation!r})"
        )

    def random_parameters(self, n, height, width, seed):
        """The geometric draws, in ``PaperAugmentation.random_parameters``' keys (no shift,
        no shear, ``zx == zy``); each transform applied with its probability."""
        u = tf.unstack(tf.random.stateless_uniform([n, 5], seed=_seed_pair(seed)), axis=1)
        low, high = self.zoom_range
        zero = tf.zeros_like(u[0])
        rotate = u[0] < self.p_rotation
        scaled = u[2] < self.p_scale
        zoom = tf.where(scaled, low + (high - low) * u[3], tf.ones_like(u[3]))
        return {
            "theta": tf.where(rotate, (2.0 * u[1] - 1.0) * self.rotation_range, zero),
            "tx": zero,
            "ty": zero,
            "shear": zero,
            "zx": zoom,
            "zy": zoom,
            "flip": tf.cast(u[4] < self.p_flip, tf.float32),
        }

    def intensity_parameters(self, n, seed):
        """``[n, 6]`` float32 draws, columns ``INTENSITY_COLUMNS``: noise SD as a share of the
        frame's SD (0: none), blur sigma (0: none), brightness, contrast and gamma factors (1:
        none) and 1 where the gamma works on inverted intensities. Independent of the geometric
        draws of the same ``seed``."""
        key = tf.random.experimental.stateless_fold_in(_seed_pair(seed), 1)
        u = tf.unstack(tf.random.stateless_uniform([n, 11], seed=key), axis=1)
        zero, one = tf.zeros_like(u[0]), tf.ones_like(u[0])

        def between(bounds, draw):
            return bounds[0] + (bounds[1] - bounds[0]) * draw

        low, high = self.gamma
        gamma_value = tf.where(u[10] < 0.5, between((low, min(high, 1.0)), u[9]),
                               between((max(low, 1.0), high), u[9]))
        gamma_inverted = u[8] < self.p_gamma_inverted
        with_gamma = u[8] < self.p_gamma_inverted + self.p_gamma
        columns = [
            tf.where(u[0] < self.p_noise, tf.sqrt(between(self.noise_variance, u[1])), zero),
            tf.where(u[2] < self.p_blur, between(self.blur_sigma, u[3]), zero),
            tf.where(u[4] < self.p_brightness, between(self.brightness, u[5]), one),
            tf.where(u[6] < self.p_contrast, between(self.contrast, u[7]), one),
            tf.where(with_gamma, gamma_value, one),
            tf.cast(gamma_inverted, tf.float32),
        ]
        return tf.stack(columns, axis=1)

    def _intensity_arguments(self, images, seed):
        self._check_dtype(images)
        n = tf.shape(images)[0]
        key = tf.random.experimental.stateless_fold_in(_seed_pair(seed), 2)  # noise fields
        return [self.intensity_parameters(n, seed), key]

    def _intensity(self, images, seed):
        new_images = tf.numpy_function(
            _intensity_batch, [images, *self._intensity_arguments(images, seed)], images.dtype,
            stateful=False,
        )
        new_images.set_shape(images.shape)
        return new_images

    @staticmethod
    def _check_dtype(images):
        if images.dtype != tf.uint8:
            raise ConfigError(
                f"strong augmentation changes intensities of uint8 frames, got {images.dtype.name}"
            )


def make_augmentation(policy="paper", interpolation="bilinear"):
    """The augmentation of a ``config.AUGMENT_POLICIES`` name: ``PaperAugmentation()`` (the
    paper's ranges) or ``StrongAugmentation()`` (nnU-Net's), resampling with ``interpolation``."""
    if policy not in AUGMENT_POLICIES:
        raise ConfigError(
            f"unknown augmentation policy {policy!r}: use one of {', '.join(AUGMENT_POLICIES)}"
        )
    kind = StrongAugmentation if policy == "strong" else PaperAugmentation
    return kind(interpolation=interpolation)


def _warp_bilinear(images, masks, matrices, constant=False, intensity=None, noise_key=None):
    """NumPy side of bilinear augmentation: OpenCV resamples each frame and mask.

    Frames keep their dtype (uint8 rounded to the nearest level; types OpenCV cannot resample
    go through float32 and are rounded back); masks are resampled as 0/255 and thresholded at
    half, as the notebooks thresholded at 0.5. ``constant`` fills outside the frame with 0
    instead of repeating the edges; ``intensity`` (with ``noise_key``) are the frames'
    ``StrongAugmentation.intensity_parameters``, applied to the resampled frames.
    """
    source = images if images.dtype in _OPENCV_DTYPES else images.astype(np.float32)
    levels = masks.astype(bool).astype(np.uint8) * np.uint8(255)
    new_images = np.empty_like(images)
    new_masks = np.empty_like(masks)
    for i, row in enumerate(matrices):
        affine = np.asarray(row[:6], np.float64).reshape(2, 3)
        frame = _warp(source[i], affine, constant)
        if source.dtype != images.dtype and np.issubdtype(images.dtype, np.integer):
            frame = np.rint(frame)
        new_images[i] = frame
        new_masks[i] = _warp(levels[i], affine, constant) > 127
    if intensity is not None:
        new_images = _intensity_batch(new_images, intensity, noise_key)
    return new_images, new_masks


def _warp(picture, affine, constant=False):
    """``picture`` [H, W, C] resampled bilinearly at ``affine`` (output to input), edges kept
    (or 0 outside with ``constant``). An identity or a pure horizontal flip is copied, which
    is what the resampling gives at whole-pixel positions."""
    height, width = picture.shape[:2]
    (a, b, c), (d, e, f) = affine.tolist()
    if abs(b) < 1e-6 and abs(d) < 1e-6 and abs(e - 1) < 1e-6 and abs(f) < 1e-4:
        if abs(a - 1) < 1e-6 and abs(c) < 1e-4:
            return picture.reshape(height, width, -1).copy()
        if abs(a + 1) < 1e-6 and abs(c - (width - 1)) < 1e-4:
            return picture[:, ::-1].reshape(height, width, -1).copy()
    if picture.shape[-1] > 4:  # OpenCV resamples at most 4 channels at once
        channels = range(picture.shape[-1])
        return np.concatenate([_warp(picture[..., c:c + 1], affine, constant) for c in channels], -1)
    moved = cv2.warpAffine(
        picture, affine, (width, height),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT if constant else cv2.BORDER_REPLICATE,
    )
    return moved.reshape(height, width, -1)


def _intensity_batch(images, intensity, noise_key):
    """NumPy side of the strong intensity transforms: uint8 frames [B, H, W, C], their
    ``intensity_parameters`` [B, 6] and the batch's noise key (int64 [2])."""
    entropy = [int(word) for word in np.asarray(noise_key, np.int64).view(np.uint64)]
    out = images.copy()
    for i, (noise, blur, brightness, contrast, gamma, inverted) in enumerate(intensity):
        frame = out[i]
        channels = frame.shape[-1]
        if noise > 0 or blur > 0:
            values = frame.astype(np.float32)
            if noise > 0:
                sd = float(np.mean(cv2.meanStdDev(frame)[1]))
                field = np.random.default_rng([*entropy, i + 1]).standard_normal(
                    values.shape, np.float32)
                values += field * np.float32(noise * sd)
            if blur > 0:
                values = cv2.GaussianBlur(values, (0, 0), float(blur))
            # Clipped at 0, then rounded and saturated at 255 (OpenCV: fast, as np.rint + clip).
            frame = cv2.convertScaleAbs(cv2.max(values, 0.0)).reshape(frame.shape)
        if brightness != 1 or contrast != 1 or gamma != 1:
            mean = float(np.mean(cv2.mean(frame)[:channels]))
            table = intensity_table(brightness, contrast, gamma, inverted, mean)
            frame = cv2.LUT(frame, table).reshape(frame.shape)
        out[i] = frame
    return out


def intensity_table(brightness=1.0, contrast=1.0, gamma=1.0, inverted=False, mean=127.5):
    """The 256-level lookup table of brightness, then contrast about ``mean`` (the frame's mean
    gray level), then gamma (on inverted intensities with ``inverted``), clipped to 0-255."""
    levels = np.arange(256, dtype=np.float64) * brightness
    levels = (levels - mean * brightness) * contrast + mean * brightness
    levels = np.clip(levels, 0, 255) / 255
    levels = 1 - (1 - levels) ** gamma if inverted else levels**gamma
    return np.clip(np.rint(levels * 255), 0, 255).astype(np.uint8)


# Pixel types OpenCV's warpAffine resamples directly.
_OPENCV_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)


def pack(images, masks, dtype=tf.int32):
    """One ``dtype`` channel per pixel: the uint8 frame in the low byte, the 0/1 mask above it.

    The projective transform's cost is per output value, so moving one packed channel costs
    half as much as moving frame and mask as two channels. A cached data set is packed once
    as uint16 (half the memory of int32).
    """
    mask_bits = tf.bitwise.left_shift(tf.cast(tf.cast(masks, tf.bool), dtype), 8)
    return tf.bitwise.bitwise_or(tf.cast(images, dtype), mask_bits)


def unpack(packed, mask_dtype=tf.uint8):
    """Inverse of ``pack``: (uint8 frames, 0/1 masks of ``mask_dtype``)."""
    packed = tf.cast(packed, tf.int32)
    images = tf.cast(tf.bitwise.bitwise_and(packed, 255), tf.uint8)
    masks = tf.cast(packed > 255, mask_dtype)
    return images, masks


def _seed_pair(seed):
    """An int or a shape-[2] tensor -> the int64 shape-[2] seed stateless ops take."""
    if isinstance(seed, int):
        return tf.constant([seed, 0], tf.int64)
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    if seed.shape.rank == 0:
        return tf.stack([seed, tf.zeros_like(seed)])
    return seed
