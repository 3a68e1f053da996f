"""The embedded model's wider training set: the emoji base plus Iconify's emoji styles and named icon sets.

    python -m training.emoji_data --out runs/emoji-data                       # the three-style base, once
    python -m training.iconify_data --base runs/emoji-data --out runs/picture-data --grid runs/sets.png \
        --men ../shared/data/men/MEN_dataset_lemma_form.dev --men ../shared/data/men/MEN_dataset_lemma_form.test

The base (`training.emoji_data`) draws every Unicode emoji in three styles. A concept's "distribution of
images", which is what conjure compares, is then three near-identical glyphs, and most everyday words have
no emoji. This adds, from the npm registry at pinned versions (`npm pack`, sha256-checked):

- more emoji styles (Fluent, Fluent flat and high-contrast, Noto and Noto v1, EmojiOne and EmojiOne v1,
  FxEmoji, Streamline, Iconify's Twemoji and OpenMoji, whose OpenMoji set also has non-Unicode extras),
  joined to the base's concepts on the code point (`chars.json`);
- named icon sets (Game-icons, Material Design Icons, IconPark, Health Icons, Flat Color Icons, Streamline's
  colour sets, Fluent UI colour icons), joined on the name: a "tiger" icon joins the tiger emoji; a "lighthouse"
  icon becomes a concept of its own. UI glyphs (arrows, "-off", "-plus" variants, ...) are left out.

Each icon is an SVG (`icons.json`: body, view box, aliases), rendered by resvg (`resvg-py`) at 4x, composited
on white and downsampled with Lanczos, like the base. Monochrome sets draw in black. Captions come from the
names and aliases, as in the base: CLDR names for emoji, the icon's name and its Iconify aliases otherwise.

Output: the base's format (`images.npz`, `concepts.json`, `manifest.json`), which `training.train` reads.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from training import emoji_data

# set: (version, sha256 of the packed tarball, kind). "emoji" sets join the base on the code point,
# "icon" sets on the name. Licences are read from each package's info.json into the manifest.
ICONIFY_SETS = {
    "fluent-emoji": ("1.2.7", "8044210dbf11e016d4de85f15d01a243423bd832457e7e2491df1b751c0e272b",
                    "emoji"),
    "fluent-emoji-flat": ("1.2.6", "7d064769dee690815f823bc5bcc511d957198caf9f5edd8dd9c1aa48a6aeb175",
                         "emoji"),
    "fluent-emoji-high-contrast": ("1.2.6", "0b92d48c90d2200bd499e3cdd09a127ca6a8c8ddefd34c35eb5a1e4994012ae0",
                                  "emoji"),
    "noto": ("1.2.9", "3e918d88fc945c0bb3d468dbace6f88caef67f01c9f0e7bcae0915a042e8f1ad",
            "emoji"),
    "noto-v1": ("1.2.5", "2bf62c26c2c2884aa99e90aec942cdaee17a5921f05690694f4978ad4b017c37",
               "emoji"),
    "emojione": ("1.2.3", "26a14f44284407e8bcde91799388dca2bfd91dbcd55a97f425524a1c5b73610e",
                "emoji"),
    "emojione-v1": ("1.2.3", "6641d59d48a42823fdc2b84e7427e9f302944eb98d2c7d94d6e67c139e7b37b3",
                   "emoji"),
    "fxemoji": ("1.2.2", "f3e72b3c59d05e1db03b7e308d55c0d05bd7ba3f625a90da1b79313c12858eef",
               "emoji"),
    "streamline-emojis": ("1.2.4", "5dac87c876b322500989828c5823143e0100d78881627a2e4081a4b897cbfdbc",
                         "emoji"),
    "twemoji": ("1.2.5", "19046dff7d8707ce96212ec86468b36ac5f8e60409629dd13f809265c6d0ebb7",
               "emoji"),
    "openmoji": ("1.2.29", "03181e2c156cab35cf4a62f1f7886bd971d59212e75ac3f189d5a4cae3930fc5",
                "emoji"),
    "game-icons": ("1.2.4", "f5758efb34d91c4f50b941f355f16ee73938625e5996fabc25171288404460a4",
                  "icon"),
    "mdi": ("1.2.3", "ddd817a7213f91de51147943915c0cda8c8b818a53c92b5c068cfa9883c6d7ac",
           "icon"),
    "icon-park": ("1.2.4", "c1a25212a31602aca93c3fa6f6b3288e89b9d7811afc132dfd78506e9d586b6f",
                 "icon"),
    "healthicons": ("1.2.13", "4c2552c45737788a6599da3c5b72610c7fb4e7f87075d401c56fa16d487d4caf",
                   "icon"),
    "flat-color-icons": ("1.2.3", "d8878a9b0f02d749bc8671eb7d47882eb711185cbcefbb365cbfb488773c4786",
                        "icon"),
    "streamline-color": ("1.2.2", "06c2addb59f572b2bfe581863888fcf7dbe0927e0511e7157c54f332fe90347f",
                        "icon"),
    "streamline-flex-color": ("1.2.2", "17ef2e9d596bb288991c271a2b468be822f994cb073c94801a1c186a0e4af827",
                             "icon"),
    "streamline-plump-color": ("1.2.2", "33ed8a9ebda9ed896125f1e01873105688d68d0b0c95ca1bcead5a41309afcf6",
                              "icon"),
    "fluent-color": ("1.2.21", "fa2ddaaac7a2a7b902659cea1b5b8c03017ce2ae56295138876b86a36177dfbe",
                    "icon"),
}
# The base's Twemoji and OpenMoji images already draw these code points; Iconify's copies of the same
# artwork would only repeat them. Their non-Unicode extras (OpenMoji's "3d-printer", ...) are new.
SAME_ART_AS_BASE = {"twemoji", "openmoji"}

ICON_TEMPLATES = ("{}", "{a} {}", "an icon of {a} {}", "{} icon", "a picture of {a} {}", "a drawing of {a} {}")
# Trailing name parts that name a drawing style or size, not a thing: "car-outline" is a car.
STYLE_WORDS = {"outline", "outlined", "flat", "filled", "solid", "variant", "alt", "color", "colored", "negative",
               "rounded", "sharp", "thin", "bold", "duotone", "two", "tone", "fill", "line", "simple"}
# Name parts that make an icon a UI glyph or a modified thing ("car-off", "account-plus"): left out.
UI_WORDS = {"off", "plus", "minus", "remove", "check", "alert", "lock", "edit", "cog", "settings", "arrow", "arrows",
            "chevron", "sync", "cancel", "refresh", "search", "add", "delete", "network", "upload", "download",
            "import", "export", "marker", "multiple", "question", "clock", "star", "heart", "cross", "open", "close",
            "left", "right", "up", "down", "top", "bottom", "horizontal", "vertical", "sharp", "box", "badge",
            "pin", "link", "sign", "symbol", "letter", "number", "account", "file", "folder", "format", "text",
            "align", "view", "menu", "cursor", "table", "chart", "database", "wifi", "bluetooth", "battery",
            "outline", "circle", "square", "rectangle", "triangle", "hexagon", "octagon"}
MAX_NAME_WORDS = 3
MAX_PER_SET = 2  # images of one concept from one set (e.g. "car" and "car-outline")
RENDER_SIZE = emoji_data.RENDER_SIZE


# --- fetching and reading the packages ------------------------------------------------------------


def fetch(name: str, folder: Path) -> Path:
    """The pinned tarball of `@iconify-json/<name>`, packed by npm unless already there; sha256-checked."""
    version, sha256, _ = ICONIFY_SETS[name]
    return emoji_data.fetch_pinned(f"@iconify-json/{name}", version, sha256, folder)


def read_set(path: Path) -> tuple[dict, dict[str, str], dict]:
    """icons.json (icons, aliases, default size), chars.json (code point -> icon name) and info.json."""
    with tarfile.open(path) as tar:
        def member(name):
            return json.load(tar.extractfile(f"package/{name}"))
        return member("icons.json"), member("chars.json"), member("info.json")


def svg_of(icons: dict, name: str) -> str:
    """A standalone SVG of one icon, its view box from the icon or the set's defaults; currentColor in black."""
    icon = icons["icons"][name]
    left, top = icon.get("left", icons.get("left", 0)), icon.get("top", icons.get("top", 0))
    width = icon.get("width", icons.get("width", 16))
    height = icon.get("height", icons.get("height", 16))
    body = icon["body"].replace("currentColor", "#000000")
    return (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
            f'width="{RENDER_SIZE}" height="{RENDER_SIZE}" viewBox="{left} {top} {width} {height}">{body}</svg>')


