"""Judging a router: BaRP against full-information and bandit baselines on a config's test split.

`barp eval` (`cli.py`) runs `experiment.py`, which trains BaRP through `barp_ray.training` and fits
every baseline on the same split; `metrics.py` and `significance.py` hold the definitions the
numbers follow, `results.py` and `report.py` the files it writes.
"""
