"""Launching: ahead-of-time TPU compile checks and multi-host launchers."""
