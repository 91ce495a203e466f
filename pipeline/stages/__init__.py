"""Ray Data callables: one small class per step, one row in → one row out, whole columns at a time."""
