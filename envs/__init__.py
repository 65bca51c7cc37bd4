"""The routing task as a Gymnasium contextual-bandit environment."""
from envs.preference import PreferenceSampler, check_simplex
from envs.reward import normalized_cost, reward
from envs.routing_env import ENV_ID, BanditData, BanditRounds, RoutingBanditEnv, register

register()

__all__ = [
    "ENV_ID",
    "BanditData",
    "BanditRounds",
    "PreferenceSampler",
    "RoutingBanditEnv",
    "check_simplex",
    "normalized_cost",
    "register",
    "reward",
]
