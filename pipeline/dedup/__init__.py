"""`capfilt dedup OUT`: exact, perceptual and semantic duplicates among a finished run's rows."""
