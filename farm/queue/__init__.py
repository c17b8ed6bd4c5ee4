"""The queue: the SQLite task queue, the content-addressed cache and file digests."""
