"""Process-wide switches that keep kbloop off the network."""

import os

# Forced, not defaulted: kbloop never downloads at run time, whatever the shell says.
OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    # unstructured pings a telemetry host on import unless told not to.
    "DO_NOT_TRACK": "1",
    "UNSTRUCTURED_DISABLE_NOTICE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def apply_offline_environment() -> None:
    os.environ.update(OFFLINE_ENVIRONMENT)