def rasterise(svg: str, size: int) -> Image.Image | None:
    """resvg's rendering at RENDER_SIZE, on white, Lanczos-downsampled to size x size; None if it fails or is blank."""
    import resvg_py

    try:
        png = resvg_py.svg_to_bytes(svg_string=svg, width=RENDER_SIZE, height=RENDER_SIZE)
    except ValueError:
        return None
    picture = Image.open(io.BytesIO(bytes(png))).convert("RGBA")
    if picture.getbbox() is None:
        return None
    return emoji_data.on_white(picture, size)


# --- names -------------------------------------------------------------------------------------------


def code_key(unified: str) -> str:
    """'1F468-200D-1F33E' / '1f468-200d-1f33e' / with fe0f -> one key per emoji."""
    parts = [p.lower().lstrip("0") for p in re.split("[-_ ]", unified) if p]
    return "-".join(p for p in parts if p != "fe0f")


def icon_name(raw: str) -> str | None:
    """An icon's name as the thing it draws, or None for UI glyphs: 'car-outline' -> 'car', 'car-off' -> None."""
    words = raw.lower().split("-")
    while len(words) > 1 and (words[-1] in STYLE_WORDS or words[-1].isdigit()):
        words.pop()
    if (any(any(ch.isdigit() for ch in w) for w in words) or len(words) > MAX_NAME_WORDS
            or any(w in UI_WORDS for w in words[1:]) or (len(words) == 1 and len(words[0]) < 3)):
        return None
    return " ".join(words)


