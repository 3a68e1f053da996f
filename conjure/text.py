"""What a text encoder reads of a prompt: emoji it cannot read become words, and prompts it reads nothing of.

MiniLM's WordPiece tokenizer maps every emoji to `[UNK]`, so "🐯🐆🔥" and "🦁" would both encode as one
unknown token and score a divergence of 0: an emoji model that cannot read emoji. Before encoding, each
emoji that the model's tokenizer reads only as unknown or special tokens is replaced by its CLDR name
from the `emoji` package ("🐯" -> "tiger face"). Emoji that a tokenizer does read (CLIP's byte-level BPE
reads every emoji) are left alone, and so is every other character, so prompts without such emoji encode
exactly as before.
"""

from __future__ import annotations

import re
import weakref

_readable_cache: "weakref.WeakKeyDictionary[object, dict[str, bool]]" = weakref.WeakKeyDictionary()


def special_ids(tokenizer) -> set[int]:
    """Ids that carry no content: [CLS], [SEP], [PAD], [UNK], <|endoftext|>, ..."""
    ids = set(getattr(tokenizer, "all_special_ids", ()) or ())
    if getattr(tokenizer, "unk_token_id", None) is not None:
        ids.add(tokenizer.unk_token_id)
    return ids


def readable(tokenizer, text: str) -> bool:
    """Whether the tokenizer reads any token of `text` that is not unknown or special."""
    ids, empty = tokenizer(text, add_special_tokens=False)["input_ids"], special_ids(tokenizer)
    return any(i not in empty for i in ids)


def _reads_emoji(tokenizer, emoji_text: str) -> bool:
    try:
        cache = _readable_cache.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable: no cache
        cache = {}
    if emoji_text not in cache:
        cache[emoji_text] = readable(tokenizer, emoji_text)
    return cache[emoji_text]


def emoji_name(emoji_text: str) -> str:
    """The CLDR name of one emoji as words: "👍🏽" -> "thumbs up medium skin tone"."""
    import emoji

    name = emoji.demojize(emoji_text, delimiters=("", ""))
    return re.sub(r"[_\s]+", " ", name).strip()


def emoji_as_words(tokenizer, text: str) -> str:
    """`text` with every emoji the tokenizer cannot read replaced by its name; unchanged if there is none."""
    if text.isascii():
        return text
    try:
        import emoji
    except ImportError:  # a runtime dependency; without it, unreadable prompts are refused by the caller
        return text
    found = [e for e in emoji.emoji_list(text) if not _reads_emoji(tokenizer, e["emoji"])]
    if not found:
        return text
    parts, end = [], 0
    for e in found:
        parts += [text[end : e["match_start"]], f" {emoji_name(e['emoji'])} "]
        end = e["match_end"]
    parts.append(text[end:])
    return " ".join("".join(parts).split())


def prepare(tokenizer, texts: list[str]) -> tuple[list[str], list[str | None]]:
    """The texts as the encoder should read them, and for each the rewritten text (None where unchanged)."""
    read = [emoji_as_words(tokenizer, t) for t in texts]
    return read, [r if r != t else None for r, t in zip(read, texts)]


def tokenizer_of(model):
    """The tokenizer a model's text encoder reads prompts with, or None where there is none to ask."""
    encoder = getattr(model, "text_encoder", None)
    if getattr(encoder, "tokenizer", None) is not None:  # conjure's MiniLM (pixel models)
        return encoder.tokenizer
    pipe = getattr(model, "pipe", None)
    if pipe is not None:  # diffusers pipelines: SDXL may have only its second tokenizer
        return getattr(pipe, "tokenizer", None) or getattr(pipe, "tokenizer_2", None)
    return getattr(model, "tokenizer", None)
