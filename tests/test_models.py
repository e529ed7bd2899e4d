"""V-Unet and X-Unet: the paper's parameter counts, layer names, freezing, weights loading."""

import ast
from pathlib import Path

import keras
import numpy as np
import pytest

from lungseg import build_vunet, build_xunet, freeze, unfreeze
from lungseg.errors import ConfigError, WeightsUnavailableError
from lungseg.models import part_layers

VUNET_PARAMS = 25_854_657
XUNET_PARAMS = 31_031_745
VGG16_NOTOP_PARAMS = 14_714_688


@pytest.fixture(scope="module")
def vunet():
    return build_vunet(encoder_weights=None)


@pytest.fixture(scope="module")
def xunet():
    return build_xunet()


@pytest.mark.parametrize("channels", [1, 3])
def test_parameter_counts_match_the_paper(channels):
    assert build_vunet((256, 256, channels), encoder_weights=None).count_params() == VUNET_PARAMS
    assert build_xunet((256, 256, channels)).count_params() == XUNET_PARAMS


@pytest.mark.parametrize(
    "builder, part, trainable, frozen",
    [
        ("vunet", "encoder", 11_139_969, VGG16_NOTOP_PARAMS),
        # block5_conv1..3: 3 x (3*3*512*512 + 512)
        ("vunet", "bottleneck", VUNET_PARAMS - 7_079_424, 7_079_424),
        ("vunet", "decoder", VGG16_NOTOP_PARAMS, 11_139_969),
        # blocks 1-4: 1792 + 36928 + 73856 + 147584 + 295168 + 590080 + 1180160 + 2359808
        ("xunet", "encoder", XUNET_PARAMS - 4_685_376, 4_685_376),
        # 3*3*512*1024 + 1024 and 3*3*1024*1024 + 1024
        ("xunet", "bottleneck", XUNET_PARAMS - 14_157_824, 14_157_824),
        ("xunet", "decoder", 4_685_376 + 14_157_824, XUNET_PARAMS - 4_685_376 - 14_157_824),
        ("xunet", ["bottleneck_conv1"], XUNET_PARAMS - 4_719_616, 4_719_616),
    ],
)
def test_freeze_splits_trainable_and_frozen_counts(builder, part, trainable, frozen, request):
    model = request.getfixturevalue(builder)
    try:
        assert freeze(model, part) == (trainable, frozen)
        assert sum(np.prod(w.shape) for w in model.non_trainable_weights) == frozen
    finally:
        assert unfreeze(model) == (trainable + frozen, 0)


def test_unfreeze_one_part_leaves_the_others_frozen(xunet):
    freeze(xunet, "encoder")
    freeze(xunet, "bottleneck")
    try:
        assert unfreeze(xunet, "bottleneck") == (XUNET_PARAMS - 4_685_376, 4_685_376)
    finally:
        unfreeze(xunet)


def test_part_selections_hold_exactly_the_right_layers(vunet, xunet):
    vgg_convs = [f"block{b}_conv{c}" for b, n in zip(range(1, 6), (2, 2, 3, 3, 3)) for c in range(1, n + 1)]
    decoder = [f"decoder{n}_{kind}" for n in (4, 3, 2, 1) for kind in ("up", "conv1", "conv2")]
    assert part_layers(vunet, "encoder") == vgg_convs
    assert part_layers(vunet, "bottleneck") == ["block5_conv1", "block5_conv2", "block5_conv3"]
    assert part_layers(vunet, "decoder") == decoder + ["mask"]
    assert part_layers(xunet, "encoder") == [f"block{b}_conv{c}" for b in range(1, 5) for c in (1, 2)]
    assert part_layers(xunet, "bottleneck") == ["bottleneck_conv1", "bottleneck_conv2"]
    assert part_layers(xunet, "decoder") == decoder + ["mask"]


