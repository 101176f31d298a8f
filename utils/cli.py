"""The one command-line runner of every script: ``--conf``/``--set``, ``--run``, and clean error exits.

    parser = make_parser(__doc__.splitlines()[0])          # --conf and --set
    add_run_args(parser)                                   # --run RUN_DIR, repeatable, globs (postprocessing)
    if __name__ == "__main__":
        run(main, parser)                                  # main(args, conf); errors -> one line, exit 2

Scripts without a config (``search.py``, ``pretrained_models/get_sbert.py``) build a plain parser and get
``main(args)`` called instead.
"""

from __future__ import annotations

import argparse
import glob
import sys
from collections.abc import Callable
from pathlib import Path

from utils.base.config import Config, load_config
from utils.base.errors import DataError, PipelineError
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
    """Add ``--run RUN_DIR`` (repeatable; a quoted shell glob such as ``'runs/A-seed*'`` names every match;
    default: ``run.dir/run.name`` of the config)."""
    parser.add_argument("--run", action="append", default=None, metavar="RUN_DIR",
                        help="run directory (default: run.dir/run.name of the config); repeat it, or give a glob "
                             "('runs/A-seed*'), for several runs; given without --conf, the config is the first "
                             "run's config.yaml")
    return parser


def expand_runs(patterns: list[str]) -> list[Path]:
    """Run directories named by ``patterns``: a glob gives its matches, sorted; a plain path itself. A glob
    without a match is a :class:`DataError`; a run named twice counts once."""
    out: list[Path] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            found = sorted(Path(p) for p in glob.glob(pattern) if Path(p).is_dir())
            if not found:
                raise DataError(f"--run '{pattern}' matches no run directory")
        else:
            found = [Path(pattern)]
        out.extend(p for p in found if p not in out)
    return out


def run_dirs_of(args: argparse.Namespace, conf: Config) -> list[Path]:
    """Every ``--run`` (globs expanded, :func:`expand_runs`), else the config's ``run.dir/run.name``."""
    return expand_runs(args.run) if args.run else [conf.run_dir]


def run_dir_of(args: argparse.Namespace, conf: Config) -> Path:
    """The one run of a script that takes one; several ``--run`` are a :class:`PipelineError`."""
    dirs = run_dirs_of(args, conf)
    if len(dirs) > 1:
        raise PipelineError(f"this script takes one run, got {len(dirs)} ({', '.join(map(str, dirs[:3]))}, ...)")
    return dirs[0]


def config_of(args: argparse.Namespace) -> Config:
    """``--conf`` with ``--set`` on top. Without ``--conf``: the run's own ``config.yaml`` when ``--run`` (or
    ``--ensemble``) names a run that has one (so overrides apply on top of the settings it was trained with), else ``conf.yaml``."""
    path = args.conf
    runs = getattr(args, "run", None) or getattr(args, "ensemble", None)  # a run, else an ensemble's first member
    run_dir = expand_runs(runs)[0] if runs else None
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
