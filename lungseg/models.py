"""V-Unet and X-Unet (Cheng & Lam, 2021), and freezing their parts by layer name.

Both models take frames as stored on disk (values 0-255, 1 or 3 channels) and do the paper's
preprocessing inside the graph: ``Rescaling(1/255)`` and, for gray input, a channel copy to
three channels. Training, evaluation and inference therefore cannot disagree about it.
:class:`FlipLeftRight`, the mirror layer of flip test-time augmentation, is registered here
beside them, so every layer of a saved lungseg model loads by importing this module.

Written with ``keras`` only (no TensorFlow import), so the models build on any Keras backend.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import keras
from keras import layers, ops

from lungseg.config import INITIALIZERS
from lungseg.errors import ConfigError, WeightsUnavailableError, first_line

DECODER_FILTERS = (512, 256, 128, 64)
VGG16_NOTOP_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
# Layers of VGG16 used as skip connections, deepest first, and the bridge.
VUNET_SKIPS = ("block4_conv3", "block3_conv3", "block2_conv2", "block1_conv2")
VUNET_BRIDGE = "block5_conv3"
# VGG16's convolutions (two per block in blocks 1-2, three in 3-5), as V-Unet names them.
VGG16_CONVS = tuple(f"block{block}_conv{conv}" for block, convs in enumerate((2, 2, 3, 3, 3), start=1)
                    for conv in range(1, convs + 1))


@keras.saving.register_keras_serializable(package="lungseg")
class FlipLeftRight(keras.layers.Layer):
    """Mirror (batch, height, width, channels) images left-right (exactly; no resampling).

    Registered as ``lungseg>FlipLeftRight``, the name ensembles saved with flip TTA hold.
    """

    def call(self, inputs: Any) -> Any:
        return ops.flip(inputs, axis=2)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape


def _check_input_shape(input_shape: tuple) -> None:
    if len(input_shape) != 3:
        raise ConfigError(f"input_shape must be (height, width, channels), got {input_shape}")
    height, width, channels = input_shape
    if channels not in (1, 3):
        raise ConfigError(f"input_shape must have 1 or 3 channels, got {channels}")
    for side in (height, width):
        if side is None or side % 16 or side < 16:
            raise ConfigError(
                f"input sides must be multiples of 16 (four 2x2 poolings), got {height} x {width}"
            )


def _preprocess(inputs: keras.KerasTensor) -> keras.KerasTensor:
    """0-255 frames -> 0-1, gray copied to 3 channels (the paper's input handling)."""
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    if inputs.shape[-1] == 1:
        x = layers.Concatenate(name="gray_to_rgb")([x, x, x])
    return x


def _check_initializer(initializer: str) -> None:
    if initializer not in INITIALIZERS:
        raise ConfigError(f"initializer must be one of {', '.join(INITIALIZERS)}, got {initializer!r}")


def _conv(x: keras.KerasTensor, filters: int, name: str, initializer: str) -> keras.KerasTensor:
    return layers.Conv2D(
        filters, 3, padding="same", activation="relu", kernel_initializer=initializer, name=name
    )(x)


def _decoder(x: keras.KerasTensor, skips: list, initializer: str) -> keras.KerasTensor:
    """Four levels: 2x2 transposed conv (linear), concat with the skip, two 3x3 ReLU convs."""
    for level, (filters, skip) in zip((4, 3, 2, 1), zip(DECODER_FILTERS, skips)):
        x = layers.Conv2DTranspose(
            filters, 2, strides=2, padding="same", name=f"decoder{level}_up"
        )(x)
        x = layers.Concatenate(name=f"decoder{level}_concat")([x, skip])
        x = _conv(x, filters, f"decoder{level}_conv1", initializer)
        x = _conv(x, filters, f"decoder{level}_conv2", initializer)
    return layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="mask")(x)


def build_vunet(
    input_shape: tuple = (256, 256, 1),
    encoder_weights: str | Path | None = "imagenet",
    initializer: str = "glorot_uniform",
) -> keras.Model:
    """V-Unet: U-Net decoder on a VGG16 encoder (bridge ``block5_conv3``, last pool unused).

    ``encoder_weights`` is ``"imagenet"`` (downloaded once by Keras into ``~/.keras/models/``),
    ``None`` (random initialisation) or the path of a local VGG16 no-top weights file.
    ``initializer`` sets the decoder's ReLU convolutions and, with ``encoder_weights=None``,
    the encoder's too (one of ``INITIALIZERS``; the paper: Keras' default ``glorot_uniform``).
    25,854,657 parameters; 14,714,688 of them in the encoder.
    """
    _check_input_shape(input_shape)
    _check_initializer(initializer)
    inputs = keras.Input(shape=input_shape, name="image")
    x = _preprocess(inputs)
    vgg = _vgg16(x, encoder_weights)
    if encoder_weights is None and initializer != "glorot_uniform":
        _reinitialize_kernels(vgg, initializer)
    skips = [vgg.get_layer(name).output for name in VUNET_SKIPS]
    outputs = _decoder(vgg.get_layer(VUNET_BRIDGE).output, skips, initializer)
    return keras.Model(inputs, outputs, name="vunet")


