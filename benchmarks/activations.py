"""Activation scale of a trained model on LUS frames, against the same model freshly initialised.

Per ReLU convolution: the mean activation and the share of channels never active on the
frames, for the saved model and for a copy with fresh weights (``clone_model``), and their
ratio; then the head's mean and maximum output. Quoted in docs/results.md (quick preset):

    python train_xunet.py --preset quick --name x_hot --epochs 2 12 --lr 1e-4 1e-4
    python benchmarks/activations.py weights/x_hot/pretrain/model.keras
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

common.setup("tensorflow")


def layer_stats(model, images):
    """{layer: {mean activation, share of dead channels}} per ReLU convolution; the head's."""
    import keras
    import numpy as np

    names = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)
             and layer.get_config().get("activation") == "relu"]
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names] + [model.output])
    outputs = probe.predict(images, verbose=0)
    stats = {}
    for name, value in zip(names, outputs[:-1]):
        per_channel_max = value.reshape(-1, value.shape[-1]).max(axis=0)
        stats[name] = {"mean": float(value.mean()), "dead": float((per_channel_max <= 0).mean())}
    return stats, {"mean": float(np.mean(outputs[-1])), "max": float(np.max(outputs[-1]))}


def main(argv=None):
    parser = common.parser(__doc__, frames=(16, "frames to run through both models"))
    parser.add_argument("model", type=Path, help="a saved lungseg model (.keras)")
    parser.add_argument("--data", type=Path, help="LUS frames (default: the generated phantoms)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fresh weights (default 0)")
    args = parser.parse_args(argv)
    import keras
    import numpy as np

    from lungseg import data, predict

    model = predict.load_model(args.model)
    folder = args.data or common.lus_dataset()
    size = predict.input_size(model, args.model)[:2]
    frames = data.load_frames(data.find_pairs(folder), size).take(args.frames)
    images = np.asarray(frames.images, "float32")
    keras.utils.set_random_seed(args.seed)
    fresh = keras.models.clone_model(model)
    trained, trained_head = layer_stats(model, images)
    initial, initial_head = layer_stats(fresh, images)
    rows = []
    for name, t in trained.items():
        i = initial[name]
        rows.append([name, common.fmt(i["mean"]), common.fmt(t["mean"]),
                     common.fmt(t["mean"] / i["mean"] if i["mean"] else None, "x"),
                     f"{i['dead']:.0%}", f"{t['dead']:.0%}"])
    common.say(f"{args.model} on {len(images)} frames from {folder} ({size[0]}x{size[1]})")
    common.say(common.format_table(["layer", "mean (fresh)", "mean (trained)", "ratio",
                                    "dead (fresh)", "dead (trained)"], rows))
    common.say(f"head output mean {initial_head['mean']:.3f} -> {trained_head['mean']:.3f}, "
               f"max {initial_head['max']:.3f} -> {trained_head['max']:.3f}")
    common.save(args, {"model": str(args.model), "frames": len(images),
                       "layers": {"fresh": initial, "trained": trained},
                       "head": {"fresh": initial_head, "trained": trained_head}})


if __name__ == "__main__":
    main()