def test_unknown_part_or_layer_is_a_clear_error(xunet):
    with pytest.raises(ConfigError, match="unknown part 'middle'"):
        freeze(xunet, "middle")
    with pytest.raises(ConfigError, match="no layer with weights named block9_conv1"):
        freeze(xunet, ["block9_conv1"])


@pytest.mark.parametrize("builder", ["vunet", "xunet"])
def test_layer_names_unique_no_lambda_float32_sigmoid_head(builder, request):
    model = request.getfixturevalue(builder)
    names = [layer.name for layer in model.layers]
    assert len(names) == len(set(names))
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in model.layers)
    head = model.get_layer("mask")
    assert head.dtype_policy.compute_dtype == "float32"
    assert head.activation is keras.activations.sigmoid
    assert model.output_shape == (None, 256, 256, 1)
    assert isinstance(model.get_layer("rescale"), keras.layers.Rescaling)
    assert isinstance(model.get_layer("gray_to_rgb"), keras.layers.Concatenate)


def test_models_take_raw_gray_frames_of_any_multiple_of_16():
    model = build_xunet((48, 32, 1))
    frame = np.full((1, 48, 32, 1), 255.0, np.float32)
    # The first layers turn 0-255 gray into 0-1 three-channel input.
    head = keras.Model(model.input, model.get_layer("gray_to_rgb").output)
    np.testing.assert_allclose(np.asarray(head(frame)), np.ones((1, 48, 32, 3)), rtol=1e-6)
    assert model.predict(frame, verbose=0).shape == (1, 48, 32, 1)


def _kernel_std(model, name):
    return float(np.std(keras.ops.convert_to_numpy(model.get_layer(name).kernel)))


def test_initializer_sets_the_relu_convolutions_trained_from_scratch():
    # A 3x3 conv from 128 to 256 channels: fan_in 1152, fan_out 2304. glorot_uniform draws with
    # SD sqrt(2 / (fan_in + fan_out)) = 0.0241, he_normal with sqrt(2 / fan_in) = 0.0417.
    glorot, he = (2 / (1152 + 2304)) ** 0.5, (2 / 1152) ** 0.5
    keras.utils.set_random_seed(0)
    assert _kernel_std(build_xunet((32, 32, 1)), "block3_conv1") == pytest.approx(glorot, rel=0.03)
    xunet = build_xunet((32, 32, 1), initializer="he_normal")
    assert _kernel_std(xunet, "block3_conv1") == pytest.approx(he, rel=0.03)
    # decoder3_conv2: 256 -> 256 channels, fan_in 2304.
    assert _kernel_std(xunet, "decoder3_conv2") == pytest.approx((2 / 2304) ** 0.5, rel=0.03)
    # The linear up-convolutions and the sigmoid head keep Keras' default.
    assert xunet.get_layer("decoder3_up").kernel_initializer.__class__.__name__ == "GlorotUniform"
    assert xunet.get_layer("mask").kernel_initializer.__class__.__name__ == "GlorotUniform"
    # A random VGG16 encoder is redrawn too; the decoder in any case.
    vunet = build_vunet((32, 32, 1), encoder_weights=None, initializer="he_normal")
    assert _kernel_std(vunet, "block3_conv1") == pytest.approx(he, rel=0.03)
    assert _kernel_std(vunet, "decoder3_conv2") == pytest.approx((2 / 2304) ** 0.5, rel=0.03)
    with pytest.raises(ConfigError, match="initializer must be one of glorot_uniform, he_normal"):
        build_xunet((32, 32, 1), initializer="zeros")


@pytest.mark.parametrize("shape", [(250, 256, 1), (256, 256, 2), (256, 256)])
def test_bad_input_shapes_are_refused(shape):
    with pytest.raises(ConfigError):
        build_xunet(shape)


