"""Configuration: the paper's defaults, presets as overrides, JSON round trip, option parsing."""

import json

import pytest

from lungseg.cli import config_from_args, freeze_spec, image_size, training_parser
from lungseg.config import PRESETS, RunConfig, StageConfig, make_config
from lungseg.errors import ConfigError


def test_paper_preset_is_the_papers_protocol():
    vunet = make_config("vunet", "v")
    assert vunet.stage1 == StageConfig(epochs=100, batch_size=20, learning_rate=1e-5)
    assert vunet.finetune == StageConfig(epochs=100, batch_size=20, learning_rate=5e-6)
    assert (vunet.image_size, vunet.folds, vunet.lus_frames, vunet.flips) == ((256, 256), 5, 400, True)
    assert (vunet.encoder_weights, vunet.split, vunet.interpolation) == ("imagenet", "paper", "nearest")
    assert vunet.initializer == "glorot_uniform"  # Keras' default, as in the authors' code
    xunet = make_config("xunet", "x")
    assert xunet.stage1 == StageConfig(epochs=100, batch_size=30, learning_rate=1e-5)
    assert xunet.finetune == StageConfig(epochs=100, batch_size=20, learning_rate=5e-6)
    assert xunet.freeze == []
    # How the notebooks ran: bilinear augmentation, 1.25 passes per stage-1 epoch, float32.
    assert (xunet.augment_interpolation, xunet.stage1_steps, xunet.precision) == ("bilinear", "pool", "float32")
    # True float32 on any GPU, as the authors' (TF32 only came with Ampere); quick keeps TF's default.
    assert (vunet.tf32, xunet.tf32, make_config("vunet", "q", "quick").tf32) == (False, False, True)


@pytest.mark.parametrize("model", ["vunet", "xunet"])
def test_paper_preset_fine_tunes_the_600_frame_set_for_150_epochs(model):
    assert make_config(model, "m", lus_frames=600).finetune.epochs == 150  # X_Unet_v3_2
    assert make_config(model, "m", lus_frames=600).stage1.epochs == 100
    assert make_config(model, "m", lus_frames=200, flips=False).finetune.epochs == 100
    assert make_config(model, "m", lus_frames=600, finetune={"epochs": 7}).finetune.epochs == 7
    assert make_config(model, "m", "quick", lus_frames=600).finetune.epochs < 150


def test_quick_preset_and_user_options_override_in_order():
    config = make_config("vunet", "q", "quick", folds=3, stage1={"epochs": 2})
    assert config.folds == 3  # the option beats the preset
    assert config.stage1.epochs == 2
    assert config.stage1.learning_rate == 2e-4  # the rest of the preset's stage stays
    assert config.image_size == (128, 64)
    xunet = make_config("xunet", "q", "quick")
    assert xunet.stage1.learning_rate == 3e-5  # the preset's model-specific value
    assert xunet.stage1.batch_size == 4 and xunet.finetune.epochs == 8
    assert xunet.finetune.learning_rate == 1e-4
    assert xunet.initializer == "he_normal"
    assert make_config("xunet", "q", "quick", initializer="glorot_uniform").initializer == "glorot_uniform"
    # V-Unet: bfloat16 where the CPU has it (resolved when the run starts); X-Unet (fragile in
    # bfloat16) and the paper's runs: float32.
    assert (config.precision, xunet.precision, make_config("vunet", "p").precision) == ("auto", "float32", "float32")
    assert make_config("xunet", "q", "quick", precision="auto").precision == "auto"


def test_config_json_round_trip():
    config = make_config("xunet", "x", "quick", freeze=["bottleneck"], image_size=(64, 32))
    again = RunConfig.from_dict(json.loads(config.to_json()))
    assert again == config


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"folds": 1}, "--folds must be at least 2"),
        ({"image_size": (250, 256)}, "--image-size sides must be multiples of 16"),
        ({"lus_frames": 201}, "--lus-frames must be even"),
        ({"lus_frames": "most"}, "--lus-frames must be a whole number or all, got 'most'"),
        ({"stage1": {"epochs": 0}}, "--epochs must be positive"),
        ({"split": "random"}, "--split must be one of paper, grouped"),
        ({"initializer": "zeros"}, "--initializer must be one of glorot_uniform, he_normal"),
        ({"augment_interpolation": "cubic"}, "--augment-interpolation must be one of bilinear, nearest"),
        ({"stage1_steps": "all"}, "--stage1-steps must be one of pool, train"),
        ({"precision": "float16"}, "--precision must be one of auto, float32, mixed_bfloat16, mixed_float16"),
    ],
)
def test_invalid_values_name_the_option(overrides, words):
    with pytest.raises(ConfigError, match=words):
        make_config("vunet", "v", **overrides)


