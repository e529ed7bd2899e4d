"""One configuration object per run: the paper's protocol by default, presets as data.

The command line fills a ``RunConfig`` (preset first, then each option given), the run folder
stores it as ``config.json``, and everything downstream reads only the config.
"""

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Optional

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


@dataclass
class StageConfig:
    """Optimiser settings of one training stage."""

    epochs: int
    batch_size: int
    learning_rate: float

# RunConfig's fields that name the user's files (or a regex, for groups): stored absolute in
# config.json (runs.absolute_paths); a machine may mount them elsewhere (lungseg.distribute).
PATH_FIELDS = ("data", "salient", "pretrained", "encoder_weights", "groups")


@dataclass
class RunConfig:
    """Everything that defines a run. Defaults are the paper's (see docs/paper.md).

    ``stage1`` is V-Unet's decoder-only stage or X-Unet's salient-object pre-training;
    ``finetune`` is the 5-fold stage 2 on LUS frames.
    """

    model: str
    name: str
    preset: str = "paper"
    out: str = "weights"
    data: Optional[str] = None  # LUS folder; None: generated phantom frames
    salient: Optional[str] = None  # salient-object folder (X-Unet); None: generated composites
    groups: Optional[str] = None  # blocks:N, a regex or a CSV giving each frame's group
    target: Optional[str] = None  # masks/<target>/ of a set with several targets per frame
    mask_threshold: Optional[float] = None  # share of a mask's level; None: half, soft refused
    max_value: Optional[int] = None  # 16-bit frames: the value read as white; None: stated/inferred
    crop: str = "none"  # "auto": crop frames and masks to the imaging sector (lungseg.data.crop)
    keep_aspect: bool = False  # pad to the input's shape instead of stretching
    lus_frames: int = 400
    flips: bool = True  # 400 = 200 frames + their mirror images, as in the paper
    split: str = "paper"
    folds: int = 5
    image_size: tuple = (256, 256)
    interpolation: str = "nearest"
    augment: bool = True
    augment_interpolation: str = "bilinear"
    augment_policy: str = "paper"  # what augmentation does when on: paper or strong (nnU-Net's)
    loss: str = "dice"  # dice (the paper's) or dice_bce
    stop_on_collapse: bool = False  # end a stage whose predictions collapsed for a few epochs
    encoder_weights: Optional[str] = "imagenet"  # V-Unet only
    initializer: str = "glorot_uniform"  # kernels of new ReLU convolutions (Keras' default)
    fallback_to_random_weights: bool = False  # quick preset: warn instead of failing offline
    freeze: list = field(default_factory=list)  # stage-2 frozen parts or layer names
    pretrained: Optional[str] = None  # X-Unet: reuse this pre-trained model, skip pre-training
    stage1: StageConfig = None
    finetune: StageConfig = None
    validation_fraction: float = 0.2
    stage1_steps: str = "pool"
    synthetic_lus: int = 300  # phantom frames generated when no --data is given
    synthetic_salient: int = 10_000  # composites generated when no --salient is given
    seed: int = 0
    precision: str = "float32"
    jit_compile: bool = False
    deterministic: bool = False
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
        return cls(**data)

    def validate(self):
        """Raise ConfigError naming the first invalid option."""
        if self.model not in MODELS:
            raise ConfigError(f"--model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if self.split not in SPLITS:
            raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"--interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}"
            )
        for option, value, choices in (
            ("--augment-interpolation", self.augment_interpolation, AUGMENT_INTERPOLATIONS),
            ("--stage1-steps", self.stage1_steps, STAGE1_STEPS),
            ("--precision", self.precision, PRECISION_CHOICES),
            ("--augment", self.augment_policy, AUGMENT_POLICIES),
            ("--loss", self.loss, LOSSES),
        ):
            if value not in choices:
                raise ConfigError(f"{option} must be one of {', '.join(choices)}, got {value!r}")
        if self.crop not in CROPS:
            raise ConfigError(f"--crop must be one of {', '.join(CROPS)}, got {self.crop!r}")
        if self.mask_threshold is not None and not 0 < self.mask_threshold < 1:
            raise ConfigError(f"--mask-threshold must be between 0 and 1, got {self.mask_threshold}")
        if self.max_value is not None and not 0 < self.max_value < 65536:
            raise ConfigError(f"--max-value must be between 1 and 65535, got {self.max_value}")
        if self.initializer not in INITIALIZERS:
            raise ConfigError(
                f"--initializer must be one of {', '.join(INITIALIZERS)}, got {self.initializer!r}"
            )
        if self.folds < 2:
            raise ConfigError(f"--folds must be at least 2, got {self.folds}")
        if self.lus_frames < self.folds:
            raise ConfigError(f"--lus-frames ({self.lus_frames}) must be at least --folds ({self.folds})")
        if self.flips and self.lus_frames % 2:
            raise ConfigError(
                f"--lus-frames must be even with flipped copies (half originals, half mirrors), "
                f"got {self.lus_frames}"
            )
        if len(self.image_size) != 2 or any(s < 16 or s % 16 for s in self.image_size):
            raise ConfigError(
                f"--image-size sides must be multiples of 16, got {'x'.join(map(str, self.image_size))}"
            )
        # VGG16 (V-Unet's encoder) takes at least 32 x 32: its fifth block pools to 1 x 1.
        if self.model == "vunet" and min(self.image_size) < 32:
            raise ConfigError(
                f"--image-size sides must be at least 32 for V-Unet (VGG16's five poolings), "
                f"got {'x'.join(map(str, self.image_size))}"
            )
        if not (isinstance(self.seed, int) and 0 <= self.seed < 2**31):
            raise ConfigError(f"--seed must be a whole number from 0 to {2**31 - 1}, got {self.seed}")
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


# "sound": the quick preset's sizes and budget (frames, epochs, learning rates) with a recipe that
# holds on new subjects: folds that never split a subject (pairs.default_group groups by the
# subject when names carry one, else by probe position and frame window), nnU-Net's strong
# augmentation, Dice + binary cross-entropy (Dice alone collapses on thin targets), He
# initialisation, and frames cropped to the imaging sector (screen captures' black margins,
# scales and labels left out; a frame that fills its image, as a linear probe's, is kept whole).
# Beyond the paper (docs/training.md). keep_aspect stays off: at quick's 128 x 64 input a
# 960 x 128 linear frame would keep only 17 columns.
PRESETS["sound"] = {
    **PRESETS["quick"],
    "split": "grouped",
    "augment_policy": "strong",
    "loss": "dice_bce",
    "initializer": "he_normal",
    "crop": "auto",
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
