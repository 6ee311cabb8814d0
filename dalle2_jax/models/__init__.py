"""The unCLIP models: CLIP, the diffusion prior and the decoder/upsampler UNets."""