def private_use(code: str) -> bool:
    """Code points sets give their non-Unicode extras (OpenMoji's "3d-printer"): joined by name instead."""
    first = int(code.split("-")[0], 16)
    return 0xE000 <= first <= 0xF8FF or first >= 0xF0000


def aliases_by_parent(icons: dict) -> dict[str, list[str]]:
    found = defaultdict(list)
    for alias, spec in icons.get("aliases", {}).items():
        if set(spec) == {"parent"}:  # aliases that transform (rotate, flip) draw something else
            found[spec["parent"]].append(alias)
    return found


# --- the build ---------------------------------------------------------------------------------------


class Concepts:
    """The concept table: the base's concepts, then new ones; found by code point or by any of its names."""

    def __init__(self, base: list[dict]):
        self.items: list[dict] = []
        self.by_code: dict[str, int] = {}
        self.by_name: dict[str, int] = {}
        for concept in base:
            self.add(concept)

    def add(self, concept: dict) -> int:
        index = len(self.items)
        self.items.append(concept)
        if concept.get("unified"):
            self.by_code.setdefault(code_key(concept["unified"]), index)
        if concept.get("skin_tone") is None:  # a name finds the default form, not a skin-tone variant
            for name in concept["names"]:
                self.by_name.setdefault(name, index)
        return index

    def add_names(self, index: int, names: list[str]):
        concept = self.items[index]
        new = [n for n in names if n not in concept["names"]]
        if new:
            concept["names"] += new
            concept["captions"] += [t.format(n, a=emoji_data.article(n)) for n in new for t in ICON_TEMPLATES]
            for name in new:
                self.by_name.setdefault(name, index)


