"""What a model's scores depend on: its torch modules and a hash of their weights as loaded.

Calibrations (`conjure.calibration`) and the STS score cache (`conjure.sts`) are keyed by this hash.
"""

from __future__ import annotations

import hashlib

import torch

from conjure.models.compiled import unwrapped


def weight_modules(model) -> dict[str, torch.nn.Module]:
    """The torch modules a model adapter holds: the denoiser and the text encoder(s), by attribute name."""
    model = unwrapped(model)  # a compiled model holds the same modules
    found: dict[str, torch.nn.Module] = {}

    def add(name, value):
        if isinstance(value, torch.nn.Module) and all(value is not m for m in found.values()):
            found[name] = value

    for name, value in vars(model).items():
        add(name, value)
        add(f"{name}.model", getattr(value, "model", None))  # wrappers such as conjure.minilm.MiniLM
    for name, value in (getattr(getattr(model, "pipe", None), "components", None) or {}).items():
        add(f"pipe.{name}", value)
    return found


def weights_digest(modules: dict[str, torch.nn.Module]) -> str | None:
    """A hash of every parameter and buffer as loaded (names, dtypes, shapes, bytes); None without modules.

    Hashing what is loaded, not the files, covers every way of loading a model and the
    dtype it runs in (fp16 and fp32 give slightly different divergences).
    """
    if not modules:
        return None
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(modules):
        for key, tensor in modules[name].state_dict().items():
            flat = tensor.detach().reshape(-1).contiguous()
            h.update(f"{name}.{key} {flat.dtype} {tuple(tensor.shape)}\n".encode())
            h.update(flat.view(torch.uint8).cpu().numpy())
    return h.hexdigest()
