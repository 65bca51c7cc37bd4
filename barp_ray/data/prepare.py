"""From a `DataConfig` to what training consumes: split tables, cached embeddings, the cost cap.

This is the only place that decides which prompts are train and which are test, so training,
evaluation and benchmarks that share a config share a split.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from barp_ray.data.split import per_task_split, random_split, task_split
from barp_ray.data.table import DataError, RoutingTable


@dataclass(frozen=True)
class PreparedData:
    train: RoutingTable
    test: RoutingTable
    train_embeddings: np.ndarray  # what the policy reads of each prompt: h(x), then its text statistics if on
    test_embeddings: np.ndarray
    tau: float
    sentence_dim: int  # the leading columns that are h(x): neighbour searches compare those alone


def load_table(data_cfg, encoder_name: str = "packaged", part: str = "all") -> RoutingTable:
    if data_cfg.source == "synthetic":
        from barp_ray.data.synthetic import synthetic_table

        return synthetic_table(data_cfg.synthetic_prompts, data_cfg.synthetic_seed)
    if data_cfg.source == "llmrouter":
        from barp_ray.data.llmrouter import load_llmrouter

        return load_llmrouter(data_cfg.path, output_tokens=data_cfg.output_tokens, encoder=encoder_name, split=part)
    if data_cfg.source == "routerbench":
        from barp_ray.data.routerbench import load_routerbench

        return load_routerbench(data_cfg.path)
    from barp_ray.data.records import load_records

    return load_records(data_cfg.path)


def _subsample(table: RoutingTable, max_prompts: int | None, seed: int) -> RoutingTable:
    if max_prompts is None or max_prompts >= table.n:
        return table
    keep = np.sort(np.random.default_rng(seed).choice(table.n, size=max_prompts, replace=False))
    return table.subset(keep)


def split_tables(data_cfg, encoder_name: str = "packaged") -> tuple[RoutingTable, RoutingTable]:
    train, test = _split(data_cfg, encoder_name)
    drop = list(getattr(data_cfg, "exclude_models", None) or [])
    if drop:
        keep = [m for m in train.models if m not in drop]
        unknown = sorted(set(drop) - set(train.models))
        if unknown:
            raise DataError(f"data.exclude_models: no model(s) {unknown} in the data; it has {list(train.models)}")
        train, test = train.only_models(keep), test.only_models(keep)
    return train, test


def _split(data_cfg, encoder_name: str) -> tuple[RoutingTable, RoutingTable]:
    if data_cfg.split == "provided":
        train = load_table(data_cfg, encoder_name, part="train")
        test = load_table(data_cfg, encoder_name, part="test")
        if data_cfg.max_prompts:
            share = data_cfg.max_prompts / (train.n + test.n)
            train = _subsample(train, max(2, int(train.n * share)), data_cfg.seed)
            test = _subsample(test, max(1, int(test.n * share)), data_cfg.seed)
        return train, test
    table = _subsample(load_table(data_cfg, encoder_name), data_cfg.max_prompts, data_cfg.seed)
    if data_cfg.split == "tasks":
        return task_split(table, list(data_cfg.held_out_tasks))
    if data_cfg.split == "per_task":
        return per_task_split(table, data_cfg.test_per_task, list(data_cfg.test_tasks), data_cfg.seed,
                              dict(data_cfg.test_repeat_share))
    return random_split(table, data_cfg.test_fraction, data_cfg.seed)


def auto_tau(train: RoutingTable) -> float:
    """The priciest model's mean cost: its normalised cost is ~1, cheaper models scale below it."""
    return float(train.costs.mean(axis=0).max())


def prepare(cfg, progress: bool = False) -> PreparedData:
    from barp_ray.encoder import cached_embeddings

    train, test = split_tables(cfg.data, cfg.encoder.model)
    kw = dict(name=cfg.encoder.model, cache_dir=cfg.encoder.cache_dir, batch_size=cfg.encoder.batch_size, progress=progress)
    tau = auto_tau(train) if cfg.env.tau == "auto" else float(cfg.env.tau)
    train_e, test_e = cached_embeddings(list(train.prompts), **kw), cached_embeddings(list(test.prompts), **kw)
    sentence_dim = train_e.shape[1]
    if cfg.encoder.text_stats:
        from barp_ray.prompt_stats import text_stats

        train_e = np.hstack([train_e, text_stats(train.prompts)])
        test_e = np.hstack([test_e, text_stats(test.prompts)])
    return PreparedData(train=train, test=test, train_embeddings=train_e, test_embeddings=test_e, tau=tau,
                        sentence_dim=sentence_dim)
