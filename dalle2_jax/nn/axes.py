"""Logical axis names shared by every model.

Models name the axes of their parameters and large activations with these constants and never
mention a mesh axis; the config's logical-to-mesh rules (see `dalle2_jax.parallel.sharding`) map
them onto the mesh axes `data`, `fsdp` and `tensor`.
"""

BATCH = "batch"  # examples in a batch (activations only)
LENGTH = "length"  # sequence positions: tokens, patches (activations, position tables)
EMBED = "embed"  # model width / residual stream
MLP = "mlp"  # hidden width of feed-forward blocks
HEADS = "heads"  # attention heads
KV = "kv"  # per-head feature size
VOCAB = "vocab"  # token vocabulary
PATCH = "patch"  # flattened pixels of one patch (patch-embedding input)
CONV_IN = "conv_in"  # convolution input channels
CONV_OUT = "conv_out"  # convolution output channels
LAYERS = "layers"  # the stacked blocks of a scanned transformer (never sharded)
NORM = "norm"  # scales and biases of normalisation layers (never sharded)
