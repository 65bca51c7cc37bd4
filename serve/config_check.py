"""`barp check-serve CONFIG`: a Serve config file checked here, before `serve deploy` sends it.

Why: `serve deploy` hands the file to the cluster and returns; a bad setting then shows as an
application stuck in DEPLOY_FAILED, its reason in the Serve dashboard or controller log. Worse, a
`user_config` set on a deployment in the file (the live offer: prices, context windows,
capabilities, budgets) never passes through the app builder: only the replicas read it, so a typo
fails each replica at start, or, in an in-place update, is refused in the replicas' logs while the
old offer keeps serving. And the offer must be the same on every deployment that reads it (the
ingress and routers route by it, the trainer trains under it); the file does not say so. This runs
the app builder's own checks and the replicas' offer check on every application, and compares the
offers, naming the application, deployment and field of each problem.

    barp check-serve configs/serve.yaml                 # exit 0: deployable from here; 1: problems listed
    barp check-serve configs/serve.yaml --no-environment   # skip tokens and provider keys (read where replicas run)
    barp check-serve deploy/k8s/rayservice.yaml            # a KubeRay RayService: its serveConfigV2
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

BUILDER = "serve.app:app_builder"
PATHS = ("checkpoint", "log_dir", "trainer.state_dir", "retention.archive", "feedback.database_url_file", "auth.token_file",
         "auth.admin_token_file", "auth.clients_file")  # as the file gives them (ServeSettings.absolute pins them where built)


def check(config: dict, environment: bool = True) -> tuple[list[str], list[str]]:
    """(problems, notes) for a parsed Serve config: a problem fails the deploy or serves other than
    the file says; a note is worth knowing."""
    from serve.app import checked_app
    from serve.settings import LIVE_OFFER_DEPLOYMENTS, SettingsError, live_offer

    problems: list[str] = []
    notes: list[str] = []
    apps = config.get("applications") if isinstance(config, dict) else None
    if not isinstance(apps, list) or not apps:
        return ["applications: the file names no application (a Serve config lists them under `applications:`)"], notes
    for i, app in enumerate(apps):
        name = app.get("name", f"#{i}") if isinstance(app, dict) else f"#{i}"
        where = f"applications[{name}]"
        if not isinstance(app, dict):
            problems.append(f"{where}: must be a mapping with name, import_path and args, got {app!r:.80}")
            continue
        if app.get("import_path") != BUILDER:
            notes.append(f"{where}: not barp-ray's app ({BUILDER}); not checked")
            continue
        args, deployments = app.get("args") or {}, app.get("deployments") or []
        if not isinstance(args, dict):
            problems.append(f"{where}.args: must be a mapping of the app's settings, got {args!r:.80}")
            continue
        if not isinstance(deployments, list) or not all(isinstance(d, dict) for d in deployments):
            problems.append(f"{where}.deployments: must be a list of mappings with a name, got {deployments!r:.80}")
            continue
        try:
            settings, meta, live = checked_app(args, environment)
        except (SettingsError, ValueError) as e:
            problems.append(f"{where}.args.{e}")
            continue
        for key in PATHS:
            value = args
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if isinstance(value, str) and "://" not in value and not Path(value).is_absolute():
                notes.append(f"{where}.args.{key}: {value!r} is relative to where the app is built: fine for `serve run` "
                             f"here; `serve deploy` builds it on the cluster, so give an absolute path there")
        readers = LIVE_OFFER_DEPLOYMENTS[settings.topology]
        offers: dict[str, Any] = {}
        refused = False
        for dep in deployments:
            if "user_config" not in dep:
                continue
            dep_name = dep.get("name", "?")
            if dep_name not in readers:
                notes.append(f"{where}.deployments[{dep_name}].user_config: this deployment reads no live offer in topology "
                             f"{settings.topology!r} (those that do: {list(readers)})")
                continue
            try:
                live_offer(dep["user_config"], meta)
            except ValueError as e:
                field = str(e) if str(e).startswith("user_config") else f"user_config.{e}"
                problems.append(f"{where}.deployments[{dep_name}].{field}")
                refused = True
            offers[dep_name] = dep["user_config"] or {}
        offered = set(meta["models"]) | {str(m) for o in [live, *offers.values()] if isinstance(o, dict)
                                         and isinstance(o.get("models"), dict) for m in o["models"]}
        for stray in sorted(set(settings.upstreams) - offered - {settings.judge.model}):
            notes.append(f"{where}.args.upstreams.{stray}: not a model the checkpoint or the live offer routes, nor the judge: "
                         f"no request can reach it (a typo? routed: {sorted(offered)})")
        if offers and not refused:  # the file's offer replaces the args' on the deployments that set one: all must agree
            expected = {d: offers.get(d, live) for d in readers}
            if len({json.dumps(o, sort_keys=True) for o in expected.values()}) > 1:
                given = ", ".join(f"{d}: {'its own' if d in offers else 'the args’ (none set here)'}" for d in readers)
                problems.append(f"{where}.deployments: the live offer differs between the deployments that read it ({given}); "
                                f"give {list(readers)} the same user_config, or the trainer learns under another offer "
                                "than the one routed")
    if not environment:
        notes.append("not checked: the API, admin and clients' tokens and the providers' keys (--no-environment)")
    return problems, notes


def main(argv: list[str] | None = None) -> int:
    import yaml

    p = argparse.ArgumentParser(prog="barp check-serve", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="a Serve config file (YAML), e.g. configs/serve.yaml, or a KubeRay RayService manifest")
    p.add_argument("--no-environment", action="store_true",
                   help="skip what is read from the environment and secrets files where the replicas run: tokens, provider keys")
    args = p.parse_args(argv)
    try:
        config = yaml.safe_load(Path(args.config).read_text())
        if isinstance(config, dict) and config.get("kind") == "RayService":  # KubeRay: the Serve config is a string in it
            config = yaml.safe_load((config.get("spec") or {}).get("serveConfigV2") or "")
    except (OSError, yaml.YAMLError) as e:
        print(f"barp check-serve: error: {args.config}: cannot read it as YAML ({type(e).__name__})", file=sys.stderr)
        return 2
    problems, notes = check(config, environment=not args.no_environment)
    for line in problems:
        print(f"problem: {line}")
    for line in notes:
        print(f"note: {line}")
    if problems:
        return 1
    print(f"ok: {args.config} can be deployed from here")
    return 0


if __name__ == "__main__":
    sys.exit(main())
