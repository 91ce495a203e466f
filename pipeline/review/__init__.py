"""What a run decided, as people see it: `capfilt inspect` and its HTML report, the score sketches in
each file's footer, `keep_fraction`'s calibration and `top_fraction`'s rewrite."""
