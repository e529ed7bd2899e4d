"""Slim model files that plain Keras loads, and lungseg-export run by each format's runtime."""

import contextlib
import importlib.util
import io
import json
import subprocess
import sys
import textwrap
import zipfile

import keras
import numpy as np
import pytest

import lungseg
from conftest import narrow_xunet
from lungseg.export import main
from lungseg.inference import ensemble, inference_copy, save_inference_model
from lungseg.predict import load_model, model_batch, predict_probabilities


def frames(n=3, shape=(32, 32), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


def write_run(root, models):
    """A minimal run folder whose fold_k/model.keras are ``models`` (slim)."""
    from lungseg.config import make_config

    root.mkdir(parents=True)
    config = make_config("xunet", root.name, "quick", folds=len(models), image_size=(32, 32))
    (root / "config.json").write_text(config.to_json())
    for k, model in enumerate(models, start=1):
        save_inference_model(model, root / f"fold_{k}" / "model.keras")
        (root / f"fold_{k}" / "metrics.json").write_text("{}")
    return root


# Loads each model file given (model, batch, output) and saves its predictions, in a process
# that never imports lungseg.
PLAIN_KERAS = textwrap.dedent("""
    import sys
    import keras
    import numpy as np
    arguments = sys.argv[1:]
    for model_path, batch, out in zip(arguments[::3], arguments[1::3], arguments[2::3]):
        model = keras.models.load_model(model_path)
        np.save(out, model.predict(np.load(batch).astype("float32"), verbose=0))
    print("lungseg imported:", any(name.split(".")[0] == "lungseg" for name in sys.modules))
""")


def plain_keras_predict(models, folder):
    """{name: probabilities} of each (model file, batch) in ``models`` ({name: (path, batch)}),
    all loaded and run in one fresh process that never imports lungseg."""
    arguments = []
    for name, (model_path, batch) in models.items():
        np.save(folder / f"{name}_batch.npy", batch)
        arguments += [model_path, folder / f"{name}_batch.npy", folder / f"{name}_out.npy"]
    result = subprocess.run([sys.executable, "-c", PLAIN_KERAS, *map(str, arguments)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "lungseg imported: False" in result.stdout
    return {name: np.load(folder / f"{name}_out.npy")[..., 0] for name in models}


@pytest.fixture(scope="module")
def tiny_run(module_tmp):
    """A run folder of two narrow X-Unets (conftest.narrow_xunet: X-Unet's layers, 1/32 of its
    filters) and what the fold ensemble and fold 2 predict on a batch."""
    models = [narrow_xunet(seed=11), narrow_xunet(seed=12)]
    root = write_run(module_tmp / "run", models)
    batch = frames(3, seed=9)
    expected = np.mean([predict_probabilities(m, batch) for m in models], axis=0)
    return {"root": root, "batch": model_batch(batch, 32, 32, 1).astype(np.float32),
            "expected": expected, "fold_2": predict_probabilities(models[1], batch)}


@pytest.fixture(scope="module")
def plain_keras(tiny_run, module_tmp):
    """A narrow X-Unet loaded from a slim file the way fine-tuning loads one, compiled with
    lungseg's loss and trained a step (so it has Adam state), then saved slim and saved whole;
    and the run exported to the keras format (the ensemble, and fold 2 alone). What the slim
    and exported files predict in a plain Keras process."""
    from lungseg.config import make_config
    from lungseg.training import load_model_for_finetuning

    start = save_inference_model(narrow_xunet(seed=1), module_tmp / "start.keras")
    model = load_model_for_finetuning(start, make_config("xunet", "s", image_size=(32, 32)))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=lungseg.dice_loss, metrics=[lungseg.dice_coef])
    x = np.stack(frames(4, seed=1))[..., None].astype(np.float32)
    history = model.fit(x, (x > 127).astype(np.float32), epochs=1, batch_size=4, verbose=0).history
    slim = save_inference_model(model, module_tmp / "slim.keras")
    model.save(module_tmp / "whole.keras")  # with Adam's state and the compile config
    batch_frames = frames(3, (48, 40), seed=5)
    ensemble_file, fold_file = module_tmp / "ensemble.keras", module_tmp / "fold2.keras"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        codes = [main([str(tiny_run["root"]), "--format", "keras", "--out", str(ensemble_file)]),
                 main([str(tiny_run["root"]), "--fold", "2", "--format", "keras", "--out", str(fold_file)])]
    predicted = plain_keras_predict({"slim": (slim, model_batch(batch_frames, 32, 32, 1)),
                                     "ensemble": (ensemble_file, tiny_run["batch"]),
                                     "fold_2": (fold_file, tiny_run["batch"])}, module_tmp)
    return {"start": start, "model": model, "loss": history["loss"][0], "slim": slim,
            "whole": module_tmp / "whole.keras", "frames": batch_frames, "export_codes": codes,
            "export_output": printed.getvalue(), "predicted": predicted}


def test_slim_file_has_no_optimizer_and_loads_with_plain_keras(plain_keras):
    model, slim = plain_keras["model"], plain_keras["slim"]
    assert len(model.optimizer.variables) > 2 * len(model.trainable_variables)  # Adam's moments
    # The whole file holds Adam's two moments of every weight besides the weights; the slim
    # file only the weights (a full-size one: test_slim_xunet_file_at_256_is_under_130_mb).
    weights_bytes = 4 * model.count_params()
    assert weights_bytes < slim.stat().st_size
    assert plain_keras["whole"].stat().st_size - slim.stat().st_size > 2 * weights_bytes
    with zipfile.ZipFile(slim) as archive:
        assert not json.loads(archive.read("config.json")).get("compile_config")
    with zipfile.ZipFile(plain_keras["whole"]) as archive:  # the control
        assert json.loads(archive.read("config.json"))["compile_config"]
    assert not inference_copy(model).compiled
    assert not [p for p in slim.parent.iterdir() if p.name.startswith(".tmp")]

    batch_frames = plain_keras["frames"]
    expected = predict_probabilities(load_model(slim), batch_frames)
    np.testing.assert_allclose(plain_keras["predicted"]["slim"], expected, atol=1e-6)
    np.testing.assert_allclose(predict_probabilities(model, batch_frames), expected, atol=1e-6)


def test_fine_tuning_starts_from_a_slim_file(plain_keras):
    """The model above was loaded from a slim file as training loads a pre-trained model, and
    its training step changed the weights."""
    assert np.isfinite(plain_keras["loss"])
    start = load_model(plain_keras["start"])
    for name in ("block1_conv1", "bottleneck_conv2", "decoder1_conv2", "mask"):
        before, after = start.get_layer(name).get_weights()[0], plain_keras["model"].get_layer(name).get_weights()[0]
        assert before.shape == after.shape and not np.array_equal(before, after), name


def test_slim_xunet_file_at_256_is_under_130_mb(tmp_path):
    path = save_inference_model(lungseg.build_xunet((256, 256, 1)), tmp_path / "x.keras")
    size_mb = path.stat().st_size / 1e6
    print(f"slim X-Unet 256x256: {size_mb:.1f} MB")
    assert size_mb <= 130


def test_ensemble_is_the_mean_of_its_members_and_flip_tta_is_symmetric():
    first, second = narrow_xunet(seed=3), narrow_xunet(seed=4)
    batch = frames(4, seed=2)
    expected = (predict_probabilities(first, batch) + predict_probabilities(second, batch)) / 2
    both = ensemble([first, second])
    np.testing.assert_allclose(predict_probabilities(both, batch), expected, atol=1e-6)
    assert ensemble([first]) is first

    half = np.random.default_rng(4).integers(0, 256, (32, 16), dtype=np.uint8)
    symmetric = np.concatenate([half, half[:, ::-1]], axis=1)
    plain = predict_probabilities(first, [symmetric])[0]
    assert not np.allclose(plain, plain[:, ::-1], atol=1e-4)  # the model alone is not symmetric
    flipped = predict_probabilities(ensemble([first], tta="flip"), [symmetric])[0]
    np.testing.assert_array_equal(flipped, flipped[:, ::-1])
    mirrored = predict_probabilities(first, [symmetric[:, ::-1]])[0][:, ::-1]
    np.testing.assert_allclose(flipped, (plain + mirrored) / 2, atol=1e-6)


def test_export_keras_format_of_a_run_is_its_ensemble_and_needs_no_lungseg(tiny_run, plain_keras):
    assert plain_keras["export_codes"] == [0, 0]
    assert "mean of 2 fold models" in plain_keras["export_output"]
    np.testing.assert_allclose(plain_keras["predicted"]["ensemble"], tiny_run["expected"], atol=1e-6)
    np.testing.assert_allclose(plain_keras["predicted"]["fold_2"], tiny_run["fold_2"], atol=1e-6)


def test_export_saved_model_runs_in_tensorflow(tiny_run, tmp_path):
    import tensorflow as tf

    out = tmp_path / "saved"
    assert main([str(tiny_run["root"]), "--format", "saved_model", "--out", str(out)]) == 0
    loaded = tf.saved_model.load(str(out))
    output = loaded.serve(tf.constant(tiny_run["batch"])).numpy()[..., 0]
    np.testing.assert_allclose(output, tiny_run["expected"], atol=1e-4)
    signature = loaded.signatures["serving_default"]
    assert list(signature(tf.constant(tiny_run["batch"])).values())[0].shape == (3, 32, 32, 1)


def litert_interpreter():
    if importlib.util.find_spec("ai_edge_litert") is not None:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    import tensorflow as tf

    return tf.lite.Interpreter


def test_export_litert_runs_in_the_litert_interpreter(tiny_run, tmp_path):
    out = tmp_path / "model.tflite"
    argv = [str(tiny_run["root"]), "--fold", "2", "--format", "litert", "--out", str(out)]
    assert main(argv) == 0
    interpreter = litert_interpreter()(model_path=str(out))
    batch = tiny_run["batch"]
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, batch.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, batch)
    interpreter.invoke()
    output = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[..., 0]
    np.testing.assert_allclose(output, tiny_run["fold_2"], atol=1e-4)


def test_export_onnx_runs_in_onnxruntime(tiny_run, tmp_path):
    missing = [m for m in ("tf2onnx", "onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    assert not missing, f"ONNX export needs {', '.join(missing)}: pip install '.[export,test]'"
    import onnxruntime

    import warnings

    from keras.src.export.tf2onnx_lib import patch_tf2onnx

    out = tmp_path / "model.onnx"  # the fold ensemble (narrow models convert in seconds)
    patch_tf2onnx.cache_clear()  # Keras patches tf2onnx once per process: here, so it would warn here
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([str(tiny_run["root"]), "--format", "onnx", "--out", str(out)]) == 0
    assert not [w for w in caught if issubclass(w.category, FutureWarning)]  # NumPy's np.object note
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    output = session.run(None, {name: tiny_run["batch"]})[0][..., 0]
    np.testing.assert_allclose(output, tiny_run["expected"], atol=1e-4)


def cli_error(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0]
    return err[0]


def test_export_errors_are_one_line(tiny_run, tmp_path, capsys):
    root = str(tiny_run["root"])
    assert "writes a .tflite file" in cli_error([root, "--format", "litert", "--out", str(tmp_path / "m.onnx")], capsys)
    existing = tmp_path / "there.keras"
    existing.write_text("x")
    assert "already exists" in cli_error([root, "--format", "keras", "--out", str(existing)], capsys)
    assert existing.read_text() == "x"
    assert "fold_3" in cli_error([root, "--fold", "3", "--format", "keras", "--out", str(tmp_path / "a.keras")], capsys)
    assert "does not exist" in cli_error([str(tmp_path / "nope"), "--format", "keras", "--out", str(tmp_path / "b.keras")], capsys)
    assert not list(tmp_path.glob(".tmp*"))