def emoji_concept(code: str, icon: str) -> dict:
    """A new concept for an emoji the base lacks, named by CLDR (or by the icon's name)."""
    char = "".join(chr(int(h, 16)) for h in code.split("-"))
    cldr = emoji_data.cldr_entry(char)
    names = emoji_data.emoji_names(cldr) if cldr else [emoji_data.clean_name(icon)]
    tones = [c for c in char if c in emoji_data._SKIN_TONES]
    base = "".join(c for c in char if c not in emoji_data._SKIN_TONES)
    return {"char": char, "unified": code, "base": code_key("-".join(f"{ord(c):x}" for c in base)),
            "skin_tone": "-".join(f"{ord(c):X}" for c in tones) or None, "category": "emoji (Iconify)",
            "names": names, "captions": emoji_data.captions_for(names)}


def icon_concept(name: str, set_name: str) -> dict:
    return {"char": "", "unified": "", "base": f"icon:{name}", "skin_tone": None, "category": f"icon ({set_name})",
            "names": [name], "captions": [t.format(name, a=emoji_data.article(name)) for t in ICON_TEMPLATES]}


def pictures_of_set(name: str, icons: dict, chars: dict[str, str], concepts: Concepts):
    """(icon name, concept index) for every icon of a set that draws a thing; creates concepts as needed."""
    kind = ICONIFY_SETS[name][2]
    code_of = {icon: code_key(code) for code, icon in chars.items()}
    aliases = aliases_by_parent(icons)
    per_concept = defaultdict(list)
    for icon in sorted(icons["icons"], key=lambda n: (-max([int(d) for d in re.findall(r"\d+$", n)] or [0]), n)):
        if icons["icons"][icon].get("hidden"):
            continue
        code = code_of.get(icon) if kind == "emoji" else None
        if code is not None and not private_use(code):
            if name in SAME_ART_AS_BASE and code in concepts.by_code:
                continue
            index = concepts.by_code.get(code)
            if index is None:
                index = concepts.add(emoji_concept(code, icon))
        else:
            # Emoji sets without code points name their emoji as CLDR does ("alarm-clock"): no UI filter.
            thing = icon_name(icon) if kind == "icon" else emoji_data.clean_name(icon)
            if thing is None or (kind == "emoji" and "skin tone" in thing):
                continue
            index = concepts.by_name.get(thing)
            if index is None:
                index = concepts.add(icon_concept(thing, name))
            extra = [n for n in (icon_name(a) for a in aliases.get(icon, [])) if n]
            concepts.add_names(index, extra)
        if len(per_concept[index]) < MAX_PER_SET:
            per_concept[index].append(icon)
    return [(icon, index) for index, names in per_concept.items() for icon in names]


