"""Error types that scripts turn into a one-line message and exit code 2 (see :mod:`utils.cli`)."""


class PipelineError(Exception):
    """A problem the user can fix; the message names the file or key and says what to do."""


class DataError(PipelineError):
    """Missing, inconsistent or unreadable data on disk."""
