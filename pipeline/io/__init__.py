"""Shard listing, readers, writers and storage options."""
