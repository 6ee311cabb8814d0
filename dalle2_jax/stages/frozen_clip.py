"""A frozen CLIP for the stages that condition on it (prior, decoder): a finished CLIP run of this
project (`clip.workdir`) or a pretrained OpenAI / OpenCLIP model converted by
`python -m dalle2_jax.convert_clip` (`clip.pretrained`), loaded for inference."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from dalle2_jax.data.clip_bpe import MERGES_FILE
from dalle2_jax.data.tokenizer import make_tokenizer
from dalle2_jax.models.clip import CLIP
from dalle2_jax.parallel.mesh import ConfigError
from dalle2_jax.stages.clip import clip_example, resolved_model_config, to_model_images
from dalle2_jax.stages.finished_run import load_finished_run

PRETRAINED_MARKER = "pretrained.json"  # written by convert_clip next to the config and checkpoint


def clip_section() -> ml_collections.ConfigDict:
    """The `clip` config section of the stages that condition on CLIP."""
    clip = ml_collections.ConfigDict()
    clip.workdir = ""  # a finished CLIP run (its workdir); its config fixes the embedding sizes
    clip.pretrained = ""  # a CLIP converted by `python -m dalle2_jax.convert_clip`; used instead of clip.workdir
    return clip


def clip_dir(config: ml_collections.ConfigDict) -> tuple[str, str]:
    """(directory, field naming it) of the CLIP a stage config conditions on: `clip.pretrained`
    if set, else `clip.workdir`. Raises ConfigError when neither is set or the pretrained one is
    not a converted checkpoint."""
    workdir, pretrained = config.clip.workdir, config.clip.get("pretrained", "")
    if not workdir and not pretrained:
        raise ConfigError("clip.workdir / clip.pretrained: name the CLIP to condition on (a finished CLIP run, "
                          "or a pretrained CLIP converted by python -m dalle2_jax.convert_clip)")
    if pretrained and not (epath.Path(pretrained) / PRETRAINED_MARKER).exists():
        raise ConfigError(f"clip.pretrained={pretrained!r}: not a converted CLIP (no {PRETRAINED_MARKER}); write one "
                          f"with python -m dalle2_jax.convert_clip --checkpoint=FILE --arch=ARCH --out={pretrained}")
    return (pretrained, "clip.pretrained") if pretrained else (workdir, "clip.workdir")


class FrozenClip:
    """CLIP config, tokenizer, model and parameters.

    `params` may be abstract (`jax.ShapeDtypeStruct`s: `launch.aot` compiles without weights);
    `origin` names where the config came from, for error messages.
    """

    def __init__(self, config: ml_collections.ConfigDict, params: Any, origin: str = "clip config"):
        self.config, self.params = config, params
        try:
            self.tokenizer = make_tokenizer(config.tokenizer)
        except (OSError, ValueError) as e:
            raise ConfigError(f"{origin}: {e}") from None
        self.model = CLIP.from_config(resolved_model_config(self.config, self.tokenizer),
                                      dtype=jnp.dtype(self.config.dtype))
        vision = self.config.model.vision
        self.image_mean, self.image_std = tuple(vision.get("image_mean", ())), tuple(vision.get("image_std", ()))
        self.embed_dim = int(self.config.model.embed_dim)
        self.text_width = int(self.config.model.text.width)
        self.context_length = int(self.tokenizer.context_length)

    @classmethod
    def load(cls, workdir: str, field: str = "clip.workdir") -> FrozenClip:
        """A finished or converted CLIP in `workdir` (its EMA parameters if the run kept them);
        `field` named the directory. A CLIP BPE tokenizer without `tokenizer.bpe_path` reads the
        merges file kept in the directory, if any."""
        config, params = load_finished_run(workdir, field, "clip")
        kept_merges = epath.Path(workdir) / MERGES_FILE
        if config.tokenizer.kind == "clip_bpe" and not config.tokenizer.get("bpe_path") and kept_merges.exists():
            config.tokenizer.bpe_path = str(kept_merges)
        return cls(config, params, origin=f"{field}={workdir!r}")

    @classmethod
    def of(cls, config: ml_collections.ConfigDict) -> FrozenClip:
        """The CLIP a prior or decoder config names (`clip.workdir` or `clip.pretrained`)."""
        return cls.load(*clip_dir(config))

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
        x = to_model_images(images, self.image_mean, self.image_std)
        if x.shape[1:3] != (size, size):
            x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "linear", antialias=True)
        image = self.model.apply({"params": params}, x, method=CLIP.encode_image)
        return image / jnp.linalg.norm(image, axis=-1, keepdims=True)

    def encode(self, params: Any, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Everything the prior trains on, for a batch of images and caption tokens."""
        return {"image_embed": self.encode_images(params, batch["image"]), **self.encode_texts(params, batch)}
