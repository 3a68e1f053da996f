"""Does the embedded model carry meaning? Triplet ranking, sample recognition and a sample grid.

    python -m training.emoji_eval [--model emoji] [--grid assets/emoji-32/samples.png]

A triplet (anchor, near, far) is ranked right when D_J(anchor, near) < D_J(anchor, far).
The triplets below are everyday emoji concepts written for this check; they were not used
to choose anything in training. The MiniLM cosine baseline ranks the same triplets by
1 - cosine of the text encoder's sentence embeddings ("what the words say").
Recognition draws samples for everyday prompts and asks whether each is nearest to its own emoji
among the references: the 10-way test (10 prompts, chance 10%) and the harder 50-way test (50
everyday concepts, chance 2%); RECOGNITION_DEV (50 other concepts) and RECOGNITION_DEV_10 are for choosing
settings on (`bench/bench_recognition.py --set dev`). References are each concept's emoji in all three training styles
(OpenMoji, Twemoji, Noto), shipped in `assets/emoji-references-32.npz` (written from the training
data by `--write-references`), so the check needs neither npm nor the font.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

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

# The 50-way test: everyday concepts a person would type, each with the emoji that draws it.
RECOGNITION_50 = {
    "a dog": "🐕", "a cat": "🐈", "a horse": "🐎", "a cow": "🐄", "a pig": "🐖", "a chicken": "🐔", "a penguin": "🐧",
    "a fish": "🐟", "an octopus": "🐙", "a snail": "🐌", "a butterfly": "🦋", "a snake": "🐍", "a turtle": "🐢",
    "an elephant": "🐘", "a giraffe": "🦒", "a tiger": "🐅", "a leopard": "🐆", "a monkey": "🐒",
    "a red apple": "🍎", "a banana": "🍌", "grapes": "🍇", "a watermelon": "🍉", "a lemon": "🍋", "a strawberry": "🍓",
    "a carrot": "🥕", "broccoli": "🥦", "a pizza": "🍕", "a hamburger": "🍔", "a doughnut": "🍩", "a birthday cake": "🎂",
    "a red car": "🚗", "a bus": "🚌", "a bicycle": "🚲", "an airplane": "✈️", "a rocket": "🚀", "a sailboat": "⛵",
    "a house": "🏠", "a tent": "⛺", "the sun": "☀️", "the crescent moon": "🌙", "a snowman": "⛄", "a rainbow": "🌈",
    "a rose": "🌹", "a cactus": "🌵", "a christmas tree": "🎄", "a guitar": "🎸", "a soccer ball": "⚽",
    "a smiling face": "😃", "a ghost": "👻", "a red heart": "❤️",
}

# To choose settings on (the app's guidance, results/app-guidance.md): 50 other everyday concepts, none in the sets
# above, and a 10-way set drawn from them. The sets above are then measured once with the choice.
RECOGNITION_DEV = {
    "a rabbit": "🐇", "a mouse": "🐁", "a bear": "🐻", "a koala": "🐨", "a panda": "🐼", "a lion": "🦁", "a zebra": "🦓",
    "a camel": "🐫", "a kangaroo": "🦘", "an owl": "🦉", "a duck": "🦆", "a parrot": "🦜", "a flamingo": "🦩",
    "a crab": "🦀", "a hedgehog": "🦔", "a dolphin": "🐬", "a bee": "🐝", "a ladybug": "🐞", "a spider": "🕷️",
    "a dragon": "🐉", "a cherry": "🍒", "a peach": "🍑", "a pineapple": "🍍", "a pear": "🍐", "an avocado": "🥑",
    "an ear of corn": "🌽", "a mushroom": "🍄", "a hot dog": "🌭", "a taco": "🌮", "french fries": "🍟",
    "an ice cream cone": "🍦", "a cookie": "🍪", "a steam locomotive": "🚂", "a motorcycle": "🏍️", "a fire engine": "🚒",
    "a helicopter": "🚁", "a ship": "🚢", "a tractor": "🚜", "an umbrella": "☂️", "a light bulb": "💡", "a key": "🔑",
    "a trophy": "🏆", "a crown": "👑", "a basketball": "🏀", "a snowflake": "❄️", "a cloud": "☁️", "a volcano": "🌋",
    "a sunflower": "🌻", "a palm tree": "🌴", "fire": "🔥",
}
RECOGNITION_DEV_10 = {p: RECOGNITION_DEV[p] for p in ("a rabbit", "a panda", "an owl", "a cherry", "a taco",
                                                       "a helicopter", "an umbrella", "a crown", "a sunflower", "fire")}

# The sample grid: the app's example prompts, phrases that are no emoji's name, and everyday concepts.
GRID_PROMPTS = ["snow leopard", "bengal tiger", "a red sports car", "a slice of pepperoni pizza", "a bag of chips",
                "french fries", "hamburger", "red apple", "green apple", "sun", "crescent moon", "cat face", "rocket",
                "a tiger", "a dog", "a banana", "the sun", "a house", "a smiling face", "a snowman", "a rose",
                "a guitar", "a watermelon", "a ghost", "a birthday cake", "a sailboat", "an elephant", "a penguin"]


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


REFERENCES = Path(__file__).resolve().parents[1] / "assets" / "emoji-references-32.npz"


def write_references(data_folder: Path, out: Path = REFERENCES, prompts: dict[str, str] | None = None) -> Path:
    """Each recognition concept's emoji in every training style, from the dataset `training.emoji_data` built."""
    from training import emoji_data

    prompts = prompts or {**RECOGNITION_50, **RECOGNITION, **RECOGNITION_DEV}
    images, concept, style, concepts = emoji_data.load(data_folder)
    index = {c["char"].replace("\ufe0f", ""): i for i, c in enumerate(concepts)}
    chars, styles, pictures = [], [], []
    for char in dict.fromkeys(prompts.values()):
        c = index.get(char.replace("\ufe0f", ""))
        if c is None:
            raise SystemExit(f"{char!r} is not in the dataset at {data_folder}")
        for i in np.flatnonzero(concept == c):
            chars.append(char)
            styles.append(emoji_data.STYLES[style[i]])
            pictures.append(images[i])
    np.savez_compressed(out, images=np.stack(pictures), chars=np.array(chars), styles=np.array(styles))
    return out


