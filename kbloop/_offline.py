"""Process-wide switches that keep kbloop off the network and polite on shared cores."""

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
    # Ray (KBLOOP_INGEST_ENGINE=ray) reports usage to its makers unless told not to.
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
}


# Defaulted: OpenMP threads that spin while waiting starve every other process on the cores
# (llama.cpp fell from 8.8 to 0.6 tok/s beside one busy process). Read once, when OpenMP
# starts, so it is set here, before torch or llama.cpp load.
SHARED_CPU_ENVIRONMENT = {"OMP_WAIT_POLICY": "PASSIVE"}


def apply_offline_environment() -> None:
    os.environ.update(OFFLINE_ENVIRONMENT)
    for key, value in SHARED_CPU_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
