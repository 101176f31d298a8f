"""Shared command-line plumbing for the numbered scripts: ``--conf``/``--set`` and clean error exits."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from utils.config import Config, add_config_args, config_from_args
from utils.errors import PipelineError


def make_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser that already has ``--conf`` and ``--set``."""
    parser = argparse.ArgumentParser(description=description)
    return add_config_args(parser)


def run(main: Callable[[argparse.Namespace, Config], object], parser: argparse.ArgumentParser,
        argv: list[str] | None = None) -> None:
    """Parse ``argv``, load the config and call ``main(args, conf)``.

    A :class:`~utils.errors.PipelineError` (bad config, missing or inconsistent data) is printed as
    one line, ``error: ...``, and exits with status 2 instead of a traceback.
    """
    args = parser.parse_args(argv)
    try:
        conf = config_from_args(args)
        main(args, conf)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
