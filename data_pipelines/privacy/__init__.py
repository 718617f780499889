"""Privacy filters for data: personal data scrubbing, face blurring, deduplication, canaries."""
