"""The daemon's logs: one JSON object per line in data/logs/daemon.log (rotated), text on stderr.

JSON so that a week of unattended runs can be searched by job, attempt or outcome with jq
or a few lines of Python; ``extra={...}`` fields of a log call become keys of its object.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import time
from pathlib import Path

LOG_NAME = "daemon.log"
MAX_BYTES, BACKUPS = 5 * 2**20, 5
# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(logs_dir: Path, level: int = logging.INFO) -> None:
    """kbloop's records at ``level`` and above go to the rotating JSON file and to stderr.

    The level is set on the ``kbloop`` logger only, so chatty libraries stay at the CLI's level.
    """
    logs_dir.mkdir(parents=True, exist_ok=True)
    file_handler = logging.handlers.RotatingFileHandler(
        logs_dir / LOG_NAME, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8")
    file_handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("kbloop")
    logger.setLevel(min(level, logging.getLogger().getEffectiveLevel()))
    logger.addHandler(file_handler)
    root = logging.getLogger()
    if not root.handlers:  # the CLI has set up stderr already; an embedding program may not have
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
