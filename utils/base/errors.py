"""Error types that scripts turn into a one-line message and exit code 2 (see :mod:`utils.cli`), and the one
way to print a warning."""

import sys

from tqdm import tqdm


class PipelineError(Exception):
    """A problem the user can fix; the message names the file or key and says what to do."""


class DataError(PipelineError):
    """Missing, inconsistent or unreadable data on disk."""


def warn(message: str) -> None:
    """One ``warning: ...`` line on stderr that does not break a progress bar."""
    tqdm.write(f"warning: {message}", file=sys.stderr)
