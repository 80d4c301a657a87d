"""Documents in: loaders, chunking, the manifest and the incremental indexer."""