def test_imagenet_weights_offline_gives_one_clear_error(no_download):
    with pytest.raises(WeightsUnavailableError) as error:
        build_vunet((32, 32, 1), encoder_weights="imagenet")
    message = str(error.value)
    assert message.startswith("could not download the ImageNet VGG16 weights (Exception: URL fetch "
                              "failure on https://")
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert "~/.keras/models/" in message
    assert message.endswith("or start from random weights (--encoder-weights none; "
                            "encoder_weights=None in Python)")


def test_encoder_weights_load_from_a_local_file(tmp_path):
    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "vgg16_notop.weights.h5"
    vgg.save_weights(path)
    # Loaded weights are kept whatever the initializer of the layers trained from scratch.
    model = build_vunet((32, 32, 1), encoder_weights=str(path), initializer="he_normal")
    for name in ("block1_conv1", "block5_conv3"):
        for loaded, saved in zip(model.get_layer(name).get_weights(), vgg.get_layer(name).get_weights()):
            np.testing.assert_array_equal(loaded, saved)


def test_missing_local_weights_file_is_named(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="nope.h5: VGG16 weights file does not exist"):
        build_vunet((32, 32, 1), encoder_weights=tmp_path / "nope.h5")


# A compiled X-Unet's round trip through .keras in a fresh process (its loss, its weights to the
# bit, its predictions to 1e-6), after each import order: test_startup.py.


def _imports(path):
    """Top-level module names imported by a source file, and the lungseg modules it imports."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def test_model_and_loss_code_never_imports_tensorflow():
    """Models and losses, and every lungseg module they import, run on any Keras backend."""
    root = Path(__file__).resolve().parents[1]
    todo, seen = ["lungseg", "lungseg.models", "lungseg.losses"], set()
    while todo:
        module = todo.pop()
        path = root / (module.replace(".", "/") + ".py")
        if not path.exists():
            path = root / module.replace(".", "/") / "__init__.py"
        if module in seen or not path.exists():
            continue
        seen.add(module)
        imported = _imports(path)
        assert not any(m.split(".")[0] == "tensorflow" for m in imported), f"{path} imports tensorflow"
        todo += [m for m in imported if m.startswith("lungseg")]
    assert {"lungseg", "lungseg.models", "lungseg.losses", "lungseg.errors"} <= seen


def policies(model):
    return {layer.name: layer.dtype_policy.name for layer in model.layers[1:]}  # after the input


@pytest.fixture
def global_policy():
    """Set Keras' global dtype policy for one test, float32 again afterwards."""
    yield keras.mixed_precision.set_global_policy
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("builder", [build_xunet, lambda shape: build_vunet(shape, encoder_weights=None)])
def test_with_policy_lays_out_a_policy_as_the_builders_do(builder, global_policy):
    from lungseg.models import inference_copy, with_policy

    global_policy("mixed_bfloat16")
    built_mixed = builder((32, 32, 1))
    global_policy("float32")
    model = builder((32, 32, 1))
    assert with_policy(model, "float32") is model  # already float32: nothing rebuilt
    mixed = with_policy(model, "mixed_bfloat16")
    assert policies(mixed) == policies(built_mixed)
    assert policies(mixed)["mask"] == "float32"  # the sigmoid head stays float32
    back = inference_copy(mixed)
    assert set(policies(back).values()) == {"float32"}
    assert not back.compiled  # nothing of training travels
    frames = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 1)).astype(np.uint8)
    expected = model.predict(frames, verbose=0)
    np.testing.assert_array_equal(back.predict(frames, verbose=0), expected)
    in_bf16 = mixed.predict(frames, verbose=0)
    assert in_bf16.dtype == np.float32 and not np.array_equal(in_bf16, expected)
    np.testing.assert_allclose(in_bf16, expected, atol=0.05)
    # A later save refreshes the same copy with the current weights.
    mixed.get_layer("decoder1_conv2").kernel.assign(np.zeros((3, 3, 64, 64), np.float32))
    assert inference_copy(mixed, into=back) is back
    np.testing.assert_array_equal(back.get_layer("decoder1_conv2").get_weights()[0], 0)