def test_unknown_preset_and_unknown_saved_keys():
    with pytest.raises(ConfigError, match="unknown preset 'fast'"):
        make_config("vunet", "v", "fast")
    with pytest.raises(ConfigError, match="unknown configuration keys: colour"):
        RunConfig.from_dict({"model": "vunet", "name": "v", "colour": "red"})


def test_command_line_stage_values_one_for_both_or_one_each():
    parser = training_parser("xunet", "test")
    args = parser.parse_args(["--epochs", "7", "--lr", "1e-3", "2e-4", "--image-size", "64x32"])
    config = config_from_args("xunet", args, parser)
    assert (config.stage1.epochs, config.finetune.epochs) == (7, 7)
    assert (config.stage1.learning_rate, config.finetune.learning_rate) == (1e-3, 2e-4)
    assert config.image_size == (64, 32)
    assert config.name == "xunet_paper"


def test_precision_and_paper_fidelity_options_reach_the_config():
    parser = training_parser("vunet", "test")
    args = parser.parse_args(["--precision", "mixed_bfloat16", "--augment-interpolation", "nearest",
                              "--stage1-steps", "train"])
    config = config_from_args("vunet", args, parser)
    assert (config.precision, config.augment_interpolation, config.stage1_steps) == (
        "mixed_bfloat16", "nearest", "train")
    args = parser.parse_args(["--mixed-precision"])  # the older flag, kept as an alias
    assert config_from_args("vunet", args, parser).precision == "mixed_float16"
    args = parser.parse_args(["--precision", "auto"])
    assert config_from_args("vunet", args, parser).precision == "auto"


def test_every_preset_is_an_option_and_reaches_the_config():
    parser = training_parser("xunet", "test")
    for preset in PRESETS:
        config = config_from_args("xunet", parser.parse_args(["--preset", preset]), parser)
        assert config == make_config("xunet", f"xunet_{preset}", preset)
    assert config_from_args("xunet", parser.parse_args([]), parser).preset == "paper"


