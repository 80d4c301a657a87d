"""Domain errors. Each message says what went wrong and how to fix it.

Each kind carries what the two edges need, so neither keeps a table of classes: ``http_status``
for the HTTP API's JSON error and ``exit_code`` for the CLI, which prints ``one_line()``.

| kind               | HTTP | exit | when                                                    |
| ------------------ | ---- | ---- | ------------------------------------------------------- |
| KbloopError        | 400  | 1    | the request or command cannot be carried out as asked   |
| ConfigError        | 500  | 2    | a setting is unusable; over HTTP, the server's setting  |
| HomeNotFound       | 500  | 2    | no kb home where one was expected                       |
| NotFound           | 404  | 3    | what was named (a version, a run, a record) is missing  |
| Conflict           | 409  | 4    | another run holds what this one needs; retry later      |
| BackendUnavailable | 503  | 1    | a model backend cannot be reached or loaded             |
| StoreError         | 503  | 1    | the store on disk is damaged; `kbloop check` repairs it |
| NeedsRebuild       | 409  | 1    | the index was built with other settings                 |
| DocsUnreadable     | 503  | 1    | the docs folder cannot be read; fix its permissions     |

A damaged store is 503, not 500: the request was fine and the server has no bug; it cannot
serve until the store is repaired, and the same request succeeds after that. 500 stays for
what nobody expected (a bug) and for a server started with settings it cannot use.
"""


class KbloopError(Exception):
    """Base class for errors a user can act on: by default, a request kbloop cannot carry out."""

    http_status = 400
    exit_code = 1

    def one_line(self) -> str:
        """The message as the CLI prints it: one line, whatever the message's wrapping."""
        return " ".join(str(self).split())


class ConfigError(KbloopError):
    """A setting has a value kbloop cannot use."""

    http_status = 500
    exit_code = 2


class HomeNotFound(KbloopError):
    """No kb home where one was expected."""

    http_status = 500
    exit_code = 2


class NotFound(KbloopError):
    """What was asked for (an adapter, a dataset version, an evaluation run) does not exist."""

    http_status = 404
    exit_code = 3


class Conflict(KbloopError):
    """Another run holds what this one needs (a lock, a running job); it can be retried later."""

    http_status = 409
    exit_code = 4


class BackendUnavailable(KbloopError):
    """A model backend (packaged files, an Ollama server) cannot be reached or loaded."""

    http_status = 503


class LoaderError(KbloopError):
    """One document could not be read; ingest records the reason and goes on."""


class StoreError(KbloopError):
    """A store on disk is unusable: the vector store, or an adapter's record of its lineage."""

    http_status = 503


class NeedsRebuild(StoreError):
    """The index was built with other settings than the current ones."""

    http_status = 409


class DocsUnreadable(KbloopError):
    """The docs folder itself cannot be listed. An ingest stops before it changes anything: a
    folder it cannot read says nothing about which documents are gone."""

    http_status = 503


class DaemonRunning(Conflict):
    """Another daemon already holds this home's lock; two would race on the same store."""


class NothingToEvaluate(KbloopError):
    """No eval questions: the dataset's eval split is empty and no eval file was given."""
