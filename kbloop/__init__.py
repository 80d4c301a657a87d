"""kbloop: an offline, incremental knowledge assistant over a folder of documents."""

from kbloop._offline import apply_offline_environment

# Before anything imports Hugging Face or unstructured: a mistake must fail at once,
# not retry a model hub or ping a telemetry host.
apply_offline_environment()

__version__ = "0.1.0"
