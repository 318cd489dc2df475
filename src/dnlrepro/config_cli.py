"""``dnlrepro show-config``: print a resolved configuration as YAML."""

from __future__ import annotations

import argparse

import yaml

from dnlrepro.config import PROFILES, load_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="config name or YAML path")
    p.add_argument("--profile", choices=PROFILES, default=None, help="default: params.yaml")
    p.add_argument("--flat", action="store_true", help="dotted keys, one per line")


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, profile=args.profile)
    if args.flat:
        for k, v in cfg.flat().items():
            print(f"{k}: {v}")
    else:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0