def _reinitialize_kernels(model: keras.Model, initializer: str) -> None:
    """Draw every convolution kernel of ``model`` afresh from ``initializer``."""
    draw = keras.initializers.get(initializer)
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            layer.kernel.assign(draw(layer.kernel.shape, layer.kernel.dtype))


def _vgg16(x: keras.KerasTensor, encoder_weights: str | Path | None) -> keras.Model:
    if encoder_weights is None or encoder_weights == "imagenet":
        weights = encoder_weights
    else:
        weights = Path(encoder_weights).expanduser()
        if not weights.is_file():
            raise WeightsUnavailableError(f"{weights}: VGG16 weights file does not exist")
        weights = str(weights)
    try:
        return keras.applications.VGG16(include_top=False, weights=weights, input_tensor=x)
    except WeightsUnavailableError:
        raise
    except Exception as error:  # Keras raises a bare Exception on a failed download
        if encoder_weights != "imagenet":
            raise WeightsUnavailableError(
                f"{weights}: not a VGG16 no-top weights file ({error})"
            ) from error
        raise WeightsUnavailableError(
            "could not download the ImageNet VGG16 weights "
            f"({first_line(error)}). "
            "To work offline, copy "
            f"{VGG16_NOTOP_FILE} into ~/.keras/models/, or give its path (--encoder-weights "
            "PATH), or start from random weights (--encoder-weights none; encoder_weights=None "
            "in Python)"
        ) from error


def copy_vgg16_encoder(source: keras.Model, target: keras.Model) -> None:
    """Copy the weights of ``source``'s VGG16 convolutions (a V-Unet's ``block1_conv1`` ...
    ``block5_conv3``) into ``target``'s layers of the same names. ``ConfigError`` in one line
    when ``source`` lacks one or holds it with other shapes (an X-Unet, another model)."""
    missing, mismatched = [], []
    for name in VGG16_CONVS:
        try:
            layer = source.get_layer(name)
        except ValueError:
            missing.append(name)
            continue
        if [w.shape for w in layer.weights] != [w.shape for w in target.get_layer(name).weights]:
            mismatched.append(name)
    if missing or mismatched:
        what = "; ".join(f"{label} {', '.join(names)}" for label, names in
                         (("no layer", missing), ("other weight shapes in", mismatched)) if names)
        raise ConfigError(f"not a V-Unet's VGG16 encoder ({what})")
    for name in VGG16_CONVS:
        target.get_layer(name).set_weights(source.get_layer(name).get_weights())


def build_xunet(input_shape: tuple = (256, 256, 1), initializer: str = "glorot_uniform") -> keras.Model:
    """X-Unet: the plain U-Net (64-128-256-512 encoder, 1024 bottleneck). 31,031,745 parameters.

    ``initializer`` sets the kernels of its ReLU convolutions (one of ``INITIALIZERS``; the
    paper: Keras' default ``glorot_uniform``).
    """
    _check_input_shape(input_shape)
    _check_initializer(initializer)
    inputs = keras.Input(shape=input_shape, name="image")
    x = _preprocess(inputs)
    skips = []
    for block, filters in enumerate((64, 128, 256, 512), start=1):
        x = _conv(x, filters, f"block{block}_conv1", initializer)
        x = _conv(x, filters, f"block{block}_conv2", initializer)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    x = _conv(x, 1024, "bottleneck_conv1", initializer)
    x = _conv(x, 1024, "bottleneck_conv2", initializer)
    outputs = _decoder(x, skips[::-1], initializer)
    return keras.Model(inputs, outputs, name="xunet")


PARTS = ("encoder", "bottleneck", "decoder")


