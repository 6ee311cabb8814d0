"""The upsampler stages (unCLIP sec. 2.1, appendix C): low-resolution image -> image at `model.image_size`.

A convolutional ADM UNet without attention, text or CLIP conditioning: the low-resolution image
(`upsampler.low_res_size` px, the previous stage's output size) is resized bilinearly to full
size inside the UNet and concatenated to x_t on channels. As in the paper it is trained on random
crops (`upsampler.crop_size`, by default a quarter of the side: 64 px crops for 256 px, the
paper's) and, having no attention, applied fully convolutionally at full size: the same
parameters at any size.

Conditioning augmentation (sec. 2.1): the low-resolution crop is corrupted by
`upsampler.degradation`, "blur" (Gaussian, kernel 3, sigma up to 0.6: the first upsampler) or
"bsr" (blur, rescale, noise, JPEG: the second), see `data/degrade.py`; "none" turns it off.
Sampling uses the clean low-resolution image (at generation time, the previous stage's output).

Low-resolution training inputs are the downsampled full image cropped at a position aligned to
the scale factor, so they are exactly what the stage sees at full size.

Evaluation upsamples downsampled eval images and reports PSNR against the originals and, on
shapes, the attribute accuracy of the upsampled images; with a grid of low-res | upsampled | true.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dalle2_jax import images
from dalle2_jax.data import degrade, pipeline
from dalle2_jax.evaluation import shapes_attributes
from dalle2_jax.models.unet import UNet
from dalle2_jax.parallel.mesh import ConfigError
from dalle2_jax.stages import image_diffusion
from dalle2_jax.stages.base import Stage
from dalle2_jax.stages.clip import to_model_images

EVAL_SPLITS = ("validation", "heldout")
GRID_EXAMPLES = 8  # (low-res, upsampled, true) triples in each eval grid


def model_config() -> ml_collections.ConfigDict:
    """The `model` section: the UNet (see `UNet.from_config`), no attention (fully convolutional)."""
    m = ml_collections.ConfigDict()
    m.image_size = 64  # output side at generation time; must equal data.resolution
    m.channels = 32  # base channels
    m.channel_mults = (1, 2)  # per resolution level
    m.num_res_blocks = 1  # per level on the down path
    m.attention_resolutions = ()  # must stay empty: the model runs at crop and at full size
    m.dropout = 0.0
    m.remat = "none"  # block rematerialisation (dalle2_jax.nn.remat)
    return m


def stage_sections() -> dict[str, ml_collections.ConfigDict]:
    upsampler = ml_collections.ConfigDict()
    upsampler.low_res_size = 32  # side of the conditioning image (the previous stage's output)
    upsampler.crop_size = 0  # training crop side (0 = model.image_size // 4, as in the paper)
    upsampler.degradation = "blur"  # conditioning augmentation: 'blur', 'bsr' or 'none'
    upsampler.eval_limit = 64  # examples per eval split that are upsampled
    return {"upsampler": upsampler, "diffusion": image_diffusion.diffusion_config("eps"),
            "sampling": image_diffusion.sampling_config(num_steps=25)}


def crop_size(config: ml_collections.ConfigDict) -> int:
    return config.upsampler.crop_size or config.model.image_size // 4


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Upsampler-specific checks; raises ConfigError naming the field."""
    size, low = config.model.image_size, config.upsampler.low_res_size
    if size != config.data.resolution:
        raise ConfigError(f"model.image_size={size} must equal data.resolution={config.data.resolution} "
                          "(the upsampler is trained on the dataset's images)")
    if config.model.attention_resolutions:
        raise ConfigError(f"model.attention_resolutions={tuple(config.model.attention_resolutions)}: must be empty "
                          "(an upsampler is applied fully convolutionally at a size other than its crops)")
    if not isinstance(low, int) or low <= 0 or low >= size or size % low:
        raise ConfigError(f"upsampler.low_res_size={low!r}: must be a positive divisor of model.image_size={size}, "
                          "smaller than it")
    crop, factor, levels = crop_size(config), size // low, 2 ** (len(config.model.channel_mults) - 1)
    if not 0 < crop <= size or crop % factor or crop % levels:
        raise ConfigError(f"upsampler.crop_size={config.upsampler.crop_size} (crop {crop} px): must be at most "
                          f"model.image_size={size} and divisible by the scale factor {factor} and by {levels} "
                          "(2**(len(model.channel_mults) - 1))")
    if config.upsampler.degradation not in degrade.DEGRADATIONS:
        raise ConfigError(f"upsampler.degradation={config.upsampler.degradation!r}: expected one of "
                          f"{sorted(degrade.DEGRADATIONS)}")
    if config.sampling.guidance_scale != 1.0:
        raise ConfigError(f"sampling.guidance_scale={config.sampling.guidance_scale}: upsamplers have no "
                          "null conditioning to guide with; use 1.0")
    if config.upsampler.eval_limit < 1:
        raise ConfigError(f"upsampler.eval_limit={config.upsampler.eval_limit}: must be >= 1")
    image_diffusion.validate_sections(config)


def unet_config(config: ml_collections.ConfigDict, image_size: int) -> ml_collections.ConfigDict:
    """`config.model` for `UNet.from_config`, at `image_size` (crop or full size)."""
    m = ml_collections.ConfigDict(config.model.to_dict())
    m.image_size = image_size
    m.low_res_channels = image_diffusion.IMAGE_CHANNELS
    m.out_channels = image_diffusion.ImageDiffusion(config.diffusion, config.sampling).out_channels
    return m