def reference_images(chars: list[str], path: Path = REFERENCES) -> tuple[np.ndarray, list[str]]:
    """The references of these emoji in every style: images (N, 32, 32, 3) uint8 and each one's emoji."""
    data = np.load(path)
    keep = [i for i, c in enumerate(data["chars"]) if c in set(chars)]
    missing = set(chars) - {str(data["chars"][i]) for i in keep}
    if missing:
        raise ValueError(f"{path} has no reference for {sorted(missing)}; rebuild it with --write-references")
    return data["images"][keep], [str(data["chars"][i]) for i in keep]


def evaluate_recognition(model, prompts: dict[str, str] = RECOGNITION, samples: int = 2, steps: int = 50,
                         guidance: float = 3.0, batch: int = 16, **settings) -> RecognitionReport:
    """Draw samples per prompt and find, for each, the prompt whose reference emoji (any style) is nearest.

    Nearness is the pixel distance at 8x8 (4x4 average pooling): it compares colour and layout and
    forgives the exact outline, which is what "you can tell it is a banana" means at 32x32.
    """
    import conjure

    def pooled(images: np.ndarray) -> np.ndarray:
        n, h, w, c = images.shape
        return images.reshape(n, h // 4, 4, w // 4, 4, c).mean(axis=(2, 4)).reshape(n, -1) / 255.0

    names = list(prompts)
    refs, ref_chars = reference_images(list(prompts.values()))
    owner = {char: name for name, char in prompts.items()}
    refs = pooled(refs)
    drawn = np.concatenate([conjure.sample(model, names[i : i + batch], samples=samples, steps=steps, guidance=guidance,
                                           **settings) for i in range(0, len(names), batch)])
    nearest = []
    for images in drawn:  # (samples, H, W, 3) for one prompt
        d = ((pooled(images)[:, None] - refs[None]) ** 2).sum(-1)
        nearest.append([owner[ref_chars[i]] for i in d.argmin(1)])
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


def recognition_over_seeds(model, prompts: dict[str, str], samples: int, steps: int, guidance: float,
                           seeds: int) -> list[RecognitionReport]:
    """`evaluate_recognition` at noise seeds 0..seeds-1, each drawing `samples` per prompt."""
    return [evaluate_recognition(model, prompts, samples=samples, steps=steps, guidance=guidance, seed=seed)
            for seed in range(seeds)]


def print_recognition(model, prompts: dict[str, str], samples: int, steps: int, guidance: float,
                      seeds: int = 1) -> float:
    """Recognition over noise seeds 0..seeds-1 (each drawing `samples` per prompt): the mean, printed with each seed's
    figure and, for seed 0, the prompts missed."""
    reports = recognition_over_seeds(model, prompts, samples, steps, guidance, seeds)
    fraction = float(np.mean([r.fraction for r in reports]))
    missed = {p: n for p, n in zip(reports[0].prompts, reports[0].nearest) if any(x != p for x in n)}
    spread = f" (seeds 0-{seeds - 1}: {', '.join(f'{r.fraction:.0%}' for r in reports)})" if seeds > 1 else ""
    print(f"{len(prompts)}-way recognition, {steps} steps, guidance {guidance:g}: {fraction:.1%} of samples "
          f"nearest their own emoji{spread} (k={samples}, chance {1 / len(prompts):.0%}); missed"
          f"{' at seed 0' if seeds > 1 else ''}: " + "; ".join(f"{p!r} -> {n}" for p, n in missed.items()))
    return fraction


def main(argv=None):
    import conjure
    from conjure.jeffreys import Settings

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="emoji")
    p.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16"],
                   help="as conjure.load_model (bfloat16 where the model's folder and the CPU allow, else float32)")
    p.add_argument("--samples", "-k", type=int, default=4)
    p.add_argument("--steps", type=int, default=Settings().steps,
                   help="sampler steps for the triplets and the library-default checks (default: the estimator's)")
    p.add_argument("--guidance", type=float, default=Settings().guidance,
                   help="guidance for the triplets and the library-default checks at --steps (default: the estimator's)")
    p.add_argument("--grid", default=None, help="write a sample grid PNG here (50 steps, guidance 3)")
    p.add_argument("--app-steps", type=int, default=None,
                   help="the app's steps, for a third recognition check (default: conjure/app_handlers.py DEFAULTS)")
    p.add_argument("--app-guidance", type=float, default=None,
                   help="the app's guidance, for that check (default: conjure/app_handlers.py DEFAULTS)")
    p.add_argument("--grid-app", default=None,
                   help="write a sample grid PNG at the app's settings (--app-steps, --app-guidance)")
    p.add_argument("--seeds", type=int, default=1, help="recognition over noise seeds 0..SEEDS-1 (the mean)")
    p.add_argument("--grid-guidance", type=float, default=3.0)
    p.add_argument("--grid-steps", type=int, default=50)
    p.add_argument("--write-references", metavar="DATA", default=None,
                   help="write the recognition references from a dataset folder (python -m training.emoji_data) and stop")
    args = p.parse_args(argv)
    if args.app_steps is None or args.app_guidance is None:
        from conjure.app_handlers import DEFAULTS  # imports Gradio: only when the app's settings are not given

        args.app_steps = DEFAULTS["steps"] if args.app_steps is None else args.app_steps
        args.app_guidance = DEFAULTS["guidance"] if args.app_guidance is None else args.app_guidance
    if args.write_references:
        print(f"wrote {write_references(Path(args.write_references))}")
        return
    model = conjure.load_model(args.model, dtype=args.dtype)
    print(f"{model.name} in {str(model.dtype).removeprefix('torch.')}")
    report = evaluate_triplets(model, samples=args.samples, steps=args.steps, guidance=args.guidance, progress=True)
    for (a, n, f), ok, base in zip(TRIPLETS, report.conjure_correct, report.minilm_correct):
        print(f"{'ok ' if ok else 'BAD'} {'ok ' if base else 'BAD'}  {a!r}: {n!r} < {f!r}")
    print(f"near ranked below far: conjure {report.conjure_fraction:.1%}, MiniLM cosine {report.minilm_fraction:.1%} "
          f"({len(TRIPLETS)} triplets, k={args.samples}, {args.steps} steps, guidance {args.guidance:g})")
    settings = {(args.grid_steps, args.grid_guidance), (args.steps, args.guidance), (args.app_steps, args.app_guidance)}
    for prompts in (RECOGNITION, RECOGNITION_50):
        for steps, guidance in sorted(settings, reverse=True):
            print_recognition(model, prompts, args.samples, steps, guidance, seeds=args.seeds)
    if args.grid:
        sample_grid(model, steps=args.grid_steps, guidance=args.grid_guidance).save(args.grid)
        print(f"wrote {args.grid}")
    if args.grid_app:
        sample_grid(model, steps=args.app_steps, guidance=args.app_guidance).save(args.grid_app)
        print(f"wrote {args.grid_app}")


if __name__ == "__main__":
    main()
