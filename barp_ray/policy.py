"""Loading a trained router for inference: the RLModule plus the metadata needed to use it.

Serving and evaluation need only this, never the Algorithm (no env runners, no learners,
no Ray cluster): the RLModule is restored from its own sub-checkpoint.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from barp_ray.prompt_stats import NAMES as TEXT_STATS, text_stats

META_FILE = "barp_meta.json"
RL_MODULE_PATH = Path("learner_group") / "learner" / "rl_module" / "default_policy"


def policy_state(module) -> dict[str, "torch.Tensor"]:
    """The weights inference needs: the module's state without its training-only heads."""
    skip = tuple(f"{name}." for name in module.get_non_inference_attributes())
    return {k: v for k, v in module.state_dict().items() if not k.startswith(skip)}


def load_policy_state(module, state: dict) -> None:
    """Load inference weights; every policy tensor must be present and fit (RuntimeError otherwise)."""
    mine = policy_state(module)
    missing = sorted(set(mine) - set(state))
    extra = sorted(set(state) - set(mine))
    if missing or extra:
        raise RuntimeError(f"policy weights do not fit: missing {missing[:3]}, unexpected {extra[:3]}")
    import torch

    module.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()}, strict=False)


def read_meta(checkpoint_dir: str | Path) -> dict:
    """The checkpoint's metadata alone (models, prices, tau, encoder), from a path or a storage URI,
    without fetching the weights; FileNotFoundError if there is none."""
    from barp_ray.storage import filesystem

    fs, root = filesystem(str(checkpoint_dir))
    with fs.open_input_stream(f"{root.rstrip('/')}/{META_FILE}") as f:
        return json.loads(f.read())


def stated_answer_tokens(meta: dict) -> int | None:
    """The answer length the checkpoint's costs assumed (`data.output_tokens`), if it is one number:
    what cost estimates fall back to when a request or a command names none (None: a per-task map)."""
    stated = ((meta.get("config") or {}).get("data") or {}).get("output_tokens")
    return stated if isinstance(stated, int) and not isinstance(stated, bool) else None


class CheckpointError(ValueError):
    """The path is not a usable barp-ray checkpoint; the message says why."""