def _random_crops(rng: jax.Array, high: jax.Array, low: jax.Array, crop: int) -> tuple[jax.Array, jax.Array]:
    """Per-example random crops of `crop` px from `high` and the aligned region of `low`."""
    batch, size = high.shape[0], high.shape[1]
    factor = size // low.shape[1]
    positions = jax.random.randint(rng, (batch, 2), 0, (size - crop) // factor + 1)

    def one(h, lo, yx):
        hi_crop = jax.lax.dynamic_slice(h, (yx[0] * factor, yx[1] * factor, 0), (crop, crop, h.shape[-1]))
        lo_crop = jax.lax.dynamic_slice(lo, (yx[0], yx[1], 0), (crop // factor, crop // factor, lo.shape[-1]))
        return hi_crop, lo_crop

    return jax.vmap(one)(high, low, positions)


class UpsamplerStage(Stage):
    """Trains an upsampler UNet on random crops of the dataset's images."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        dtype = jnp.dtype(config.dtype)
        try:
            self.train_model = UNet.from_config(unet_config(config, crop_size(config)), dtype=dtype)
            self.model = UNet.from_config(unet_config(config, config.model.image_size), dtype=dtype)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.diffusion = image_diffusion.ImageDiffusion(config.diffusion, config.sampling)
        self.low_res_size = config.upsampler.low_res_size
        self.splits = EVAL_SPLITS if config.data.name == "shapes" else ("validation",)

    def init_params(self, rng: jax.Array) -> Any:
        crop = self.train_model.image_size
        low = crop * self.low_res_size // self.model.image_size
        return self.train_model.init(rng, jnp.zeros((1, crop, crop, 3)), jnp.zeros((1,), jnp.int32),
                                     low_res=jnp.zeros((1, low, low, 3)))["params"]

    def train_data(self):
        return pipeline.open_splits(self.config.data, ["train"])["train"], _image

    def low_res(self, images_uint8: jax.Array) -> jax.Array:
        """The conditioning image of full-size uint8 images: float [-1, 1] at `low_res_size`."""
        return degrade.downsample(to_model_images(images_uint8), self.low_res_size)

    def loss(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array, frozen: Any):
        del frozen
        crop_rng, degrade_rng, diffusion_rng, dropout_rng = jax.random.split(rng, 4)
        high, low = _random_crops(crop_rng, to_model_images(batch["image"]), self.low_res(batch["image"]),
                                  self.train_model.image_size)
        low = degrade.degrade(self.config.upsampler.degradation, degrade_rng, low)

        def apply(x_t, t):
            return self.train_model.apply({"params": params}, x_t, t, low_res=low, train=True,
                                          rngs={"dropout": dropout_rng})

        loss, metrics = self.diffusion.loss(apply, high, diffusion_rng)
        return jnp.mean(loss), metrics

    # --- sampling -----------------------------------------------------------------------------
    def generate(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array,
                 sampling: ml_collections.ConfigDict | None = None) -> jax.Array:
        """Images [B, R, R, 3] in [-1, 1] from batch["low_res"] (float [-1, 1], `low_res_size` px)."""
        low = batch["low_res"]
        size = self.model.image_size

        def cond_model_fn(x_t, t, use_condition):
            del use_condition  # nothing to drop: guidance is refused by validate_config
            return self.model.apply({"params": params}, x_t, t, low_res=low)

        return self.diffusion.sample(cond_model_fn, (low.shape[0], size, size, 3), rng, sampling, batch.get("x_T"))

    def _upsample(self, params: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
        rng = jax.random.fold_in(jax.random.key(self.config.seed), batch["index"][0])
        return self.generate(params, {"low_res": self.low_res(batch["image"])}, rng)

    # --- evaluation -----------------------------------------------------------------------------
    def evaluate(self, params: Any, infer) -> dict[str, Any]:
        result: dict[str, Any] = {}
        sources = pipeline.open_splits(self.config.data, list(self.splits))
        for split in self.splits:
            data = pipeline.load_all(sources[split], _image_and_labels, self.config.upsampler.eval_limit)
            inputs = {"image": data["image"], "index": np.arange(len(data["image"]), dtype=np.int32)}
            upsampled = infer(self._upsample, params, inputs)
            truth = to_model_images(data["image"])
            mse = np.mean(np.square(upsampled - np.asarray(truth)), axis=(1, 2, 3))
            result[f"{split}/psnr"] = float(np.mean(10 * np.log10(4.0 / np.maximum(mse, 1e-10))))
            upsampled = images.to_uint8(upsampled)
            if "combination" in data:
                result.update(shapes_attributes.score_combinations(upsampled, data["combination"], split))
            shown = min(GRID_EXAMPLES, len(upsampled))
            low = images.to_uint8(np.asarray(degrade.downsample(truth[:shown], self.low_res_size)))
            cells = [picture for k in range(shown) for picture in (low[k], upsampled[k], data["image"][k])]
            result[f"{split}_low_upsampled_true"] = images.grid(cells, columns=6)
        return result


def _image(example: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {"image": np.asarray(example["image"], np.uint8)}


def _image_and_labels(example: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = _image(example)
    if "combination" in example:
        out["combination"] = np.asarray(example["combination"], np.int32)
    return out
