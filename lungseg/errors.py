"""Errors a user can act on. Scripts print their message in one line and exit non-zero."""


class LungsegError(Exception):
    """Base class: a problem with the user's input, files or options (not a bug)."""


class DataError(LungsegError):
    """One or more files are missing, unreadable or inconsistent.

    ``problems`` holds one line per problem, each naming its file, so that all of them can be
    reported together instead of one per run.
    """

    def __init__(self, problems):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class ConfigError(LungsegError):
    """An option or configuration value is invalid."""


class WeightsUnavailableError(LungsegError):
    """Pre-trained weights could not be downloaded or found on disk."""


class RunExistsError(LungsegError):
    """A finished run folder would be overwritten."""


def first_line(error):
    """``Type: first line of the message`` of an exception (quotes around it dropped), for
    one-line ``error:`` messages about a library's exception."""
    text = str(error).strip().strip("\"'")
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__
