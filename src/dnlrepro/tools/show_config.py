"""``dnlrepro show-config``: print a resolved configuration as YAML."""

from __future__ import annotations

import argparse

import yaml

from dnlrepro.core.config import add_config_arguments, config_from_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, overrides=True)
    p.add_argument("--flat", action="store_true", help="dotted keys, one per line")


def main(args: argparse.Namespace) -> int:
    cfg, _ = config_from_args(args)
    if args.flat:
        for k, v in cfg.flat().items():
            print(f"{k}: {v}")
    else:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0
