"""Routers BaRP is compared with: fixed references, full-information offline routers, bandit-feedback learners.

Each router reports its `family` (how much it saw while training) so that tables can say it.
"""
from barp_ray.evaluation.baselines.bandits import EpsilonGreedy, LinearThompson, LinUCB, PreferenceFeatures, train_bandit
from barp_ray.evaluation.baselines.base import BANDIT, BARP, FULL_INFO, ORACLE, REFERENCE, SINGLE, Router
from barp_ray.evaluation.baselines.full_info import BestLabelRouter, KNNRouter, MLPSettings, ScoreMLPRouter, TrainView
from barp_ray.evaluation.baselines.reference import Oracle, SingleModel, UniformRandom

__all__ = [
    "Router",
    "BARP",
    "REFERENCE",
    "SINGLE",
    "FULL_INFO",
    "BANDIT",
    "ORACLE",
    "SingleModel",
    "UniformRandom",
    "Oracle",
    "TrainView",
    "KNNRouter",
    "ScoreMLPRouter",
    "BestLabelRouter",
    "MLPSettings",
    "EpsilonGreedy",
    "LinUCB",
    "LinearThompson",
    "PreferenceFeatures",
    "train_bandit",
]
