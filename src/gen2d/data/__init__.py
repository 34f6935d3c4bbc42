"""Dataset readers, the built-in template library and periodic graphs for 2D monolayers."""