@dataclass
class RoutingPolicy:
    module: "torch.nn.Module"
    models: tuple[str, ...]
    tau: float
    encoder: str
    meta: dict

    @classmethod
    def load(cls, checkpoint_dir: str | Path) -> "RoutingPolicy":
        from barp_ray.storage import is_uri, local_copy

        if not is_uri(checkpoint_dir):
            return cls._load(Path(checkpoint_dir).expanduser().resolve())  # RLlib needs absolute paths
        try:
            root = local_copy(str(checkpoint_dir))
        except (OSError, ValueError) as e:  # pyarrow raises both for a bad or unreachable URI
            raise CheckpointError(f"{checkpoint_dir}: cannot fetch checkpoint: {e}") from None
        try:
            return cls._load(root)
        finally:  # the weights are in memory now; a copy per load (every replica start, every actor) would fill the disk
            shutil.rmtree(root, ignore_errors=True)

    @classmethod
    def _load(cls, root: Path) -> "RoutingPolicy":
        from ray.rllib.core.rl_module.rl_module import RLModule

        meta_path = root / META_FILE
        if not meta_path.is_file():
            raise CheckpointError(f"{root}: not a barp-ray checkpoint (no {META_FILE})")
        module_dir = root / RL_MODULE_PATH
        if not module_dir.is_dir():
            raise CheckpointError(f"{root}: RLModule state missing at {RL_MODULE_PATH}")
        try:
            meta = json.loads(meta_path.read_text())
            module = RLModule.from_checkpoint(module_dir)
        except Exception as e:  # noqa: BLE001 - any failure here means "unusable checkpoint"
            raise CheckpointError(f"{root}: cannot load checkpoint: {type(e).__name__}: {e}") from e
        module.eval()
        models = tuple(meta["models"])
        if getattr(module, "head", None) == "model_conditioned":
            from barp_ray.model_cards import FEATURES

            if list(meta.get("model_features") or []) != list(FEATURES):
                raise CheckpointError(f"{root}: model_features: the checkpoint describes models by "
                                      f"{meta.get('model_features')}, this version by {list(FEATURES)}")
        stats = list(meta.get("text_stats") or [])
        if stats and stats != list(TEXT_STATS):
            raise CheckpointError(f"{root}: text_stats: the checkpoint reads {stats}, this version computes {list(TEXT_STATS)}")
        if module.action_space.n != len(models):
            raise CheckpointError(f"{root}: module has {module.action_space.n} actions but metadata lists {len(models)} models")
        return cls(module=module, models=models, tau=float(meta["tau"]), encoder=meta["encoder"], meta=meta)

    def offer(self, cards) -> None:
        """Route among these models from now on (a model_conditioned checkpoint): add, remove, re-price.
        A refused list (CardError, ValueError naming the field) leaves the current one in place."""
        self.module.offer(cards)
        self.models = tuple(self.module.offered)

    @property
    def reading(self) -> dict:
        """How this policy turns a prompt into its input. Contexts logged for one policy can train
        another only if the two read alike."""
        return {"encoder": self.encoder, "text_stats": list(self.meta.get("text_stats") or [])}

    @property
    def text_stats(self) -> bool:
        """Whether this policy reads the prompt's text statistics after h(x) (`encoder.text_stats`)."""
        return bool(self.reading["text_stats"])

    def observe(self, prompts: Sequence[str], stats: np.ndarray | None = None, h: np.ndarray | None = None) -> np.ndarray:
        """[B, D] what the policy reads of each prompt: h(x) from the training encoder, then the text
        statistics if it was trained with them. `stats`: already computed (the serving ingress does,
        on the prompt before truncation), else computed here from `prompts`. `h`: h(x) already
        encoded (a router replica keeps recent ones: serve/embedding_cache.py), else encoded here."""
        from barp_ray.encoder import encode

        h = encode(list(prompts), self.encoder) if h is None else h
        if not self.text_stats:
            return h
        return np.hstack([h, text_stats(prompts) if stats is None else np.asarray(stats, dtype=np.float32)])

    def probabilities(self, embeddings: np.ndarray, preferences: np.ndarray) -> np.ndarray:
        """[B, K] routing distribution for B (embedding, preference) pairs."""
        import torch

        e = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
        w = torch.as_tensor(np.asarray(preferences, dtype=np.float32))
        if w.ndim == 1:
            w = w.expand(len(e), 2)
        return self.module.action_probabilities(e, w).numpy()

    def route(self, prompts: Sequence[str], preference: Sequence[float] | float) -> list[str]:
        """Greedy model choice per prompt; reads prompts as training did (`observe`). `preference`:
        one [w_q, w_c] pair for all, one pair per prompt, or a knob k meaning (k, 1 - k), as over HTTP."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"prompts: expected a list of strings (wrap a single prompt in a list), got {prompts!r:.80}")
        w = route_preferences(preference, len(prompts))
        probs = self.probabilities(self.observe(prompts), w)
        return [self.models[i] for i in probs.argmax(-1)]


def route_preferences(preference, n: int) -> np.ndarray:
    """[n, 2] checked preferences from what `route` accepts. A pair off the simplex is refused, not
    renormalised: [2, 3] is more likely a slip than a wish for (0.4, 0.6)."""
    from envs.preference import check_simplex

    if isinstance(preference, (int, float, np.number)) and not isinstance(preference, bool):
        k = float(preference)
        if not 0.0 <= k <= 1.0:
            raise ValueError(f"preference: a single knob must be a number in [0, 1], got {preference!r}")
        return np.tile(np.float32([k, 1.0 - k]), (n, 1))
    w = np.asarray(preference, dtype=object)
    if w.ndim == 2:
        if len(w) != n:
            raise ValueError(f"preference: {len(w)} pairs for {n} prompts")
        return np.float32([check_simplex(row, f"preference[{i}]") for i, row in enumerate(w)]).reshape(n, 2)
    return np.tile(np.float32(check_simplex(preference)), (n, 1))
