"""Domain errors. Each message says what went wrong and how to fix it.

The CLI prints them as one line and exits non-zero; nothing else should need a traceback.
"""


class KbloopError(Exception):
    """Base class for errors a user can act on."""

    exit_code = 1


class ConfigError(KbloopError):
    """A setting has a value kbloop cannot use."""

    exit_code = 2


class HomeNotFound(KbloopError):
    """No kb home where one was expected."""

    exit_code = 2


class BackendUnavailable(KbloopError):
    """A model backend (packaged files, an Ollama server) cannot be reached or loaded."""


class LoaderError(KbloopError):
    """One document could not be read; ingest records the reason and goes on."""


class StoreError(KbloopError):
    """The vector store on disk is unusable."""


class NeedsRebuild(StoreError):
    """The index was built with other settings than the current ones."""


class DaemonRunning(KbloopError):
    """Another daemon already holds this home's lock; two would race on the same store."""


class NothingToEvaluate(KbloopError):
    """No eval questions: the dataset's eval split is empty and no eval file was given."""
