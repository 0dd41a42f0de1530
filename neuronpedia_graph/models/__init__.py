"""Which model and transcoders to load, from where, and loading them."""
