"""`barp ope CHECKPOINT [CHECKPOINT ...]`: what each checkpoint would have earned on the service's
own traffic, estimated from the feedback store before it serves a single request.

Why: `/v1/admin/load_checkpoint` publishes an operator's weights without the trainer's gate (it
is their call), and an offline score on a benchmark says little about this service's prompts,
preferences and prices. The store holds every rewarded round with the exact probability the
served model was drawn with, so another policy's value on the same rounds is estimable without
serving it: doubly robust with the checkpoint's own critic where it has one (unbiased whatever
the critic's errors; the critic only narrows the interval), else self-normalised IPS.

With `--holdout F`, only the share F of rounds that `barp replay --holdout F` never trained on
is read (the newest `--last` rounds first, then that share of them). Only exploring rounds count: a greedy route was logged with probability 1 and says nothing about
the models it did not pick. Each estimate has a 95 % interval and, paired round by round, its
difference from what the service earned on those rounds. `--as greedy` scores the checkpoint's
first choice; by default it is scored as the service would serve it, with its exploration.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import asdict, dataclass

import numpy as np

Z95 = 1.959964
FEW = 30  # effective rounds below which an interval's normal approximation is not to be trusted


class OpeError(ValueError):
    """A one-line problem with the inputs, naming the argument."""


@dataclass
class Estimate:
    policy: str
    estimator: str  # dr (with the checkpoint's critic) or snips
    rounds: int  # exploring rounds among its models
    value: float
    half_width: float  # of the 95 % interval
    vs_served: float  # minus what the service earned on the same rounds
    vs_served_half_width: float
    agreement: float  # mean probability it gives the model that was served
    effective_rounds: float  # Kish's effective sample size of the importance weights
    bands: list[dict] | None = None  # the same per w_q band (`--by-preference`)


BANDS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def exploring_rows(settings, last: int, holdout: float | None = None, archive: bool = False) -> tuple[list[dict], int]:
    """The newest `last` rewarded rounds that were drawn from an exploring distribution, oldest
    first (only those in the `holdout` share, if given), and how many greedy ones were left out.
    With `archive`, rounds retention archived count too."""
    from serve.feedback_archive import open_rewards
    from serve.logged_rounds import held_back, logged_row

    reader = open_rewards(settings, archive)
    try:
        records = reader.up_to(2**62, last)
    finally:
        reader.close()
    if holdout is not None:
        records = [r for r in records if held_back(r["request_id"], holdout)]
    rows = [logged_row(r) for r in records]
    kept = [r for r in rows if r["mode"] != "greedy" and r["mu"] < 1.0]
    return kept, len(rows) - len(kept)


def estimate(name: str, policy, rows: list[dict], greedy: bool, settings, by_preference: bool = False) -> Estimate:
    """`policy` on the logged `rows`, served as `settings` (the service's) would serve it, or greedy."""
    import torch

    from serve.exploration import dr_terms, dr_value, weighted_mean_se
    from serve.logged_rounds import head_log_prices, observations, offered_rows
    from serve.rollout_gate import RolloutGate

    offered = offered_rows(rows, policy.models, head_log_prices(policy.module))
    if not offered:
        raise OpeError(f"{name}: no logged round served one of its models {list(policy.models)}")
    width = policy.module.observation_space["embedding"].shape[0]
    if offered[0]["embedding"].shape[0] != width:
        raise OpeError(f"{name}: reads {width}-wide contexts, the logged rounds hold "
                       f"{offered[0]['embedding'].shape[0]}-wide ones (another encoder or text_stats setting)")
    obs = {k: torch.from_numpy(v) for k, v in observations(offered).items()}
    gate = RolloutGate(settings.rollout, settings.exploration)  # its served distribution: what replicas would draw from
    with torch.no_grad():
        target = gate.served_distribution(policy.module, obs, 0.0 if greedy else settings.exploration.epsilon)
        q = policy.module.critic_values(obs).numpy().astype(np.float64) if policy.module.model_config.get("critic") else None
    if greedy:
        target = np.eye(target.shape[1])[target.argmax(1)]
    actions = np.asarray([r["action"] for r in offered])
    logged = np.asarray([r["mu"] for r in offered])
    rewards = np.asarray([r["reward"] for r in offered], dtype=np.float64)
    estimator = "dr" if q is not None and q.ndim == 2 else "snips"
    q = q if estimator == "dr" else np.zeros_like(target)

    def summary(keep: np.ndarray) -> dict:
        t, a, mu, r, qq = target[keep], actions[keep], logged[keep], rewards[keep], q[keep]
        ones = np.ones(len(a))
        terms = dr_terms(t, qq, a, mu, r, ones)
        chosen = t[np.arange(len(a)), a]
        rho = chosen / mu
        return {"rounds": int(keep.sum()), "value": dr_value(t, qq, a, mu, r, ones),
                "half_width": Z95 * weighted_mean_se(terms, ones), "vs_served": float(np.mean(terms - r)),
                "vs_served_half_width": Z95 * weighted_mean_se(terms - r, ones), "agreement": float(np.mean(chosen)),
                "effective_rounds": float(rho.sum() ** 2 / max(np.sum(rho**2), 1e-12))}

    bands = None
    if by_preference:
        w_q = obs["preference"].numpy()[:, 0]
        bands = []
        for lo, hi in zip(BANDS[:-1], BANDS[1:]):
            keep = (w_q >= lo) & ((w_q < hi) if hi < 1 else (w_q <= hi))
            if keep.sum() >= 2:
                bands.append({"w_q": [lo, hi], **summary(keep)})
    return Estimate(policy=name, estimator=estimator, **summary(np.ones(len(actions), dtype=bool)), bands=bands)


DECISION_KEYS = ("shrinkage", "gate", "cost_multiplier")


def decision_spec(text: str) -> dict:
    """`--decision shrinkage=0.5,gate=cost,cost_multiplier=3`: the live offer's decision settings
    (`decision_shrinkage`, its gate, `decision_cost_multiplier`) to judge a checkpoint under."""
    spec: dict = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or key not in DECISION_KEYS:
            raise OpeError(f"--decision: expected key=value pairs of {list(DECISION_KEYS)}, got {text!r}")
        try:
            spec[key] = value if key == "gate" else float(value)
        except ValueError:
            raise OpeError(f"--decision: {key} must be a number, got {value!r}") from None
    return spec


@contextlib.contextmanager
def deciding(policy, spec: dict, text: str):
    """The policy with `spec`'s decision settings for the block, as a live offer would set them."""
    module = policy.module
    first = module.members[0] if module.members is not None else module
    before = (first.decision_shrinkage, first.decision_shrinkage_gate, first.decision_cost_multiplier)
    try:
        try:
            if "shrinkage" in spec or "gate" in spec:
                module.set_decision_shrinkage(spec.get("shrinkage", before[0]), spec.get("gate", before[1]))
            if "cost_multiplier" in spec:
                module.set_decision_cost_multiplier(spec["cost_multiplier"])
        except ValueError as e:
            raise OpeError(f"--decision {text}: {e}") from None
        yield policy
    finally:
        module.set_decision_shrinkage(before[0], before[1])
        module.set_decision_cost_multiplier(before[2])


def _load(path: str):
    from barp_ray.policy import CheckpointError, RoutingPolicy

    try:
        return RoutingPolicy.load(path)
    except CheckpointError as err:
        raise OpeError(f"checkpoint: {err}") from None


def published_policy(settings) -> tuple[str, object]:
    """("published vN", policy): the service's checkpoint carrying the trainer's newest published
    weights, what the router replicas serve now."""
    from barp_ray.policy import load_policy_state
    from serve.trainer import latest_published

    found = latest_published(settings.trainer.state_dir)
    if found is None:
        raise OpeError(f"--published: no published weights under trainer.state_dir {settings.trainer.state_dir}")
    version, weights = found
    policy = _load(settings.checkpoint)
    try:
        load_policy_state(policy.module, weights)
    except RuntimeError as err:
        raise OpeError(f"--published: version {version} does not fit {settings.checkpoint}: {err}") from None
    return f"published v{version}", policy


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="barp ope", description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="*", help="checkpoint directories or storage URIs to judge")
    p.add_argument("--published", action="store_true",
                   help="also judge the weights the service serves now: the trainer's newest published version")
    p.add_argument("--config", default="configs/serve.yaml", help="serve config naming the feedback store")
    p.add_argument("--set", action="append", default=[], help="override an app arg, e.g. feedback.database=postgresql")
    p.add_argument("--last", type=int, default=5000, help="judge on the newest this many rewarded rounds")
    p.add_argument("--as", dest="as_", choices=("served", "greedy"), default="served",
                   help="served: with the service's exploration (what replicas would draw from); greedy: the first choice")
    p.add_argument("--holdout", type=float, default=None,
                   help="judge only on the rounds `barp replay --holdout` with this share never trained on")
    p.add_argument("--by-preference", action="store_true",
                   help="also estimate each checkpoint per w_q band (0-0.2, ..., 0.8-1): where along the trade-off it wins")
    p.add_argument("--decision", action="append", default=[], metavar="SPEC",
                   help="also judge each checkpoint under these live decision settings, e.g. shrinkage=0.5 or "
                        "cost_multiplier=3 or shrinkage=0.5,gate=cost (repeat for several)")
    p.add_argument("--archive", action="store_true",
                   help="count the rounds retention archived (retention.archive) too, when the database holds fewer than --last")
    p.add_argument("--json", action="store_true", help="print the estimates as JSON")
    args = p.parse_intermixed_args(argv)  # checkpoints before and after the options alike
    from serve.feedback_archive import ArchiveError
    from serve.feedback_db import DatabaseError
    from serve.settings import SettingsError, settings_from_config

    try:
        if args.last < 1:
            raise OpeError(f"--last: must be >= 1, got {args.last}")
        if args.holdout is not None and not 0 < args.holdout < 1:
            raise OpeError(f"--holdout: must be in (0, 1), got {args.holdout}")
        settings = settings_from_config(args.config, args.set)
        rows, greedy_rows = exploring_rows(settings, args.last, args.holdout, args.archive)
        if not rows:
            raise OpeError(f"feedback store: no rewarded exploring rounds among the newest {args.last} "
                           f"({greedy_rows} greedy ones say nothing about other models)")
        served = float(np.mean([r["reward"] for r in rows]))
        results = []
        if not args.checkpoints and not args.published:
            raise OpeError("checkpoints: name at least one, or --published")
        policies = [(path, _load(path)) for path in args.checkpoints]
        if args.published:
            policies.append(published_policy(settings))
        variants = [(text, decision_spec(text)) for text in args.decision]
        for name, policy in policies:
            results.append(estimate(name, policy, rows, args.as_ == "greedy", settings, args.by_preference))
            for text, spec in variants:
                with deciding(policy, spec, text):
                    results.append(estimate(f"{name} [{text}]", policy, rows, args.as_ == "greedy", settings, args.by_preference))
    except (OpeError, ArchiveError, SettingsError, DatabaseError, OSError) as err:
        print(f"barp ope: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"rounds": len(rows), "greedy_rounds_left_out": greedy_rows, "served_mean_reward": served,
                          "as": args.as_, "estimates": [asdict(r) for r in results]}, indent=1))
        return 0
    print(f"{len(rows)} exploring rounds judged ({greedy_rows} greedy left out); the service earned "
          f"{served:+.4f} a round on them. Each checkpoint {'greedy' if args.as_ == 'greedy' else 'as served'}, ±95 %:")
    print(f"{'checkpoint':<40} {'estimate':>16} {'vs served':>16} {'agrees':>7} {'eff. n':>8} {'est.':>5}")
    few = False
    for r in results:
        few |= r.effective_rounds < FEW
        print(f"{r.policy[-40:]:<40} {r.value:+.4f} ± {r.half_width:.4f} {r.vs_served:+.4f} ± {r.vs_served_half_width:.4f}"
              f" {r.agreement:>7.2f} {r.effective_rounds:>7.0f}{'*' if r.effective_rounds < FEW else ' '} {r.estimator:>5}"
              + ("" if r.rounds == len(rows) else f"  ({r.rounds} rounds served one of its models)"))
        for b in r.bands or []:
            few |= b["effective_rounds"] < FEW
            band = f"  w_q {b['w_q'][0]:.1f}-{b['w_q'][1]:.1f} ({b['rounds']} rounds)"
            print(f"{band:<40} {b['value']:+.4f} ± {b['half_width']:.4f} {b['vs_served']:+.4f} ± {b['vs_served_half_width']:.4f}"
                  f" {b['agreement']:>7.2f} {b['effective_rounds']:>7.0f}{'*' if b['effective_rounds'] < FEW else ''}")
    if few:
        print(f"* fewer than {FEW} effective rounds: the checkpoint rarely chose what was served there, so that interval "
              "rests on a few rounds and may be far off; judge on more rounds (--last) or after more exploration")
    return 0


if __name__ == "__main__":
    sys.exit(main())
