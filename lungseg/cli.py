"""What the command-line scripts share: training options, and turning errors into one line."""

import argparse
import dataclasses
import gc
import math
import signal
import sys
import threading
import traceback

from lungseg.config import (
    ALL_FRAMES,
    CROPS,
    MAX_SEED,
    MODELS,
    PRESETS,
    RunConfig,
    make_config,
    option_flag,
    option_text,
)
from lungseg import _startup
from lungseg.console import command_messages
from lungseg.errors import ConfigError, LungsegError

RESUME_HINT = "Run the same command again to resume from the last finished epoch."
# Upper bounds of the options: beyond them a run cannot fit a machine (or a seed NumPy).
MAX_SIDE = 4096
MAX_COUNT = 1_000_000


class Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler's stop, ``kill``): handled as Ctrl-C is, so the same clean-up
    runs (temporary folders removed, the last finished epoch kept)."""

    signum = signal.SIGTERM


# Set by the handler as well as raised: C code the signal lands in (a TensorFlow op, NumPy's
# __array__ protocol) may swallow the exception or turn it into another one; the flag outlives
# both, for ``stop_if_terminated`` and ``run_main`` to read.
_terminated = threading.Event()


def _terminate(signum, frame):
    _terminated.set()
    raise Terminated()


def stop_if_terminated():
    """Raise ``Terminated`` again if SIGTERM arrived but its exception got lost on the way
    (called between training steps)."""
    if _terminated.is_set():
        raise Terminated()


def _signal_handler():
    """Install ``_terminate`` for SIGTERM in the main thread; return what to restore, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        return signal.signal(signal.SIGTERM, _terminate)
    except (ValueError, OSError):
        return None


def run_main(main, argv=None, resume_hint=None):
    """Call ``main(argv)``; print user errors as one ``error:`` line and return an exit code.

    ``main``'s own return value (0 or None on success), 2 on a user error (bad input, file or
    option), 130 on Ctrl-C, 143 on SIGTERM (handled as Ctrl-C). With ``--debug`` in ``argv``
    the full traceback is printed too, and TensorFlow's start-up log; without it, TensorFlow
    (if not imported yet) starts quietly (``lungseg._startup.quiet_tensorflow``).

    Without ``argv`` (the command line's own call, after which the process ends), the objects
    left are frozen out of the garbage collector: the collection at interpreter exit would walk
    TensorFlow's millions of objects only to free memory the exit frees anyway (about a second
    per command; files are closed and ``atexit`` handlers run as before).
    """
    whole_process = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    _startup.quiet_tensorflow(debug)
    previous = _signal_handler()
    try:
        with command_messages():
            return main(argv) or 0
    except Exception as error:
        if not _terminated.is_set():
            return _report_error(error, debug)
        interruption = Terminated()  # SIGTERM's exception, changed on its way through C code
        interruption.__cause__ = error
        return _report_interruption(interruption, debug, resume_hint)
    except KeyboardInterrupt as interruption:
        return _report_interruption(interruption, debug, resume_hint)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        _terminated.clear()
        if whole_process:
            gc.freeze()


def _report_error(error, debug):
    """An ``error:`` line (or lines) for a user's error, and exit code 2; anything else is a
    bug and propagates with its traceback."""
    if isinstance(error, LungsegError):
        lines = str(error).splitlines() or [type(error).__name__]
    elif isinstance(error, OSError):  # unwritable folder, full disk, ...
        where = f"{error.filename}: " if error.filename else ""
        lines = [f"{where}{error.strerror or error}"]
    else:
        raise error
    if debug:
        traceback.print_exception(error)
    for line in lines:
        print(f"error: {line}", file=sys.stderr)
    return 2


def _report_interruption(interruption, debug, resume_hint):
    """What was interrupted and how to go on; exit code 130 (Ctrl-C) or 143 (SIGTERM)."""
    if debug:
        traceback.print_exception(interruption)
    terminated = isinstance(interruption, Terminated)
    print(("\nterminated (SIGTERM)." if terminated else "\ninterrupted.")
          + (f" {resume_hint}" if resume_hint else ""), file=sys.stderr)
    return 128 + Terminated.signum if terminated else 130


def positive_int(text):
    value = _number(int, text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text}")
    if value > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_COUNT:,}, got {text}")
    return value