@pytest.mark.parametrize("argv", [["--epochs", "-3"], ["--lr", "0"], ["--image-size", "100"], ["--batch-size", "x"]])
def test_bad_options_exit_with_a_message(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        training_parser("vunet", "test").parse_args(argv)
    assert exit_info.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_option_types():
    assert image_size("128") == (128, 128)
    assert image_size("256x64") == (256, 64)
    assert freeze_spec("none") == []
    assert freeze_spec("bottleneck") == ["bottleneck"]
    assert freeze_spec("block1_conv1, block1_conv2") == ["block1_conv1", "block1_conv2"]


def test_sound_preset_is_quick_sized_with_the_sound_recipe():
    quick, sound = make_config("xunet", "q", "quick"), make_config("xunet", "s", "sound")
    assert (sound.split, sound.augment_policy, sound.loss, sound.initializer) == (
        "grouped", "strong", "dice_bce", "he_normal")
    for field in ("image_size", "flips", "folds", "stage1", "finetune", "augment",
                  "augment_interpolation", "stage1_steps", "synthetic_lus"):
        assert getattr(sound, field) == getattr(quick, field), field  # the same budget
    assert (quick.lus_frames, sound.lus_frames) == (80, "all")  # on every frame of the set
    paper = make_config("vunet", "p")
    assert (paper.augment, paper.augment_policy, paper.loss, paper.stop_on_collapse) == (
        True, "paper", "dice", False)  # the paper's protocol is unchanged
    assert (quick.augment_policy, quick.loss, quick.split) == ("paper", "dice", "paper")
    # V-Unet's stage 1: once for the run as the paper, once per fold in the sound preset.
    assert [make_config("vunet", "v", preset).stage1_scope for preset in ("paper", "quick", "sound")] == [
        "pool", "pool", "fold"]
    assert sound.stage1_scope == "pool"  # X-Unet pre-trains on another set: nothing to leak
    with pytest.raises(ConfigError, match=r"--stage1-scope must be one of pool, fold \(fold: V-Unet only\), "
                                          r"got 'fold' for xunet"):
        make_config("xunet", "x", stage1_scope="fold")
    vunet_help = training_parser("vunet", "test").format_help()
    assert "--stage1-scope {pool,fold}" in vunet_help
    assert "--stage1-scope" not in training_parser("xunet", "test").format_help()


def test_recipe_options_reach_the_config_and_its_json():
    parser = training_parser("xunet", "test")
    args = parser.parse_args(["--augment", "strong", "--loss", "dice_bce", "--stop-on-collapse"])
    config = config_from_args("xunet", args, parser)
    assert (config.augment, config.augment_policy, config.loss, config.stop_on_collapse) == (
        True, "strong", "dice_bce", True)
    saved = json.loads(config.to_json())
    assert (saved["augment_policy"], saved["loss"], saved["stop_on_collapse"]) == (
        "strong", "dice_bce", True)
    assert RunConfig.from_dict(saved) == config
    args = parser.parse_args(["--preset", "sound", "--no-augment", "--loss", "dice"])
    config = config_from_args("xunet", args, parser)
    assert (config.augment, config.augment_policy, config.loss, config.split) == (
        False, "strong", "dice", "grouped")
    for option, value, words in (("augment_policy", "wild", "--augment must be one of paper, strong"),
                                 ("loss", "focal", "--loss must be one of dice, dice_bce")):
        with pytest.raises(ConfigError, match=words):
            make_config("vunet", "v", **{option: value})
    args = parser.parse_args(["--preset", "sound", "--bce-weight", "0.5"])
    config = config_from_args("xunet", args, parser)
    assert (config.loss, config.bce_weight, json.loads(config.to_json())["bce_weight"]) == ("dice_bce", 0.5, 0.5)
    with pytest.raises(ConfigError, match="--bce-weight weighs the cross-entropy of --loss dice_bce, not of --loss dice"):
        make_config("xunet", "x", bce_weight=0.5)
    with pytest.raises(ConfigError, match="--bce-weight must be positive and finite, got 0"):
        make_config("xunet", "x", "sound", bce_weight=0)
    with pytest.raises(SystemExit):  # argparse refuses it before any config is made
        parser.parse_args(["--bce-weight", "-1"])


def test_a_run_written_before_the_recipe_options_still_resumes(tmp_path):
    from lungseg.errors import RunExistsError
    from lungseg.runs import RunFolder

    config = make_config("vunet", "v", "quick")
    old = json.loads(config.to_json())
    for key in ("augment_policy", "loss", "stop_on_collapse"):
        del old[key]
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "config.json").write_text(json.dumps(old))
    RunFolder(tmp_path / "v", config).create()  # the defaults are what it ran: resumes
    assert json.loads((tmp_path / "v" / "config.json").read_text())["loss"] == "dice"
    (tmp_path / "v" / "config.json").write_text(json.dumps(old))
    with pytest.raises(RunExistsError, match=r"different configuration \(--loss: dice in the run, dice_bce now\); give the run's values"):
        RunFolder(tmp_path / "v", make_config("vunet", "v", "quick", loss="dice_bce")).create()
    # Values are worded as they are typed: a size as 64x96, a switch as on or off.
    changed = make_config("vunet", "v", "quick", image_size=(64, 96), flips=False)
    with pytest.raises(RunExistsError, match=r"different configuration \(--no-flips: off in the run, on now; "
                                             r"--image-size: 128x64 in the run, 64x96 now\)"):
        RunFolder(tmp_path / "v", changed).create()


