"""A sample grid of several models from the same noise, for a person to look at.

    python bench/sample_grid.py assets/emoji-32 training/checkpoints/emoji-v3 out.png
    python bench/sample_grid.py training/checkpoints/emoji-v3 out.png --prompts "castle,black and white castle"

One row per model and setting (50 steps, then 10 steps; guidance 3), one column per prompt.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import conjure  # noqa: E402

PROMPTS = ["snow leopard", "bengal tiger", "lighthouse", "bakery", "guitar", "sailboat", "red apple", "castle",
           "bicycle", "umbrella", "elephant", "pizza", "rocket", "tree", "church", "bridge"]
parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("models", nargs="+", help="model folders or names, one pair of rows each")
parser.add_argument("out", help="PNG to write")
parser.add_argument("--prompts", type=lambda v: v.split(","), default=PROMPTS, help="comma-separated prompts")
args = parser.parse_args()
rows = []
for path in args.models:
    model = conjure.load_model(path, dtype="bfloat16")
    for steps, guidance in ((50, 3.0), (10, 3.0)):
        images = conjure.sample(model, args.prompts, steps=steps, guidance=guidance, seed=0)[:, 0]
        rows.append(np.concatenate(list(images), axis=1))
grid = np.concatenate(rows, axis=0)
img = Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST)
img.save(args.out)
print(args.out, img.size, "rows: per model, 50 steps then 10 steps, guidance 3; columns:", ", ".join(args.prompts))
