"""Meshes and sharding: the only place that knows mesh axis names."""