def frame_count(text):
    """``--lus-frames``: a positive whole number, or ``all``."""
    return ALL_FRAMES if text.strip().lower() == ALL_FRAMES else positive_int(text)


def non_negative_int(text):
    value = _number(int, text)
    if not 0 <= value <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to {MAX_COUNT:,}, got {text}")
    return value


def seed(text):
    """A seed NumPy and TensorFlow take: 0 to 2**31 - 1."""
    value = _number(int, text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to {MAX_SEED}, got {text}")
    return value


def positive_float(text):
    value = _number(float, text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def run_name(text):
    """``--name``: one plain folder name (``lungseg.runs.check_name``)."""
    from lungseg.runs import check_name

    try:
        return check_name(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error).replace("--name ", "")) from None


def _number(kind, text):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a {'whole ' if kind is int else ''}number: {text!r}") from None


def pair_option(text, kind, expected):
    """The ``kind`` numbers of ``A`` (taken twice) or ``AxB`` (any count: the caller checks
    for two); argparse's error names ``expected`` when one is not a number."""
    try:
        values = tuple(kind(value) for value in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    return values * 2 if len(values) == 1 else values


def image_size(text):
    """``256`` (square) or ``HxW`` such as ``256x64``."""
    sides = pair_option(text, int, "N or HxW")
    if len(sides) != 2 or any(side < 16 or side % 16 for side in sides):
        raise argparse.ArgumentTypeError(f"sides must be multiples of 16 (at least 16), got {text!r}")
    if any(side > MAX_SIDE for side in sides):
        raise argparse.ArgumentTypeError(f"sides must be at most {MAX_SIDE}, got {text!r}")
    return sides


def share(text):
    """A number strictly between 0 and 1 (--mask-threshold)."""
    value = _number(float, text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def sample_value(text):
    """The largest value of 16-bit frames, 1-65535 (--max-value)."""
    value = _number(int, text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"must be between 1 and 65535, got {text}")
    return value


# RunConfig's fields that say how data is read, as add_reading_options names them.
READING_FIELDS = ("target", "mask_threshold", "max_value", "crop", "keep_aspect")


def add_reading_options(parser, show=None):
    """--target, --mask-threshold, --max-value, --crop and --keep-aspect: how frames and masks
    are read (training, evaluate's --test, data check). ``show`` gives a field's default as
    help text (``preset_defaults``); without it the defaults are the paper's."""
    show = show or (lambda getter: f"(default: {option_text(getter(make_config('xunet', 'help')))})")
    add = parser.add_argument
    add("--target", metavar="NAME", help="read the masks of masks/NAME/ (MASK/NAME/), for sets "
        "with one mask folder per target, e.g. masks/rib_shadow/ (default: masks/ itself)")
    add("--mask-threshold", type=share, metavar="X",
        help="a mask pixel is foreground above X times the mask's level (its foreground value); "
        "also accepts soft masks, which are otherwise refused (default: 0.5, half)")
    add("--max-value", type=sample_value, metavar="N",
        help="the largest value of 16-bit frames, e.g. 4095 for 12-bit data (default: the "
        "file's sBIT or MaxSampleValue, else 1023 or 4095 when the values fit 10 or 12 bits, "
        "said in one line, else 65535)")
    add("--crop", choices=CROPS, help="auto: crop each frame and mask to the imaging sector's "
        "bounding box (black margins, depth scales, labels and marks of screen captures left out) "
        "before resizing; masks are mapped back to each frame's own size and position "
        + show(lambda c: c.crop))
    add("--keep-aspect", action="store_true", default=None,
        help="keep each frame's (or crop box's) aspect ratio, padding with black to the model's "
        "input instead of stretching " + show(lambda c: c.keep_aspect))


def reading_from_args(args):
    """``lungseg.data.frames.Reading`` from add_reading_options' options (paper defaults)."""
    from lungseg.data.frames import Reading

    return Reading(mask_threshold=args.mask_threshold, max_value=args.max_value,
                   crop=args.crop or "none", keep_aspect=bool(args.keep_aspect))


def freeze_spec(text):
    """``none`` -> [], a part name -> [part], ``a,b`` -> the layer names a and b."""
    if text == "none":
        return []
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected none, a part or layer names, got {text!r}")
    return names


def preset_defaults(model):
    """A function giving, for a RunConfig field, its value in each preset as help text."""
    configs = {preset: make_config(model, "help", preset) for preset in PRESETS}

    def show(getter):
        values = {preset: getter(config) for preset, config in configs.items()}
        if len(set(map(str, values.values()))) == 1:
            return f"(default: {option_text(values['paper'])})"
        return "(" + "; ".join(f"{preset}: {option_text(value)}" for preset, value in values.items()) + ")"

    return show


def training_parser(model, description):
    """The options both training scripts share; each overrides the chosen preset."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    d = preset_defaults(model)
    add("--preset", choices=sorted(PRESETS), default="paper",
        help="paper: the paper's protocol exactly; quick: a CPU-sized version for the demo; "
        "sound: quick's sizes with a recipe that holds on new subjects (grouped split, strong "
        "augmentation, Dice + BCE, He initialisation) (default: paper)")
    for name, spec in training_options(model):
        _add_field_option(parser, name, spec, d)
    add("--fold", type=positive_int, metavar="K", help="run only fold K (1-based); other "
        "folds can run as separate jobs, and each job gathers the finished folds into summary.json")
    add("--epochs", type=positive_int, nargs="+", metavar="N",
        help="epochs of stage 1 and fine-tuning, one value for both "
        + d(lambda c: f"{c.stage1.epochs} {c.finetune.epochs}"))
    add("--batch-size", type=positive_int, nargs="+", metavar="N",
        help="batch size of stage 1 and fine-tuning, one value for both "
        + d(lambda c: f"{c.stage1.batch_size} {c.finetune.batch_size}"))
    add("--lr", type=positive_float, nargs="+", metavar="X",
        help="Adam learning rate of stage 1 and fine-tuning, one value for both "
        + d(lambda c: f"{c.stage1.learning_rate:g} {c.finetune.learning_rate:g}"))
    add_reading_options(parser, d)
    add("--name", type=run_name,
        help=f"run folder name, one plain name inside --out (default: {model}_<preset>)")
    add("--overwrite", action="store_true", help="replace the run folder of the same name (only "
        "a run folder; the previous run is deleted once the new one has finished)")
    add("--mixed-precision", dest="precision", action="store_const", const="mixed_float16",
        help="same as --precision mixed_float16 (GPU)")
    add("--debug", action="store_true", help="show full tracebacks")
    return parser


def training_options(model):
    """``(field name, option spec)`` of each ``RunConfig`` field that ``model``'s training
    command takes as an option (``lungseg.config.option``), in the fields' order."""
    for spec in dataclasses.fields(RunConfig):
        option = spec.metadata.get("option")
        if option and model in (option["models"] or MODELS):
            yield spec.name, option


def _add_field_option(parser, name, spec, show):
    """The option of a ``RunConfig`` field; its default is None (the preset's value then)."""
    arguments = {"dest": name, "help": spec["help"]}
    if spec["action"]:
        arguments.update(action=spec["action"], default=None)
    else:
        arguments.update(type=globals()[spec["kind"]] if spec["kind"] else None,
                         choices=spec["choices"], metavar=spec["metavar"])
    if spec["presets"]:
        arguments["help"] += " " + show(lambda config: getattr(config, name))
    parser.add_argument(option_flag(name), **arguments)


def _stage_values(values, key, parser, option):
    if values is None:
        return {}, {}
    if len(values) > 2:
        parser.error(f"{option} takes one or two values (stage 1, fine-tuning), got {len(values)}")
    first, second = values[0], values[-1]
    return {key: first}, {key: second}


def config_from_args(model, args, parser):
    """RunConfig from the preset and the options given."""
    overrides = {}
    for field in (*(name for name, _ in training_options(model)), *READING_FIELDS):
        value = getattr(args, field)
        if isinstance(value, str) and not value.strip():  # --data "": not "no --data"
            parser.error(f"{option_flag(field)} must not be empty")
        if value is not None:
            overrides[field] = value
    stage1, finetune = {}, {}
    for key, option in (("epochs", "--epochs"), ("batch_size", "--batch-size"), ("learning_rate", "--lr")):
        first, second = _stage_values(getattr(args, key if key != "learning_rate" else "lr"), key, parser, option)
        stage1.update(first)
        finetune.update(second)
    if stage1:
        overrides["stage1"] = stage1
    if finetune:
        overrides["finetune"] = finetune
    name = args.name or f"{model}_{args.preset}"
    return make_config(model, name, args.preset, **overrides)
