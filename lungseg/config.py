"""One configuration object per run: the paper's protocol by default, presets as data.

The command line fills a ``RunConfig`` (preset first, then each option given), the run folder
stores it as ``config.json``, and everything downstream reads only the config.
"""

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Optional, Union

from lungseg.errors import ConfigError

MODELS = ("vunet", "xunet")
SPLITS = ("paper", "grouped")
# Frame resampling when resizing (--interpolation): each name with its OpenCV flag, named here
# so that the configuration loads without cv2 (lungseg.data.frames looks the flags up). Masks
# always use nearest. INTER_NEAREST_EXACT picks the same pixels as PIL's nearest, which Keras'
# image loader used.
INTERPOLATIONS = {"nearest": "INTER_NEAREST_EXACT", "area": "INTER_AREA", "bilinear": "INTER_LINEAR"}
# How augmentation resamples frame and mask: bilinear (then the mask re-thresholded at 0.5) is
# what the paper's ImageDataGenerator did; nearest keeps masks 0/1 in one pass.
AUGMENT_INTERPOLATIONS = ("bilinear", "nearest")
# What augmentation does when on (--augment): the paper's ImageDataGenerator ranges, or the
# strong geometric and intensity augmentation of nnU-Net (lungseg.data.augment).
AUGMENT_POLICIES = ("paper", "strong")
# Training loss (--loss): the paper's Dice, or Dice plus binary cross-entropy (lungseg.losses).
LOSSES = ("dice", "dice_bce")
# Steps per stage-1 epoch: "pool" = len(whole pool) // batch, as the notebooks ran stage 1 while
# training on 80 % of the pool (1.25 passes per epoch); "train" = one pass over the training part.
STAGE1_STEPS = ("pool", "train")
STAGE1_SCOPES = ("pool", "fold")  # V-Unet's stage 1: once for the run, or once per fold
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
# "auto": mixed_bfloat16 on a CPU with bfloat16 instructions, else float32; resolved when the
# run starts, and config.json stores the precision chosen (see lungseg.precision).
PRECISION_CHOICES = ("auto", *PRECISIONS)
TTA_CHOICES = ("none", "flip")  # test-time augmentation of prediction and evaluation
# What of each frame the model sees (--crop): all of it, or the imaging sector's bounding box
# (lungseg.data.crop.find_sector), which screen captures surround with black, scales and text.
CROPS = ("none", "auto")
# Kernel initialisers of the 3x3 ReLU convolutions. The authors used Keras' default,
# glorot_uniform; he_normal (He et al., 2015) keeps the activations' scale through the ReLU
# layers, without which a plain U-Net trained from scratch with Dice loss stalls or collapses.
INITIALIZERS = ("glorot_uniform", "he_normal")


def option(default=dataclasses.MISSING, *, help, flag=None, kind=None, choices=None, metavar=None,
           action=None, presets=True, models=None, **field_options):
    """A ``RunConfig`` field that the training commands take as an option (``lungseg.cli``
    generates it): ``flag`` (default ``--field-name``), ``kind`` (the name of a ``lungseg.cli``
    argument type), ``choices``, ``metavar``, ``action`` (``store_true`` or ``store_false``),
    ``help``, to which each preset's value is added unless ``presets`` is False, and ``models``
    (None: both) that take it."""
    spec = {"help": help, "flag": flag, "kind": kind, "choices": choices, "metavar": metavar,
            "action": action, "presets": presets, "models": models}
    return field(default=default, metadata={"option": spec}, **field_options)


