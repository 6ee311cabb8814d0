"""A finished CLIP run, loaded for inference by the stages that condition on CLIP (prior, decoder)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dalle2_jax.data.tokenizer import make_tokenizer
from dalle2_jax.models.clip import CLIP
from dalle2_jax.stages.clip import clip_example, resolved_model_config, to_model_images
from dalle2_jax.stages.finished_run import load_finished_run


class FrozenClip:
    """CLIP config, tokenizer, model and parameters (the EMA ones if the run kept them).

    `field` is the config field that named the workdir, for error messages.
    """

    def __init__(self, workdir: str, field: str = "clip.workdir"):
        self.config, self.params = load_finished_run(workdir, field, "clip")
        self.tokenizer = make_tokenizer(self.config.tokenizer)
        self.model = CLIP.from_config(resolved_model_config(self.config, self.tokenizer),
                                      dtype=jnp.dtype(self.config.dtype))
        self.embed_dim = int(self.config.model.embed_dim)
        self.text_width = int(self.config.model.text.width)
        self.context_length = int(self.tokenizer.context_length)

    def example(self, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """A dataset example as this CLIP's inputs."""
        return clip_example(self.tokenizer, example)

    def encode_texts(self, params: Any, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Unit-norm text embeddings, per-token encodings and their mask."""
        embed, encodings, mask = self.model.apply({"params": params}, batch["tokens"], method=CLIP.encode_text)
        return {"text_embed": embed / jnp.linalg.norm(embed, axis=-1, keepdims=True),
                "text_encodings": encodings, "text_mask": mask}

    def encode_images(self, params: Any, images: jax.Array) -> jax.Array:
        """Unit-norm image embeddings of uint8 [B, R, R, 3] images (resized to CLIP's resolution)."""
        size = int(self.config.data.resolution)
        x = to_model_images(images)
        if x.shape[1:3] != (size, size):
            x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "linear", antialias=True)
        image = self.model.apply({"params": params}, x, method=CLIP.encode_image)
        return image / jnp.linalg.norm(image, axis=-1, keepdims=True)

    def encode(self, params: Any, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Everything the prior trains on, for a batch of images and caption tokens."""
        return {"image_embed": self.encode_images(params, batch["image"]), **self.encode_texts(params, batch)}
