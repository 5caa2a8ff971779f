"""affinage: a support assistant that gets better from its own failures."""

__version__ = "0.1.0"
