"""Sample documents for `kbloop quickstart`: the manual of Harbor, a fictional file-sync server."""
