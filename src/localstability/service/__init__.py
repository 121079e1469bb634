"""The use cases: the only layer that talks to both the store and the inference backend."""
