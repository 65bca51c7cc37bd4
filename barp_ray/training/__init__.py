"""Training a router: BaRP as an RLlib Algorithm (EnvRunner, Learner, the training run).

The continuous trainer in `serve/` updates on the same `BaRPLearner`, so offline and live training
share one loss and one optimiser. Nothing here reads evaluation code except the test-split score
every run prints (`barp_ray.scoring`).
"""
