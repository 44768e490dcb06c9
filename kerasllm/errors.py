"""User-facing errors.

Every mistake a user can make (a bad config key, a missing file, a binary corpus) raises a
subclass of `KerasLLMError` whose message names the file, key or value at fault and what was
expected. The command-line recipes print that one message and exit with status 2, never a
traceback.
"""


class KerasLLMError(Exception):
    """Base class of every error caused by user input rather than a bug."""


class ConfigError(KerasLLMError, ValueError):
    """A recipe file, config key or `--set` override is wrong."""


class DataError(KerasLLMError, ValueError):
    """A corpus, dataset name or data file cannot be used."""


class RunError(KerasLLMError, RuntimeError):
    """A run directory is missing, incomplete or inconsistent, or training diverged."""


class Interrupted(RunError):
    """Training stopped on SIGINT or SIGTERM after saving a checkpoint.

    `exit_code` is the shell's code for that signal: 130 (SIGINT) or 143 (SIGTERM).
    """

    def __init__(self, message, signum):
        super().__init__(message)
        self.exit_code = 128 + int(signum)
