"""A sample grid of several models from the same noise, for a person to look at.

    python bench/sample_grid.py assets/emoji-32 training/checkpoints/emoji-v3 out.png

One row per model and setting (50 steps, then 10 steps; guidance 3), one column per prompt.
"""
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import conjure  # noqa: E402

PROMPTS = ["snow leopard", "bengal tiger", "lighthouse", "bakery", "guitar", "sailboat", "red apple", "castle",
           "bicycle", "umbrella", "elephant", "pizza", "rocket", "tree", "church", "bridge"]
rows = []
for path in sys.argv[1:-1]:
    model = conjure.load_model(path, dtype="bfloat16")
    for steps, guidance in ((50, 3.0), (10, 3.0)):
        images = conjure.sample(model, PROMPTS, steps=steps, guidance=guidance, seed=0)[:, 0]
        rows.append(np.concatenate(list(images), axis=1))
grid = np.concatenate(rows, axis=0)
img = Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST)
img.save(sys.argv[-1])
print(sys.argv[-1], img.size, "rows: per model, 50 steps then 10 steps, guidance 3; columns:", ", ".join(PROMPTS))
