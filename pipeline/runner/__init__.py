"""The run loop and the Ray layer under it: planning and committing shards (run), Ray Data's pipeline
(ray_adapter, the only module that imports ray.data), starting or attaching to Ray (ray_start), progress,
timing, quiet logs, exit codes, run.json (report) and `capfilt estimate`."""