def test_reading_options_reach_the_config_round_trip_and_old_configs_load(tmp_path):
    from lungseg.runs import RunFolder

    parser = training_parser("xunet", "test")
    args = parser.parse_args(["--target", "rib_shadow", "--groups", "blocks:48", "--crop", "auto",
                              "--keep-aspect", "--mask-threshold", "0.4", "--max-value", "4095"])
    config = config_from_args("xunet", args, parser)
    assert (config.target, config.groups, config.crop, config.keep_aspect, config.mask_threshold,
            config.max_value) == ("rib_shadow", "blocks:48", "auto", True, 0.4, 4095)
    assert RunConfig.from_dict(json.loads(config.to_json())) == config
    # the paper's and quick's frames are stretched whole, as before; sound crops to the sector
    for preset, crop in (("paper", "none"), ("quick", "none"), ("sound", "auto")):
        made = make_config("vunet", "v", preset)
        assert (made.crop, made.keep_aspect, made.target, made.mask_threshold, made.max_value) == (
            crop, False, None, None, None), preset
    # a config.json written before these fields loads with the defaults, and resumes
    config = make_config("vunet", "v", "quick")
    old = json.loads(config.to_json())
    for key in ("target", "mask_threshold", "max_value", "crop", "keep_aspect"):
        del old[key]
    assert RunConfig.from_dict(old) == config
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "config.json").write_text(json.dumps(old))
    RunFolder(tmp_path / "v", config).create()
    for overrides, words in (({"crop": "sector"}, "--crop must be one of none, auto"),
                             ({"mask_threshold": 1.0}, "--mask-threshold must be between 0 and 1"),
                             ({"max_value": 70000}, "--max-value must be between 1 and 65535")):
        with pytest.raises(ConfigError, match=words):
            make_config("vunet", "v", **overrides)
    for argv in (["--mask-threshold", "0"], ["--max-value", "0"], ["--crop", "yes"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)


def test_training_options_are_generated_from_runconfig_fields():
    """Each option field of RunConfig is an option of the training commands that take it, with
    its help and each preset's value; an option given sets the field, one not given leaves
    the preset's value."""
    from lungseg.cli import training_options
    from lungseg.config import option_flag

    vunet, xunet = dict(training_options("vunet")), dict(training_options("xunet"))
    assert "encoder_weights" in vunet and "encoder_weights" not in xunet
    assert {"salient", "freeze", "pretrained"} <= set(xunet) and not {"salient", "freeze", "pretrained"} & set(vunet)
    assert (option_flag("lus_frames"), option_flag("flips"), option_flag("augment_policy")) == (
        "--lus-frames", "--no-flips", "--augment")
    help_text = " ".join(training_parser("xunet", "").format_help().split())
    assert ("--lus-frames N|all training frames; with flips N/2 frames plus their mirror images (the "
            "paper: 200 without flips, 400, 600); all: every frame of --data (or of the generated "
            "set), with their mirror images unless --no-flips (paper: 400; quick: 80; sound: all)") in help_text
    parser = training_parser("xunet", "")
    config = config_from_args("xunet", parser.parse_args(["--preset", "quick", "--no-flips", "--augment",
                                                          "strong", "--freeze", "bottleneck"]), parser)
    assert (config.flips, config.augment_policy, config.freeze, config.lus_frames) == (
        False, "strong", ["bottleneck"], 80)
    for given, taken in (("all", "all"), ("ALL", "all"), ("24", 24)):
        args = parser.parse_args(["--preset", "quick", "--lus-frames", given])
        assert config_from_args("xunet", args, parser).lus_frames == taken
    with pytest.raises(SystemExit):  # argparse's usage error
        parser.parse_args(["--lus-frames", "0"])


def test_a_run_written_before_tf32_resumes_as_it_ran(tmp_path):
    """A config.json without ``tf32`` ran with TensorFlow's default (TF32 on): a quick run of
    then resumes under today's quick preset; a paper run of then is told apart from today's."""
    from lungseg.errors import RunExistsError
    from lungseg.runs import RunFolder

    for preset, resumes in (("quick", True), ("paper", False)):
        config = make_config("xunet", preset, preset)
        old = json.loads(config.to_json())
        del old["tf32"]
        (tmp_path / preset).mkdir()
        (tmp_path / preset / "config.json").write_text(json.dumps(old))
        assert RunConfig.from_dict(old).tf32 is True
        if resumes:
            RunFolder(tmp_path / preset, config).create()
        else:
            with pytest.raises(RunExistsError, match=r"different configuration \(tf32: on in the run, off now\)"):
                RunFolder(tmp_path / preset, config).create()
