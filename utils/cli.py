"""The one command-line runner of every script: ``--conf``/``--set``, ``--run``, and clean error exits.

    parser = make_parser(__doc__.splitlines()[0])          # --conf and --set
    add_run_args(parser)                                   # --run RUN_DIR (postprocessing)
    if __name__ == "__main__":
        run(main, parser)                                  # main(args, conf); errors -> one line, exit 2

Scripts without a config (``search.py``, ``pretrained_models/get_sbert.py``) build a plain parser and get
``main(args)`` called instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from utils.base.config import Config, load_config
from utils.base.errors import PipelineError
from utils.runs import config_file

DEFAULT_CONF = "conf.yaml"
RESUME_HINT = "interrupted; rerun the same command to resume"


def make_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser that already has ``--conf`` and ``--set``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--conf", default=None, help=f"config file (default: {DEFAULT_CONF})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set data.dataset_dir=~/Clotho (repeatable)")
    return parser


def add_run_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--run RUN_DIR`` (default: ``run.dir/run.name`` of the config)."""
    parser.add_argument("--run", default=None, metavar="RUN_DIR",
                        help="run directory (default: run.dir/run.name of the config); given without --conf, "
                             "the config is RUN_DIR/config.yaml")
    return parser


def run_dir_of(args: argparse.Namespace, conf: Config) -> Path:
    return Path(args.run) if args.run else conf.run_dir


def config_of(args: argparse.Namespace) -> Config:
    """``--conf`` with ``--set`` on top. Without ``--conf``: the run's own ``config.yaml`` when ``--run`` names a
    run that has one (so overrides apply on top of the settings it was trained with), else ``conf.yaml``."""
    path = args.conf
    run_dir = getattr(args, "run", None)
    if path is None and run_dir and config_file(run_dir).is_file():
        path = config_file(run_dir)
    return load_config(path or DEFAULT_CONF, args.overrides)


def call(main: Callable[..., object], parser: argparse.ArgumentParser, argv: list[str] | None = None,
         interrupted: str = RESUME_HINT) -> int:
    """Parse ``argv``, then ``main(args, conf)`` (a parser from :func:`make_parser`) or ``main(args)``.

    Returns the exit status: 0; 2 after a :class:`~utils.base.errors.PipelineError` (bad config, unknown registry
    name, missing or inconsistent data), printed as one line ``error: ...`` instead of a traceback; 130 after
    Ctrl-C, printing ``interrupted``.
    """
    args = parser.parse_args(argv)
    try:
        if hasattr(args, "overrides"):
            main(args, config_of(args))
        else:
            main(args)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
    return 0


def run(main: Callable[..., object], parser: argparse.ArgumentParser, argv: list[str] | None = None,
        interrupted: str = RESUME_HINT) -> None:
    """:func:`call`, exiting with its status when that is not 0."""
    status = call(main, parser, argv, interrupted)
    if status:
        sys.exit(status)
