"""Reading shards: tar members to samples, the training mixture's loader, bad-sample accounting, eval samples."""