def check_reading(crop="none", mask_threshold=None, max_value=None, prefix=""):
    """``ConfigError`` naming the first option of how frames and masks are read (``RunConfig``'s
    fields of these names, ``prefix`` ``salient_`` for the pre-training set's;
    ``lungseg.data.frames.Reading``) that is out of its range."""
    if crop not in CROPS:
        raise ConfigError(f"{option_flag(prefix + 'crop')} must be one of {', '.join(CROPS)}, got {crop!r}")
    if mask_threshold is not None and not 0 < mask_threshold < 1:
        raise ConfigError(f"{option_flag(prefix + 'mask_threshold')} must be between 0 and 1 (a share of "
                          f"the mask's foreground value), got {mask_threshold}")
    if max_value is not None and not 0 < max_value < 65536:
        raise ConfigError(f"{option_flag(prefix + 'max_value')} must be between 1 and 65535, got {max_value}")


def option_flag(field_name):
    """The command-line flag of a ``RunConfig`` field (``--lus-frames`` for ``lus_frames``)."""
    spec = RUN_FIELDS[field_name].metadata.get("option") or {}
    return spec.get("flag") or "--" + field_name.replace("_", "-")


def option_text(value):
    """An option's value as a user types it: ``96x128``, ``on``, ``none``, ``a,b``."""
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else str(value)


@dataclass
class StageConfig:
    """Optimiser settings of one training stage."""

    epochs: int
    batch_size: int
    learning_rate: float

MAX_SEED = 2**31 - 1  # the largest seed NumPy and TensorFlow take
ALL_FRAMES = "all"  # --lus-frames all: every frame of the data set

# RunConfig's fields that name the user's files (or a regex, for groups): stored absolute in
# config.json (runs.absolute_paths); a machine may mount them elsewhere (lungseg.distribute).
PATH_FIELDS = ("data", "salient", "pretrained", "encoder_weights", "groups", "salient_groups")
GROUP_FIELDS = ("groups", "salient_groups")  # a CSV file (a path) or a regex (kept as given)


# What a config.json written before a field existed ran with, where that is not the field's
# default: lungseg left TensorFlow's TF32 on until the paper preset turned it off, so an older
# quick or sound run resumes as it ran, and an older paper run is told apart from a new one.
WRITTEN_BEFORE = {"tf32": True}


