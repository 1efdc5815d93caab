"""The online feature store: the rows of the release's newest partitions, keyed by entity, for serving."""
