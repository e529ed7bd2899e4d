"""Activation scale of a trained model on LUS frames, against the same model freshly initialised.

A plain U-Net has no normalisation: training can inflate its activations layer after layer
and push the sigmoid head towards 0 or 1, which Dice-loss fine-tuning recovers from slowly if
at all. This prints, per convolution, the mean ReLU activation and
the share of channels never active on the frames, for the saved model and for a copy with
fresh weights (``keras.models.clone_model`` redraws them with each layer's initialiser), and
the ratio of the two; then the head's mean and maximum output. The README's note on the
quick preset's X-Unet pre-training quotes it:

    python train_xunet.py --preset quick --name x_hot --epochs 2 12 --lr 1e-4 1e-4
    python benchmarks/activations.py weights/x_hot/pretrain/model.keras
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

common.setup("tensorflow")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="a saved lungseg model (.keras)")
    parser.add_argument("--data", type=Path, help="LUS frames (default: the generated phantom set)")
    parser.add_argument("--frames", type=common.positive_int, default=16,
                        help="frames to run through both models (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fresh weights (default 0)")
    parser.add_argument("--json", metavar="FILE", help="write the results to FILE (JSON)")
    return parser.parse_args(argv)


def layer_stats(model, images):
    """{layer name: (mean activation, share of dead channels)} per ReLU convolution, and the output."""
    import keras
    import numpy as np

    names = [layer.name for layer in model.layers
             if isinstance(layer, keras.layers.Conv2D) and layer.get_config().get("activation") == "relu"]
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names] + [model.output])
    outputs = probe.predict(images, verbose=0)
    stats = {}
    for name, value in zip(names, outputs[:-1]):
        per_channel_max = value.reshape(-1, value.shape[-1]).max(axis=0)
        stats[name] = {"mean": float(value.mean()), "dead": float((per_channel_max <= 0).mean())}
    head = outputs[-1]
    return stats, {"mean": float(np.mean(head)), "max": float(np.max(head))}


def main(argv=None):
    args = parse_args(argv)
    import keras
    import numpy as np

    import lungseg  # noqa: F401  (registers the loss and metrics for loading)
    from lungseg import data

    model = keras.models.load_model(args.model, compile=False)
    folder = args.data or common.lus_dataset()[0]
    size = tuple(model.input_shape[1:3])
    frames = data.load_frames(data.find_pairs(folder), size).take(args.frames)
    images = np.asarray(frames.images, "float32")
    keras.utils.set_random_seed(args.seed)
    fresh = keras.models.clone_model(model)

    trained, trained_head = layer_stats(model, images)
    initial, initial_head = layer_stats(fresh, images)
    rows = [[name, common.fmt(initial[name]["mean"]), common.fmt(trained[name]["mean"]),
             common.fmt(trained[name]["mean"] / initial[name]["mean"] if initial[name]["mean"] else None, "x"),
             f"{initial[name]['dead']:.0%}", f"{trained[name]['dead']:.0%}"] for name in trained]
    common.say(f"{args.model} on {len(images)} frames from {folder} ({size[0]}x{size[1]})")
    common.say(common.format_table(
        ["layer", "mean (fresh)", "mean (trained)", "ratio", "dead (fresh)", "dead (trained)"], rows))
    common.say(f"head output mean {initial_head['mean']:.3f} -> {trained_head['mean']:.3f}, "
               f"max {initial_head['max']:.3f} -> {trained_head['max']:.3f}")
    if args.json:
        common.write_json(args.json, {
            "model": str(args.model), "frames": len(images), "layers": {"fresh": initial, "trained": trained},
            "head": {"fresh": initial_head, "trained": trained_head},
        })


if __name__ == "__main__":
    main()