@dataclass
class RunConfig:
    """Everything that defines a run. Defaults are the paper's (see docs/paper.md).

    ``stage1`` is V-Unet's decoder-only stage or X-Unet's salient-object pre-training;
    ``finetune`` is the 5-fold stage 2 on LUS frames.
    """

    model: str
    name: str
    preset: str = "paper"
    out: str = option("weights", metavar="DIR", help="folder holding run folders")
    data: Optional[str] = option(  # LUS folder; None: generated phantom frames
        None, metavar="DIR", presets=False, help="LUS frames (IMG/ + MASK/, or images/ + masks/) "
        "(default: generated phantom frames, cached under --out)")
    salient: Optional[str] = option(  # X-Unet's pre-training set; None: generated composites
        None, metavar="DIR", presets=False, models=("xunet",), help="pre-training set: frames and "
        "masks in any layout --data takes (IMG/ + MASK/, images/ + masks/, image/ + "
        "masks/<target>/), read with the --salient-* options only (default: generated "
        "salient-object composites, cached under --out)")
    # How the pre-training set is read and split: its own options, never --data's.
    salient_target: Optional[str] = option(
        None, metavar="NAME", presets=False, models=("xunet",),
        help="read the pre-training set's masks/NAME/, as --target does for --data")
    salient_groups: Optional[str] = option(
        None, metavar="blocks:N|REGEX|CSV", presets=False, models=("xunet",),
        help="group of each pre-training frame for --salient-split grouped, as --groups "
        "(default: the subject when names carry one, else probe position and frame window of "
        "lung_pos<P>_<n> names, else each name its own group)")
    salient_split: str = option(
        "paper", choices=SPLITS, models=("xunet",), help="pre-training hold-out: paper, a "
        "random 80/20 split of the frames as the notebooks drew it; grouped, 20 %% of the "
        "groups (--salient-groups) held out whole")
    salient_mask_threshold: Optional[float] = option(
        None, kind="share", metavar="X", presets=False, models=("xunet",),
        help="as --mask-threshold, for the pre-training set's masks")
    salient_max_value: Optional[int] = option(
        None, kind="sample_value", metavar="N", presets=False, models=("xunet",),
        help="as --max-value, for the pre-training set's 16-bit frames")
    salient_crop: str = option(
        "none", choices=CROPS, models=("xunet",),
        help="as --crop, for the pre-training set (auto: its imaging sector)")
    salient_keep_aspect: bool = option(
        False, action="store_true", presets=False, models=("xunet",),
        help="as --keep-aspect, for the pre-training set")
    groups: Optional[str] = option(  # blocks:N, a regex or a CSV giving each frame's group
        None, metavar="blocks:N|REGEX|CSV", presets=False, help="group of each frame for --split "
        "grouped: blocks:N, contiguous blocks of N frame numbers of each sequence (a sweep's frames "
        "Frame1, Frame2, ...); a regex whose first group is taken from the file stem; or a CSV "
        "of stem,group (default: the subject when names carry one, subj<k>; else probe position "
        "and a window of neighbouring frame numbers)")
    # How frames and masks are read: lungseg.cli.add_reading_options (shared with evaluate).
    target: Optional[str] = None  # masks/<target>/ of a set with several targets per frame
    mask_threshold: Optional[float] = None  # share of a mask's level; None: half, soft refused
    max_value: Optional[int] = None  # 16-bit frames: the value read as white; None: stated/inferred
    crop: str = "none"  # "auto": crop frames and masks to the imaging sector (lungseg.data.crop)
    keep_aspect: bool = False  # pad to the input's shape instead of stretching
    lus_frames: Union[int, str] = option(
        400, kind="frame_count", metavar="N|all", help="training frames; with flips N/2 frames plus "
        "their mirror images (the paper: 200 without flips, 400, 600); all: every frame of --data "
        "(or of the generated set), with their mirror images unless --no-flips")
    flips: bool = option(  # 400 = 200 frames + their mirror images, as in the paper
        True, flag="--no-flips", action="store_false", presets=False,
        help="use N original frames without mirror copies (the paper's 200-frame set)")
    split: str = option(
        "paper", choices=SPLITS, help="paper: shuffled k-fold over all frames, flipped copies "
        "included, as the authors did; grouped: a frame, its flip and its neighbours stay in one "
        "fold (all frames of a subject, when names carry one)")
    folds: int = option(5, kind="positive_int", metavar="N", help="cross-validation folds")
    image_size: tuple = option(
        (256, 256), kind="image_size", metavar="N|HxW", help="model input size, sides multiples of 16")
    interpolation: str = option("nearest", choices=tuple(INTERPOLATIONS), help="how frames are resized")
    augment: bool = option(
        True, flag="--no-augment", action="store_false", presets=False,
        help="no augmentation of the LUS training frames (the paper's ImageDataGenerator settings)")
    augment_interpolation: str = option(
        "bilinear", choices=AUGMENT_INTERPOLATIONS, help="how augmentation resamples: bilinear with "
        "the mask re-thresholded at 0.5, as the paper's ImageDataGenerator did, or nearest")
    augment_policy: str = option(  # what augmentation does when on: paper or strong (nnU-Net's)
        "paper", flag="--augment", choices=AUGMENT_POLICIES,
        help="what augmentation does: paper, the paper's tiny ranges (rotation ±0.15°, shifts, "
        "shear and zoom ±5 %%, flips); strong, nnU-Net's 2D augmentation (rotation ±15°, scaling "
        "0.85-1.25, flips, noise, blur, brightness, contrast, gamma, each with a probability)")
    loss: str = option(  # dice (the paper's) or dice_bce
        "dice", choices=LOSSES, help="training loss: dice, the paper's; dice_bce, Dice plus binary "
        "cross-entropy, which keeps thin targets from collapsing to all background")
    bce_weight: float = option(  # dice_bce's cross-entropy weight; Dice's is 1
        1.0, kind="positive_float", metavar="W", presets=False, help="weight of the cross-entropy "
        "in --loss dice_bce, the Dice term's being 1 (nnU-Net weighs both 1)")
    stop_on_collapse: bool = option(  # end a stage whose predictions collapsed for a few epochs
        False, action="store_true", presets=False,
        help="end a stage early when its validation predictions have been empty (or full) on "
        "most frames with ribs, with no progress in validation loss, for a few epochs running; "
        "the stage is marked collapsed in summary.json (a collapse is logged as it happens "
        "either way)")
    encoder_weights: Optional[str] = option(  # V-Unet only
        "imagenet", metavar="imagenet|none|PATH|MODEL", presets=False, models=("vunet",),
        help="VGG16 encoder weights: imagenet (downloaded once into ~/.keras/models/), none "
        "(random), a local vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5, or the VGG16 "
        "encoder of another V-Unet run's model (its stage folder, RUN/fold_1, or a .keras file) "
        "(default: imagenet; the quick preset falls back to random weights when offline)")
    initializer: str = option(  # kernels of new ReLU convolutions (Keras' default)
        "glorot_uniform", choices=INITIALIZERS,
        help="kernel initialiser of the ReLU convolutions trained from scratch (the decoder; "
        "X-Unet's and a random VGG16's encoder too): glorot_uniform is Keras' default, as the "
        "authors used; he_normal suits ReLU and keeps a plain U-Net from stalling")
    fallback_to_random_weights: bool = False  # quick preset: warn instead of failing offline
    freeze: list = option(  # stage-2 frozen parts or layer names
        kind="freeze_spec", metavar="none|bottleneck|encoder|LAYERS", presets=False, models=("xunet",),
        default_factory=list, help="what stays frozen in fine-tuning: none (the paper's best), "
        "bottleneck (the two 1024-filter convs), encoder, or comma-separated layer names "
        "(default: none)")
    pretrained: Optional[str] = option(  # X-Unet: start from this model, skip pre-training
        None, metavar="MODEL|none", presets=False, models=("xunet",),
        help="start fine-tuning from this model and skip pre-training: a .keras file or a stage "
        "folder of an earlier run (RUN/pretrain, RUN/fold_1), which chains that run into this "
        "one (recorded in summary.json); none: from random weights, no pre-training at all")
    stage1: StageConfig = None
    finetune: StageConfig = None
    validation_fraction: float = 0.2
    stage1_steps: str = option(
        "pool", choices=STAGE1_STEPS, help="steps per stage-1 epoch: pool = len(whole pool) // "
        "batch, as the notebooks ran (1.25 passes over the 80 %% training part); train = one pass")
    stage1_scope: str = option(
        "pool", choices=STAGE1_SCOPES, models=("vunet",), help="V-Unet's stage 1: pool = once on "
        "the whole pool with its own 20 %% hold-out, as the paper (each fold fine-tunes it, so the "
        "frames a fold holds out were mostly trained on in stage 1); fold = each fold trains its "
        "own stage 1 on its training frames (k times stage 1's cost; no stage 1 sees the frames "
        "its fold holds out)")
    budget_frames: int = option(
        0, kind="non_negative_int", metavar="N", help="a stage on LUS frames (fine-tuning, "
        "V-Unet's stage 1) trains at least as long as its epochs over N frames would: with fewer "
        "training frames it runs ceil(epochs x N / frames) epochs, so that a small set also "
        "trains long enough; 0: the epochs as given, as the paper")
    synthetic_lus: int = 300  # phantom frames generated when no --data is given
    synthetic_salient: int = 10_000  # composites generated when no --salient is given
    seed: int = option(
        0, kind="seed", help="seed for data generation, splits, augmentation and weights")
    precision: str = option(
        "float32", choices=PRECISION_CHOICES, help="compute precision; the sigmoid head and Dice "
        "sums stay float32, saved models are float32 whatever trained them; auto: mixed_bfloat16 "
        "on a CPU with bfloat16 instructions (AVX-512 BF16 or AMX), else float32")
    jit_compile: bool = option(False, action="store_true", presets=False,
                               help="compile training steps with XLA")
    deterministic: bool = option(False, action="store_true", presets=False,
                                 help="TensorFlow op determinism: same seed, same result (slower)")
    # TensorFloat-32 matmuls and convolutions on Ampere and newer GPUs (TensorFlow's default);
    # off, as in the paper, float32 is computed in true float32, as the authors' GPUs did.
    tf32: bool = False

    def __post_init__(self):
        if self.stage1 is None or self.finetune is None:
            paper = paper_stages(self.model)
            self.stage1 = self.stage1 or paper[0]
            self.finetune = self.finetune or paper[1]

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data):
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown configuration keys: {', '.join(sorted(unknown))}")
        for key in ("stage1", "finetune"):
            if isinstance(data.get(key), dict):
                data[key] = StageConfig(**data[key])
        if "image_size" in data:
            data["image_size"] = tuple(data["image_size"])
        for key, value in WRITTEN_BEFORE.items():
            data.setdefault(key, value)
        if data.get("model") == "xunet":  # before --salient-split, --split split both sets
            data.setdefault("salient_split", data.get("split", "paper"))
        return cls(**data)

    def validate(self):
        """Raise ConfigError naming the first invalid option."""
        if self.model not in MODELS:
            raise ConfigError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        for name, spec in RUN_FIELDS.items():  # the options with choices
            choices = (spec.metadata.get("option") or {}).get("choices")
            if choices and getattr(self, name) not in choices:
                raise ConfigError(f"{option_flag(name)} must be one of {', '.join(choices)}, "
                                  f"got {getattr(self, name)!r}")
        for prefix in ("", "salient_"):  # the fine-tuning set's reading, then the pre-training set's
            check_reading(*(getattr(self, prefix + name) for name in ("crop", "mask_threshold", "max_value")),
                          prefix=prefix)
        if self.folds < 2:
            raise ConfigError(f"{option_flag('folds')} must be at least 2, got {self.folds}")
        if self.lus_frames == ALL_FRAMES:
            pass  # how many: known once the frames are found (frames.select_lus_frames)
        elif not isinstance(self.lus_frames, int) or isinstance(self.lus_frames, bool):
            raise ConfigError(f"{option_flag('lus_frames')} must be a whole number or {ALL_FRAMES}, "
                              f"got {self.lus_frames!r}")
        elif self.lus_frames < self.folds:
            raise ConfigError(f"{option_flag('lus_frames')} ({self.lus_frames}) must be at least "
                              f"{option_flag('folds')} ({self.folds})")
        if self.flips and self.lus_frames != ALL_FRAMES and self.lus_frames % 2:
            raise ConfigError(
                f"{option_flag('lus_frames')} must be even with flipped copies (half originals, half mirrors), "
                f"got {self.lus_frames}"
            )
        if len(self.image_size) != 2 or any(s < 16 or s % 16 for s in self.image_size):
            raise ConfigError(
                f"{option_flag('image_size')} sides must be multiples of 16, got {'x'.join(map(str, self.image_size))}"
            )
        # VGG16 (V-Unet's encoder) takes at least 32 x 32: its fifth block pools to 1 x 1.
        if self.model == "vunet" and min(self.image_size) < 32:
            raise ConfigError(
                f"{option_flag('image_size')} sides must be at least 32 for V-Unet (VGG16's five poolings), "
                f"got {'x'.join(map(str, self.image_size))}"
            )
        if self.bce_weight != 1 and self.loss != "dice_bce":
            raise ConfigError(f"{option_flag('bce_weight')} weighs the cross-entropy of --loss dice_bce, "
                              f"not of --loss {self.loss}")
        if not 0 < self.bce_weight < float("inf"):
            raise ConfigError(f"{option_flag('bce_weight')} must be positive and finite, got {self.bce_weight}")
        if self.stage1_scope not in STAGE1_SCOPES or (self.model == "xunet" and self.stage1_scope != "pool"):
            raise ConfigError(f"{option_flag('stage1_scope')} must be one of {', '.join(STAGE1_SCOPES)} "
                              f"(fold: V-Unet only), got {self.stage1_scope!r} for {self.model}")
        if not (isinstance(self.seed, int) and 0 <= self.seed <= MAX_SEED):
            raise ConfigError(f"{option_flag('seed')} must be a whole number from 0 to {MAX_SEED}, got {self.seed}")
        for label, stage in (("stage 1", self.stage1), ("fine-tuning", self.finetune)):
            if stage.epochs < 1:
                raise ConfigError(f"--epochs must be positive, got {stage.epochs} for {label}")
            if stage.batch_size < 1:
                raise ConfigError(f"--batch-size must be positive, got {stage.batch_size} for {label}")
            if not 0 < stage.learning_rate < float("inf"):
                raise ConfigError(f"--lr must be positive and finite, got {stage.learning_rate} for {label}")
        if not 0 < self.validation_fraction < 1:
            raise ConfigError(f"validation fraction must be in (0, 1), got {self.validation_fraction}")
        return self


