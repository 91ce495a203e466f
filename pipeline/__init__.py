"""capfilt: caption, score, filter and embed image shards on Ray Data."""

__version__ = "0.1.0"
