"""gen2d: guided generation, scoring and ranking of 2D monolayers for the hydrogen evolution reaction."""

__version__ = "0.1.0"