def part_layers(model: keras.Model, part: str | Iterable[str]) -> list[str]:
    """Names of the layers with weights that make up ``part`` of a V-Unet or X-Unet.

    ``encoder``: every ``block*`` layer (VGG16's blocks 1-5 in V-Unet, blocks 1-4 in X-Unet).
    ``bottleneck``: the lowest-resolution convolutions (X-Unet's two 1024-filter convs,
    V-Unet's ``block5`` convs). ``decoder``: the ``decoder*`` layers and the ``mask`` head.
    A list selects the layers it names, and the parts it names.
    """
    with_weights = [layer.name for layer in model.layers if layer.weights]
    if isinstance(part, str):
        if part not in PARTS:
            raise ConfigError(f"unknown part {part!r}: use one of {', '.join(PARTS)} or layer names")
        prefixes = {
            "encoder": ("block",),
            "bottleneck": ("bottleneck_", "block5_"),
            "decoder": ("decoder", "mask"),
        }[part]
        return [name for name in with_weights if name.startswith(prefixes)]
    names = []
    for item in part:
        names += part_layers(model, item) if item in PARTS else [item]
    unknown = [name for name in names if name not in with_weights]
    if unknown:
        raise ConfigError(f"no layer with weights named {', '.join(unknown)} in {model.name}")
    return names


def parameter_counts(model: keras.Model) -> tuple[int, int]:
    """(trainable, frozen) parameter counts as Keras sees them now."""
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    frozen = sum(math.prod(w.shape) for w in model.non_trainable_weights)
    return trainable, frozen


def freeze(model: keras.Model, part: str | Iterable[str]) -> tuple[int, int]:
    """Make the layers of ``part`` untrainable; return (trainable, frozen) parameter counts.

    Changing ``trainable`` takes effect in training only after the model is compiled again.
    """
    for name in part_layers(model, part):
        model.get_layer(name).trainable = False
    return parameter_counts(model)


def unfreeze(model: keras.Model, part: str | Iterable[str] | None = None) -> tuple[int, int]:
    """Make ``part`` (all layers when ``None``) trainable; return (trainable, frozen) counts."""
    names = [layer.name for layer in model.layers] if part is None else part_layers(model, part)
    for name in names:
        model.get_layer(name).trainable = True
    return parameter_counts(model)


def with_policy(model: keras.Model, policy: str | keras.DTypePolicy = "float32") -> keras.Model:
    """``model`` computing under the dtype ``policy``, its output layers kept in float32.

    This is how ``build_vunet`` and ``build_xunet`` lay a policy out (the sigmoid head in
    float32 under any policy), applied to a model that exists: a float32 model loaded for
    fine-tuning takes the run's mixed policy (Keras keeps each layer's saved policy when
    loading, whatever the global one). Returns ``model`` itself when its layers already
    compute so; otherwise an uncompiled copy rebuilt from its config, with its weights. Works
    on flat functional models (as lungseg builds) on any Keras backend.
    """
    config, changed = _config_with_policy(model, policy)
    return _copy_weights(model, _from_config(model, config, policy)) if changed else model


def inference_copy(model: keras.Model, into: keras.Model | None = None) -> keras.Model:
    """An uncompiled float32 copy of ``model`` with its weights, for saving and inference.

    Whatever policy trained it, the copy computes in float32, so prediction and export are
    neither slowed nor changed by the training precision; it holds no optimizer, loss or
    metrics, so its ``.keras`` file is a third of a compiled one trained with Adam and loads
    with plain Keras. ``into``, an earlier copy of the same model, is refreshed with
    ``model``'s weights instead of rebuilt (a save per epoch then costs a weight copy).
    """
    if into is None:
        config, _ = _config_with_policy(model, "float32")
        into = _from_config(model, config, "float32")
    return _copy_weights(model, into)


def _config_with_policy(model: keras.Model, policy: str | keras.DTypePolicy) -> tuple[dict, bool]:
    """``model``'s config with every layer under ``policy`` (heads float32); and whether it changed."""
    policy = keras.dtype_policies.get(policy)
    float32 = keras.dtype_policies.get("float32")
    config = model.get_config()
    heads = config["output_layers"]
    heads = {heads[0]} if heads and isinstance(heads[0], str) else {head[0] for head in heads}
    changed = False
    for layer in config["layers"]:
        dtype = layer["config"].get("dtype")
        if layer["class_name"] == "InputLayer" or dtype is None:
            continue
        target = float32 if layer["name"] in heads else policy
        if keras.dtype_policies.get(dtype).name != target.name:
            layer["config"]["dtype"] = keras.dtype_policies.serialize(target)
            changed = True
    return config, changed


def _from_config(model: keras.Model, config: dict, policy: str | keras.DTypePolicy) -> keras.Model:
    copy = model.__class__.from_config(config)
    copy.dtype_policy = keras.dtype_policies.get(policy)  # decides e.g. float16 loss scaling in compile
    return copy


def _copy_weights(model: keras.Model, into: keras.Model) -> keras.Model:
    if [w.shape for w in into.weights] != [w.shape for w in model.weights]:
        raise ValueError(f"{into.name} does not have the weights of {model.name}")
    for target, source in zip(into.weights, model.weights):
        target.assign(source.value)
    return into
