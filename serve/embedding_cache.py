"""The encoder's output for prompts a router replica has seen lately, so a repeated prompt skips it.

Why: the encoder is most of a route's CPU (three quarters of a busy ingress replica's event loop,
session 56's profile; ~25 ms for a 1 KB prompt on one core) and it is frozen: the same text always
gives the same h(x), whatever weights the policy has learned since. Applications send the same
user message again more often than one would think (templated tasks, retries, an agent's fixed
step; 119 of LLMRouter's 500 test prompts repeat a training prompt). Only h(x) is kept: the policy,
the preference and exploration still decide each request afresh, and the decision is logged as
before. Keys are a 16-byte hash of the encoder and the text, so the memory is the vectors' (1.5 KB
each for MiniLM), not the prompts'.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Sequence

import numpy as np

from barp_ray.encoder import encode


class EmbeddingCache:
    def __init__(self, capacity: int, on_lookup=None):
        self.capacity = capacity
        self.on_lookup = on_lookup  # (hits, misses) per call: the replica's counter
        self._vectors: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # a replica encodes on its event loop and in its batch thread
        self.hits = self.misses = 0

    def encode(self, prompts: Sequence[str], encoder: str) -> np.ndarray:
        """[B, D] h(x) for each prompt, encoding only those not kept."""
        if self.capacity == 0:
            return encode(list(prompts), encoder)
        keys = [hashlib.blake2b(f"{encoder}\0{p}".encode(), digest_size=16).digest() for p in prompts]
        with self._lock:
            found = [self._vectors.get(k) for k in keys]
            for k, v in zip(keys, found):
                if v is not None:
                    self._vectors.move_to_end(k)
        missing = [i for i, v in enumerate(found) if v is None]
        if missing:
            fresh = encode([prompts[i] for i in missing], encoder)
            with self._lock:
                for i, v in zip(missing, fresh):
                    found[i] = v
                    self._vectors[keys[i]] = v
                while len(self._vectors) > self.capacity:
                    self._vectors.popitem(last=False)
        self.hits += len(prompts) - len(missing)
        self.misses += len(missing)
        if self.on_lookup:
            self.on_lookup(len(prompts) - len(missing), len(missing))
        return np.stack(found)

    def state(self) -> dict:
        return {"capacity": self.capacity, "entries": len(self._vectors), "hits": self.hits, "misses": self.misses}
