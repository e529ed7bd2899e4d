"""Transfer learning from any annotated source: the pre-training set as its own data set (its
own target, groups, split and reading), runs chained with --pretrained RUN/fold_k, V-Unet's
encoder from another V-Unet run, and where the weights came from in summary.json and in
evaluate's results table.

The trainings build narrow models (conftest.narrow_models): what is checked here is where the
weights came from and what the run records, not the model's size."""

import json
import shutil

import keras
import numpy as np
import pytest

from conftest import TINY, narrow_models, narrow_xunet, run_script
from lungseg.config import RunConfig, make_config
from lungseg.data import holdout_split, run_frames
from lungseg.data.io import write_image
from lungseg.files import read_json
from lungseg.inference import save_inference_model
from lungseg.runs import RunFolder, file_sha256
from lungseg.training import plan_splits

pytestmark = pytest.mark.long  # a module of half a minute or more (conftest)

SHAPE = (40, 48)
TARGET_ROWS = {"pleural_line": (8, 11), "rib_shadow": (14, 30)}  # rows of each target's band


def write_targets(root, n=12):
    """A sweep in the image/ + masks/<target>/ layout (as the real phantom's): Frame1 ... FrameN,
    a band of rows marked per target, the same on every frame."""
    noise = np.random.default_rng(0)
    for number in range(1, n + 1):
        write_image(root / "image" / f"Frame{number}.png", noise.integers(0, 256, SHAPE, dtype=np.uint8))
        for target, (top, bottom) in TARGET_ROWS.items():
            mask = np.zeros(SHAPE, np.uint8)
            mask[top:bottom, 8:40] = 255
            write_image(root / "masks" / target / f"Frame{number}.png", mask)
    return root


