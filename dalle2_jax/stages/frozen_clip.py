"""A finished CLIP run, loaded for inference by the stages that condition on CLIP (prior, decoder)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from dalle2_jax.data.tokenizer import make_tokenizer
from dalle2_jax.models.clip import CLIP
from dalle2_jax.parallel.mesh import ConfigError
from dalle2_jax.stages.clip import clip_example, resolved_model_config, to_model_images


class FrozenClip:
    """CLIP config, tokenizer, model and parameters (the EMA ones if the run kept them).

    `field` is the config field that named the workdir, for error messages.
    """

    def __init__(self, workdir: str, field: str = "clip.workdir"):
        path = epath.Path(workdir)
        if not workdir or not (path / "config.json").exists():
            raise ConfigError(f"{field}={workdir!r}: not a CLIP run (no config.json); train one first "
                              "with configs/shapes/clip.py")
        self.config = ml_collections.ConfigDict(json.loads((path / "config.json").read_text()))
        if self.config.stage != "clip":
            raise ConfigError(f"{field}={workdir!r} is a {self.config.stage!r} run, not a CLIP run")
        steps = ocp.CheckpointManager(path.absolute() / "checkpoints").all_steps()
        wanted = self.config.train.num_steps
        if wanted not in steps:
            raise ConfigError(f"{field}={workdir!r}: the CLIP run has not finished (checkpoints {sorted(steps)}, "
                              f"train.num_steps={wanted}); rerun its command to finish it")
        state = ocp.StandardCheckpointer().restore(path.absolute() / "checkpoints" / str(wanted) / "state")
        self.params = state["ema_params"] if state.get("ema_params") is not None else state["params"]
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

    def encode(self, params: Any, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Everything the prior trains on, for a batch of images and caption tokens."""
        image = self.model.apply({"params": params}, to_model_images(batch["image"]), method=CLIP.encode_image)
        return {"image_embed": image / jnp.linalg.norm(image, axis=-1, keepdims=True),
                **self.encode_texts(params, batch)}