RUN_FIELDS = {spec.name: spec for spec in dataclasses.fields(RunConfig)}


def paper_stages(model):
    """The paper's (stage 1, fine-tuning) optimiser settings for each model."""
    if model == "xunet":
        return StageConfig(100, 30, 1e-5), StageConfig(100, 20, 5e-6)
    return StageConfig(100, 20, 1e-5), StageConfig(100, 20, 5e-6)


# Presets are data: overrides of RunConfig's paper defaults, then of one model's (under its
# name). "quick" is sized for the 2-core demo machine (the README's main job runs in minutes):
# smaller frames, fewer frames, epochs and folds, larger learning rates, and He initialisation.
# With Keras' default glorot_uniform, X-Unet trained from scratch at 1e-4 collapsed to all
# background by its sixth epoch, and V-Unet's decoder stalled for five epochs before learning;
# with he_normal both learn from the first epochs (measured for issue 4, see the README).
# "by_lus_frames" holds overrides that apply when the run ends up with that many LUS frames:
# the authors fine-tuned the 600-frame set for 150 epochs (X_Unet_v3_2), not 100.
PRESETS = {
    "paper": {
        "by_lus_frames": {600: {"finetune": {"epochs": 150}}},
    },
    "quick": {
        "image_size": (128, 64),
        "lus_frames": 80,
        "folds": 2,
        "synthetic_lus": 120,
        "synthetic_salient": 96,
        "fallback_to_random_weights": True,
        "initializer": "he_normal",
        # What the preset was tuned with: one pass per stage-1 epoch, nearest resampling.
        "stage1_steps": "train",
        "augment_interpolation": "nearest",
        # Deterministic, so the demo gives the same numbers on every run of this machine.
        "deterministic": True,
        "tf32": True,  # TensorFlow's default: faster on a recent GPU, no effect on a CPU
        # bfloat16 where the CPU has it in hardware, float32 elsewhere (lungseg.precision): on
        # the demo's AMD EPYC (AVX-512 BF16) V-Unet's quick run took 1.5x less time, with fold
        # Dice within the spread between seeds (X-Unet stays float32, below).
        "precision": "auto",
        "stage1": {"epochs": 8, "batch_size": 8, "learning_rate": 2e-4},
        # Unfreezing a random (offline) VGG16 encoder at 1e-4 collapsed to all background.
        "finetune": {"epochs": 2, "batch_size": 8, "learning_rate": 3e-5},
        # X-Unet pre-trains gently: after salient epochs at 1e-4 its unnormalised activations
        # were inflated and it called much of each LUS frame foreground, and fine-tuning stalled
        # near Dice 0.5 or collapsed. 3 epochs at 3e-5, then 1e-4 on LUS, learned on both folds.
        # X-Unet trains in float32: in bfloat16 its quick runs took 1.6-1.8x less time, but over
        # seeds 0-3 their mean fold Dice was 0.17 lower than float32's (0.36 vs 0.52, paired
        # differences -0.53 to +0.08) and seed 2 collapsed to all background on both folds.
        "xunet": {
            "precision": "float32",
            "stage1": {"epochs": 3, "batch_size": 4, "learning_rate": 3e-5},
            "finetune": {"epochs": 8, "batch_size": 4, "learning_rate": 1e-4},
        },
    },
}