def fake_run(root, model, kind):
    """A run folder whose finished fold_1 holds ``model`` (config.json as training writes it)."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(make_config(kind, root.name, "quick", image_size=(32, 32), folds=2).to_json())
    save_inference_model(model, root / "fold_1" / "model.keras")
    (root / "fold_1" / "metrics.json").write_text("{}")
    return root


@pytest.fixture(scope="module")
def phantom(module_tmp):
    return write_targets(module_tmp / "phantom")


def salient_config(lus, phantom, **options):
    """X-Unet with LUS grouped by probe position and the phantom as its pre-training set."""
    return make_config("xunet", "t", "quick", image_size=(32, 32), lus_frames=16, data=str(lus), groups=r"pos(\d)",
                       split="grouped", salient=str(phantom), salient_target="pleural_line",
                       salient_groups="blocks:3", **options)


def test_pretraining_set_reads_its_own_target_and_groups(tiny_lus, phantom, tmp_path):
    # The LUS options (--groups 'pos(\d)', no --target) would fail on Frame<N> names and on
    # masks/ holding one folder per target: they are not applied to the pre-training set.
    config = salient_config(tiny_lus, phantom)
    frames = run_frames.salient_frames(RunFolder(tmp_path / "t", config))
    assert frames.names == [f"Frame{n}" for n in range(1, 13)]
    assert frames.groups[:5] == ["Frame:0-2", "Frame:0-2", "Frame:3-5", "Frame:3-5", "Frame:3-5"]
    rows = np.flatnonzero(frames.masks.any(axis=(0, 2, 3)))
    # pleural_line's rows 8-10 of 40, at 32 rows: 6.4-8.8
    assert rows.min() >= 6 and rows.max() <= 9
    other = RunFolder(tmp_path / "t", make_config_of(config, salient_target="rib_shadow"))
    assert run_frames.salient_frames(other).masks.sum() > 3 * frames.masks.sum()


def make_config_of(config, **changes):
    return RunConfig.from_dict({**config.to_dict(), **changes}).validate()


def test_each_set_is_split_by_its_own_mode_and_groups(tiny_lus, phantom, tmp_path):
    grouped = salient_config(tiny_lus, phantom, salient_split="grouped")
    run = RunFolder(tmp_path / "t", grouped)
    lus, selection = run_frames.lus_frames(run)
    salient = run_frames.salient_frames(run)
    splits = plan_splits(grouped, "pretrain", lus, salient, selection)
    group = dict(zip(salient.names, salient.groups))
    held_out = {group[name] for name in splits["pretrain"]["val"]}
    assert held_out and not held_out & {group[name] for name in splits["pretrain"]["train"]}
    for fold in splits["folds"]:  # the LUS folds: one probe position each
        assert len({name.split("_")[1] for name in fold["val"]}) == 1
    paper = make_config_of(grouped, salient_split="paper")
    splits = plan_splits(paper, "pretrain", lus, salient, selection)
    assert splits["pretrain"] == holdout_split(salient.names, salient.groups, 0.2, mode="paper", seed=paper.seed)
    assert len(splits["pretrain"]["val"]) == 2  # round(0.2 * 12) frames, blocks or not


def test_salient_split_defaults_to_the_notebooks_and_old_runs_keep_theirs():
    assert [make_config("xunet", "x", preset).salient_split for preset in ("paper", "quick", "sound")] == \
        ["paper", "paper", "grouped"]  # sound: as its runs drew it before the option existed
    assert make_config("vunet", "v", "sound").salient_split == "paper"
    old = make_config("xunet", "x", "paper", split="grouped").to_dict()
    del old["salient_split"]  # a config.json written before it: --split split both sets
    assert RunConfig.from_dict(old).salient_split == "grouped"
    with pytest.raises(Exception, match=r"--salient-mask-threshold must be between 0 and 1 \(a share of the mask.s foreground value\), got 1.5"):
        make_config("xunet", "x", salient_mask_threshold=1.5)


@pytest.fixture(scope="module")
def phantom_run(module_tmp, tiny_lus, phantom):
    """An X-Unet pre-trained on the phantom's pleural line (its own groups and split), then
    fold 1 fine-tuned on the LUS frames grouped by probe position (narrow models)."""
    out = module_tmp / "runs"
    with narrow_models():
        code = run_script("train_xunet", "--data", tiny_lus, "--groups", r"pos(\d)", "--split", "grouped",
                          "--salient", phantom, "--salient-target", "pleural_line", "--salient-groups",
                          "blocks:3", "--salient-split", "grouped", "--out", out, "--name", "line", "--epochs", "1",
                          "--fold", "1", *TINY)
    return {"code": code, "dir": out / "line"}


def test_pretraining_set_is_recorded_in_config_and_summary(phantom_run, phantom):
    assert phantom_run["code"] == 0
    run = phantom_run["dir"]
    config = read_json(run / "config.json")
    assert {key: config[key] for key in ("salient", "salient_target", "salient_groups", "salient_split")} == {
        "salient": str(phantom.resolve()), "salient_target": "pleural_line", "salient_groups": "blocks:3",
        "salient_split": "grouped"}
    splits = read_json(run / "splits.json")
    summary = read_json(run / "summary.json")
    assert summary["pretraining_set"] == {
        "source": str(phantom.resolve()), "frames": 12, "held_out": len(splits["pretrain"]["val"]),
        "target": "pleural_line", "groups": "blocks:3", "split": "grouped"}
    assert summary["starting_weights"] == "pre-trained on phantom pleural_line (12 frames)"
    assert summary["pretrained_from"] is None


def test_a_chained_run_records_its_source_and_the_table_says_so(phantom_run, tiny_lus, tmp_path):
    source = phantom_run["dir"] / "fold_1"
    code = run_script("train_xunet", "--data", tiny_lus, "--pretrained", source, "--out", tmp_path,
                      "--name", "chained", "--epochs", "1", "--fold", "1", *TINY)
    assert code == 0
    summary = read_json(tmp_path / "chained" / "summary.json")
    digest = file_sha256(phantom_run["dir"] / "config.json")
    assert summary["pretrained"] == str(source.resolve())
    assert summary["pretrained_from"] == {
        "path": str(source.resolve()), "model": str(source.resolve() / "model.keras"),
        "model_sha256": file_sha256(source / "model.keras"), "run": str(phantom_run["dir"].resolve()),
        "stage": "fold_1", "run_model": "xunet", "run_config_sha256": digest,
        "run_started_from": "pre-trained on phantom pleural_line (12 frames)"}
    words = f"pre-trained line/fold_1 (config {digest[:8]}, which started from: pre-trained on phantom pleural_line (12 frames))"
    assert summary["starting_weights"] == words
    assert summary["folds"]["fold_1"]["started_from"] == str(source.resolve() / "model.keras")
    assert not (tmp_path / "chained" / "pretrain").exists()
    assert run_script("evaluate", tmp_path / "chained", phantom_run["dir"], "--out", tmp_path / "res",
                      "--allow-partial") == 0
    table = (tmp_path / "res" / "results.md").read_text()
    assert f"| {words} |" in table
    assert "| pre-trained on phantom pleural_line (12 frames) |" in table


def test_vunet_starts_from_the_encoder_of_another_vunet_run(tiny_lus, tmp_path):
    import lungseg.models as models
    from lungseg.models import VGG16_CONVS

    keras.utils.set_random_seed(3)
    with narrow_models():  # the source, and the run that takes its encoder, narrow alike
        source = fake_run(tmp_path / "phantom_vunet", models.build_vunet((64, 32, 1), encoder_weights=None), "vunet")
        code = run_script("train_vunet", "--data", tiny_lus, "--encoder-weights", source / "fold_1", "--out",
                          tmp_path, "--name", "v", "--epochs", "1", "--fold", "1", *TINY, "--lus-frames", "8")
    assert code == 0
    stage1 = keras.models.load_model(tmp_path / "v" / "stage1" / "model.keras", compile=False)
    start = keras.models.load_model(source / "fold_1" / "model.keras", compile=False)
    for name in VGG16_CONVS:  # stage 1 trains the decoder only: the encoder is the source's
        for got, expected in zip(stage1.get_layer(name).get_weights(), start.get_layer(name).get_weights()):
            np.testing.assert_array_equal(got, expected)
    summary = read_json(tmp_path / "v" / "summary.json")
    digest = file_sha256(source / "config.json")
    assert summary["encoder_weights_used"] == {
        "weights": "run", "path": str((source / "fold_1").resolve()),
        "model": str((source / "fold_1" / "model.keras").resolve()),
        "model_sha256": file_sha256(source / "fold_1" / "model.keras"), "run": str(source.resolve()),
        "stage": "fold_1", "run_model": "vunet", "run_config_sha256": digest, "run_started_from": None}
    assert summary["display_name"] == "V-Unet"
    assert run_script("evaluate", tmp_path / "v", "--out", tmp_path / "res", "--allow-partial") == 0
    assert f"| VGG16 of phantom_vunet/fold_1 (config {digest[:8]}) |" in (tmp_path / "res" / "results.md").read_text()


def test_a_run_with_each_folds_stage1_resumes_without_its_encoder_source(tiny_lus, tmp_path, capsys):
    import lungseg.models as models

    keras.utils.set_random_seed(3)
    with narrow_models():
        source = fake_run(tmp_path / "phantom_vunet", models.build_vunet((64, 32, 1), encoder_weights=None), "vunet")
        argv = ["--data", tiny_lus, "--encoder-weights", source / "fold_1", "--stage1-scope", "fold", "--out",
                tmp_path, "--name", "v", "--epochs", "1", *TINY, "--lus-frames", "8"]
        assert run_script("train_vunet", *argv, "--fold", "1") == 0
        shutil.rmtree(source)  # fold 1 and its stage 1 are done: the source is not needed again
        assert run_script("train_vunet", *argv, "--fold", "1") == 0
        resumed = capsys.readouterr().out
        assert run_script("train_vunet", *argv, "--fold", "2") == 2  # stage1_fold_2 needs it
    assert f"{source.resolve() / 'fold_1'}: does not exist" in capsys.readouterr().err
    assert "resuming the unfinished run" in resumed and "fold_1 already done" in resumed
    assert "start: VGG16 of phantom_vunet/fold_1" in resumed  # as recorded when it trained


@pytest.fixture(scope="module")
def sources(module_tmp):
    """A (narrow) X-Unet run and a bare X-Unet model file: wrong sources of a V-Unet encoder."""
    xunet = fake_run(module_tmp / "xrun", narrow_xunet(), "xunet")
    bare = save_inference_model(narrow_xunet(), module_tmp / "bare.keras")
    return xunet, bare


def bad_source_cases(xunet, bare):
    """(script, option, value, the one error line)."""
    model = (xunet / "fold_1" / "model.keras").resolve()
    return [
        ("train_vunet", "--encoder-weights", xunet / "fold_1",
         f"{model}: a model of the X-Unet run {xunet.resolve()}; --encoder-weights takes a V-Unet's model "
         "(its VGG16 encoder)"),
        ("train_vunet", "--encoder-weights", bare,
         f"{bare.resolve()}: not a V-Unet's VGG16 encoder (no layer block3_conv3, block4_conv3, block5_conv1, "
         "block5_conv2, block5_conv3; other weight shapes in block1_conv1, block1_conv2, block2_conv1, "
         "block2_conv2, block3_conv1, block3_conv2, block4_conv1, block4_conv2); --encoder-weights takes a "
         "V-Unet's model"),
        ("train_vunet", "--encoder-weights", xunet,
         f"{xunet.resolve()}: a run folder holds one model per stage (fold_1); give --encoder-weights one of "
         f"them, e.g. {xunet.resolve() / 'fold_1'}"),
        ("train_xunet", "--pretrained", xunet,
         f"{xunet.resolve()}: a run folder holds one model per stage (fold_1); give --pretrained one of them, "
         f"e.g. {xunet.resolve() / 'fold_1'}"),
        ("train_vunet", "--encoder-weights", xunet / "fold_9",
         f"{xunet.resolve() / 'fold_9'}: does not exist (--encoder-weights takes a .keras model file or a "
         "run's stage folder (RUN/fold_1, RUN/pretrain))"),
        ("train_xunet", "--pretrained", xunet / "nowhere",
         f"{xunet.resolve() / 'nowhere'}: does not exist (--pretrained takes a .keras model file or a run's "
         "stage folder (RUN/fold_1, RUN/pretrain))"),
        ("train_xunet", "--pretrained", xunet.parent,
         f"{xunet.parent.resolve()}: no model.keras in this folder (--pretrained takes a .keras model file "
         "or a run's stage folder (RUN/fold_1, RUN/pretrain))"),
    ]


def test_a_wrong_source_is_one_error_line_naming_it(sources, tiny_lus, tmp_path, capsys):
    for script, option, value, line in bad_source_cases(*sources):
        code = run_script(script, "--data", tiny_lus, option, value, "--out", tmp_path / "out", "--name", "r",
                          *TINY)
        err = capsys.readouterr().err
        assert code == 2, err
        assert [text for text in err.splitlines() if text.startswith("error:")] == [f"error: {line}"]
        assert not (tmp_path / "out" / "r").exists()  # refused before the run folder is made


def test_a_vunet_run_is_refused_as_an_xunet_start(tmp_path, tiny_lus, capsys):
    from lungseg.models import build_vunet

    vunet = fake_run(tmp_path / "vrun", build_vunet((32, 32, 1), encoder_weights=None), "vunet")
    code = run_script("train_xunet", "--data", tiny_lus, "--pretrained", vunet / "fold_1", "--out", tmp_path / "o",
                      *TINY)
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {(vunet / 'fold_1' / 'model.keras').resolve()}: a model of the V-Unet run {vunet.resolve()}; "
        "--pretrained takes an X-Unet's model")


def test_options_of_the_pretraining_set_reach_the_config():
    from lungseg.cli import config_from_args, training_parser

    parser = training_parser("xunet", "")
    args = parser.parse_args(["--salient", "P", "--salient-target", "rib_shadow", "--salient-groups", "blocks:50",
                              "--salient-split", "grouped", "--salient-crop", "auto", "--salient-keep-aspect",
                              "--salient-max-value", "4095", "--salient-mask-threshold", "0.3", "--target", "x"])
    config = config_from_args("xunet", args, parser)
    assert (config.salient_target, config.salient_groups, config.salient_split, config.salient_crop,
            config.salient_keep_aspect, config.salient_max_value, config.salient_mask_threshold) == (
        "rib_shadow", "blocks:50", "grouped", "auto", True, 4095, 0.3)
    assert (config.target, config.crop, config.split) == ("x", "none", "paper")  # the fine-tuning set's own
    assert run_frames.salient_reading(config).crop == "auto"
    assert json.loads(config.to_json())["salient_keep_aspect"] is True
    assert "--salient-target" not in training_parser("vunet", "").format_help()


def test_pretrained_none_fine_tunes_from_random_weights(tiny_lus, tmp_path):
    with narrow_models():
        code = run_script("train_xunet", "--data", tiny_lus, "--pretrained", "none", "--out", tmp_path, "--name",
                          "n", "--epochs", "1", "--fold", "1", *TINY, "--lus-frames", "8")
    assert code == 0
    assert not (tmp_path / "n" / "pretrain").exists()
    assert not (tmp_path / "_synthetic").exists()  # no pre-training set generated for nothing
    summary = read_json(tmp_path / "n" / "summary.json")
    assert summary["pretrained_from"] == {"path": "none", "model": None}
    assert summary["starting_weights"] == "none (random weights)"
    assert summary["folds"]["fold_1"]["started_from"] == "random weights (seed 1)"