def build(base_folder: Path, folder: Path, npm_cache: Path, size: int = 32, sets: list[str] | None = None) -> dict:
    from tqdm import tqdm

    images, concept_of, style_of, base_concepts = emoji_data.load(base_folder)
    base_manifest = json.loads((base_folder / "manifest.json").read_text())
    styles = list(emoji_data.STYLES)
    concepts = Concepts(base_concepts)
    images, concept_of, style_of = list(images), list(concept_of), list(style_of)
    licences, packages = dict(base_manifest["sources"]), dict(base_manifest.get("npm", {}))
    for name in sets or ICONIFY_SETS:
        path = fetch(name, npm_cache)
        icons, chars, info = read_set(path)
        style = name if name not in styles else f"{name} (Iconify)"  # the base has an "openmoji" style
        styles.append(style)
        version, sha256, _ = ICONIFY_SETS[name]
        packages[style] = {"package": f"@iconify-json/{name}", "version": version, "sha256": sha256}
        author = info["author"]["name"] + (f", {info['author']['url']}" if info["author"].get("url") else "")
        licences[style] = f"{info['name']} (@iconify-json/{name} {version}), {info['license']['title']}, by {author}"
        for icon, index in tqdm(pictures_of_set(name, icons, chars, concepts), desc=name):
            picture = rasterise(svg_of(icons, icon), size)
            if picture is None:
                continue
            images.append(np.asarray(picture))
            concept_of.append(index)
            style_of.append(len(styles) - 1)

    # Concepts left without a picture (a name added, its icon blank) are dropped, and indices renumbered.
    concept_of = np.array(concept_of)
    used = np.unique(concept_of)
    renumber = np.full(len(concepts.items), -1)
    renumber[used] = np.arange(len(used))
    kept = [concepts.items[i] for i in used]
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / "images.npz", images=np.stack(images), concept=renumber[concept_of],
                        style=np.array(style_of))
    (folder / "concepts.json").write_text(json.dumps(kept, ensure_ascii=False, indent=0) + "\n")
    style_of = np.array(style_of)
    manifest = {
        "size": size, "images": len(images), "concepts": len(kept), "styles": styles,
        "concepts_without_skin_tone": sum(c["skin_tone"] is None for c in kept),
        "captions": sum(len(c["captions"]) for c in kept),
        "images_per_style": {s: int(np.sum(style_of == i)) for i, s in enumerate(styles)},
        "sources": licences, "npm": packages,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def vocabulary(concepts: list[dict]) -> set[str]:
    """Every word of every caption, lower-case, punctuation stripped."""
    return {w for c in concepts for caption in c["captions"] for w in re.findall(r"[a-z]+", caption.lower())}


def men_coverage(concepts: list[dict], men_files: list[Path]) -> tuple[int, int, int]:
    """(MEN words in some caption, MEN words that are a concept's whole name, MEN words); suffixes stripped."""
    words = set()
    for men_file in men_files:
        for line in men_file.read_text().splitlines()[1:]:
            a, b, _ = line.split()
            words |= {re.sub(r"-[nvj]$", "", a), re.sub(r"-[nvj]$", "", b)}
    names = {name for c in concepts for name in c["names"]}
    return len(words & vocabulary(concepts)), len(words & names), len(words)


def write_set_grid(folder: Path, out: Path, per_style: int = 12, scale: int = 2):
    """A grid with one row per style: `per_style` random pictures of it, for a person to look at."""
    images, _, style, _ = emoji_data.load(folder)
    styles = json.loads((folder / "manifest.json").read_text())["styles"]
    rng = np.random.default_rng(0)
    side = images.shape[1] * scale
    grid = Image.new("RGB", (side * per_style, side * len(styles)), "white")
    for row in range(len(styles)):
        picks = np.flatnonzero(style == row)
        for col, i in enumerate(rng.choice(picks, min(per_style, len(picks)), replace=False)):
            grid.paste(Image.fromarray(images[i]).resize((side, side), Image.NEAREST), (col * side, row * side))
    grid.save(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="runs/emoji-data", help="the three-style emoji dataset (training.emoji_data)")
    p.add_argument("--out", default="runs/picture-data", help="folder to write the dataset to")
    p.add_argument("--npm-cache", default="runs/npm", help="folder for the npm tarballs")
    p.add_argument("--sets", default=None, help="comma-separated Iconify sets (default: all of ICONIFY_SETS)")
    p.add_argument("--grid", default=None, help="also write a PNG with a row of pictures per style")
    p.add_argument("--men", action="append", default=[],
                   help="a MEN lemma file (repeatable): report the share of its words in the captions")
    args = p.parse_args(argv)
    base = Path(args.base)
    manifest = build(base, Path(args.out), Path(args.npm_cache), json.loads((base / "manifest.json").read_text())["size"],
                     args.sets.split(",") if args.sets else None)
    print(json.dumps({k: manifest[k] for k in ("images", "concepts", "captions", "images_per_style")}, indent=1))
    if args.men:
        for label, folder in (("base", base), ("widened", Path(args.out))):
            in_captions, named, total = men_coverage(emoji_data.load(folder)[3], [Path(m) for m in args.men])
            print(f"MEN words, {label}: {in_captions}/{total} ({100 * in_captions / total:.1f}%) in a caption, "
                  f"{named}/{total} ({100 * named / total:.1f}%) a concept's whole name")
    if args.grid:
        write_set_grid(Path(args.out), Path(args.grid))


if __name__ == "__main__":
    main()