# "sound": the quick preset's sizes and budget (epochs, learning rates) on every frame, with a
# recipe that holds on new subjects: folds that never split a subject (pairs.default_group
# groups by the subject when names carry one, else by probe position and frame window),
# nnU-Net's strong augmentation, Dice + binary cross-entropy (Dice alone collapses on thin
# targets), He initialisation, and frames cropped to the imaging sector (screen captures' black
# margins, scales and labels left out; a frame that fills its image, as a linear probe's, is
# kept whole). Beyond the paper (docs/training.md). keep_aspect stays off: at quick's 128 x 64 input a
# 960 x 128 linear frame would keep only 17 columns.
PRESETS["sound"] = {
    **PRESETS["quick"],
    # Every frame of the user's set: quick's 80 (40 and their mirror images) are the first 40
    # in name order, often one or two subjects of a real set, which held-out subjects punish.
    "lus_frames": ALL_FRAMES,
    "split": "grouped",
    "augment_policy": "strong",
    "loss": "dice_bce",
    "initializer": "he_normal",
    "crop": "auto",
    # Small sets train as long as 100 frames would: on the real phantom, folds of 15-17 training
    # frames learned nothing in 8 one-pass epochs (32-40 steps); with 200 steps they did, and
    # better as 40 short epochs (per-image Dice 0.64) than as 8 epochs of 25 steps (0.60)
    # (docs/transfer.md). A fold of 100 frames or more keeps its 8 epochs.
    "budget_frames": 100,
    # X-Unet's pre-training hold-out as sound runs have drawn it since the preset exists (each
    # generated composite its own group, so a random 20 %), keeping their numbers.
    "xunet": {**PRESETS["quick"]["xunet"], "salient_split": "grouped"},
    # V-Unet's stage 1 on each fold's training frames: one stage 1 on the whole pool trains the
    # decoder on 4 of 5 held-out parts, and the fold scores then measure frames it has seen.
    "vunet": {"stage1_scope": "fold"},
}


def make_config(model, name, preset="paper", **overrides):
    """RunConfig for ``model`` from ``preset``, then ``overrides`` (options given by the user).

    Stage overrides may be partial dicts, e.g. ``stage1={"epochs": 3}``.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}: use one of {', '.join(PRESETS)}")
    stage1, finetune = paper_stages(model)
    values = {"model": model, "name": name, "preset": preset}
    preset = PRESETS[preset]
    preset_values = {k: v for k, v in preset.items() if k not in (*MODELS, "by_lus_frames")}
    lus_frames = overrides.get("lus_frames", preset_values.get("lus_frames", RunConfig.lus_frames))
    by_frames = preset.get("by_lus_frames", {})
    for source in (preset_values, preset.get(model, {}), by_frames.get(lus_frames, {}), overrides):
        for key, value in source.items():
            if key in ("stage1", "finetune"):
                base = stage1 if key == "stage1" else finetune
                base = dataclasses.replace(base, **value)
                stage1, finetune = (base, finetune) if key == "stage1" else (stage1, base)
            else:
                values[key] = value
    return RunConfig(stage1=stage1, finetune=finetune, **values).validate()
