"""The generic training loop and what it needs: state, optimizer, checkpoints, metrics."""
