"""Pretrained CLIP import (dalle2_jax.convert_clip): parity with OpenCLIP on the fixtures of
tests/fixtures/make_clip_fixtures.py, refusals, the command line, and the stages reading it.
None of these needs torch (one optional test reads a torch file when torch is installed)."""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dalle2_jax import config_schema, convert_clip
from dalle2_jax.models import clip_archs
from dalle2_jax.models.clip import CLIP, count_params
from dalle2_jax.parallel.mesh import ConfigError
from dalle2_jax.stages.clip import to_model_images
from dalle2_jax.stages.frozen_clip import FrozenClip
from tests.tiny import ROOT, load_config

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "clip")
MERGES = os.path.join(FIXTURES, "bpe_simple_vocab_16e6.txt.gz")
# OpenAI's layout, quick GELU, float16; OpenCLIP's, GELU, float32; Hugging Face's, quick GELU, bfloat16
FIXTURE_MODELS = ("vit_b32_openai", "vit_l14_openclip", "vit_b16_hf")


def fixture(name: str, suffix: str) -> str:
    return os.path.join(FIXTURES, name + suffix)


def relative_error(ours, reference) -> float:
    return float(np.max(np.abs(np.asarray(ours) - reference)) / np.max(np.abs(reference)))


@functools.cache
def converted(name: str):
    arch = clip_archs.load_arch(fixture(name, ".json"))
    params = convert_clip.convert(convert_clip.read_checkpoint(fixture(name, ".safetensors")), arch, name)
    return CLIP.from_config(clip_archs.model_config(arch)), params


@pytest.mark.parametrize("name", FIXTURE_MODELS)
def test_embeddings_and_logits_match_open_clip(name):
    model, params = converted(name)
    reference = np.load(fixture(name, "_outputs.npz"))
    images = to_model_images(jnp.asarray(reference["images"]), clip_archs.OPENAI_IMAGE_MEAN,
                             clip_archs.OPENAI_IMAGE_STD)
    tokens = jnp.asarray(reference["tokens"])
    apply = jax.jit(model.apply, static_argnames="method")
    image_embed = apply({"params": params}, images, method=CLIP.encode_image)
    text_embed, encodings, _ = apply({"params": params}, tokens, method=CLIP.encode_text)
    out = apply({"params": params}, images, tokens)
    logits = out["logit_scale"] * out["image_embed"] @ out["text_embed"].T
    errors = {"image_embed": relative_error(image_embed, reference["image_embed"]),
              "text_embed": relative_error(text_embed, reference["text_embed"]),
              "text_encodings": relative_error(encodings, reference["text_encodings"]),
              "logits": relative_error(logits, reference["logits"])}
    print(name, errors)
    assert max(errors.values()) <= 1e-4, errors
    np.testing.assert_allclose(out["logit_scale"], reference["logit_scale"], rtol=1e-6)


def test_text_mask_runs_to_the_end_token_although_pad_is_a_real_token():
    model, params = converted("vit_b32_openai")
    tokens = np.zeros((2, 77), np.int32)
    tokens[0, :5] = [49406, 320, 0, 0, 49407]  # "a !!": id 0 is "!" before the end token
    _, _, mask = jax.jit(functools.partial(model.apply, method=CLIP.encode_text))({"params": params}, tokens)
    np.testing.assert_array_equal(mask[0], np.arange(77) < 5)
    assert not mask[1].any()  # a row without an end token: the padding id marks padding


def _state(name):
    return convert_clip.read_checkpoint(fixture(name, ".safetensors"))


def test_refusals_name_the_key():
    arch = clip_archs.load_arch(fixture("vit_b32_openai", ".json"))
    tensors = _state("vit_b32_openai")
    tensors["visual.attnpool.k_proj.weight"] = tensors.pop("visual.ln_post.weight")
    with pytest.raises(convert_clip.ConversionError,
                       match=r"^checkpoint key 'visual.attnpool.k_proj.weight' has no place in --arch=b32 \(1 such "
                             r"keys; 1 expected keys missing: visual.ln_post.weight\)"):
        convert_clip.convert(tensors, arch, "b32")
    tensors = _state("vit_b32_openai")
    del tensors["transformer.resblocks.1.mlp.c_proj.bias"]
    with pytest.raises(convert_clip.ConversionError, match="lacks 1 keys .* 'transformer.resblocks.1.mlp.c_proj.bias'"):
        convert_clip.convert(tensors, arch, "b32")
    with pytest.raises(convert_clip.ConversionError,
                       match=r"^checkpoint key 'visual.conv1.weight' of shape \[48, 3, 14, 14\] does not fit "
                             r"--arch=b32 \(vision/patch_embedding/kernel expects \(3072, 64\)\)"):
        convert_clip.convert(_state("vit_l14_openclip"), arch, "b32")
    tensors = _state("vit_b32_openai")
    tensors["input_resolution"] = np.array(336)
    with pytest.raises(convert_clip.ConversionError, match=r"input_resolution=336 does not match .*image_size=224"):
        convert_clip.convert(tensors, arch, "b32")


def test_hugging_face_files_may_hold_position_ids():
    arch = clip_archs.load_arch(fixture("vit_b16_hf", ".json"))
    tensors = _state("vit_b16_hf")
    tensors["text_model.embeddings.position_ids"] = np.arange(77)[None]
    params = convert_clip.convert(tensors, arch, "b16")
    np.testing.assert_array_equal(params["text"]["position_embedding"],
                                  tensors["text_model.embeddings.position_embedding.weight"])


def test_arch_presets_and_unsupported_layouts(tmp_path):
    assert clip_archs.load_arch("ViT-L-14")["quick_gelu"] is False
    assert clip_archs.load_arch("ViT-L-14-quickgelu")["quick_gelu"] is True
    with pytest.raises(ValueError, match="--arch='ViT-X-1' is unknown; known: ViT-B-32, ViT-B-32-quickgelu"):
        clip_archs.load_arch("ViT-X-1")
    (tmp_path / "rn50.json").write_text(json.dumps({"embed_dim": 1024, "vision_cfg": {"layers": [3, 4, 6, 3]},
                                                     "text_cfg": {}}))
    with pytest.raises(ValueError, match="a ResNet image tower is not supported"):
        clip_archs.load_arch(str(tmp_path / "rn50.json"))
    pooled = {**clip_archs.ARCHS["ViT-B-32"], "vision_cfg": {**clip_archs.ARCHS["ViT-B-32"]["vision_cfg"],
                                                              "attentional_pool": True}}
    (tmp_path / "coca.json").write_text(json.dumps(pooled))
    with pytest.raises(ValueError, match=r"vision_cfg.attentional_pool=True is not supported"):
        clip_archs.load_arch(str(tmp_path / "coca.json"))


# Parameter counts of OpenCLIP 3.3.0's models of these names (its model_configs/*.json, counted
# with torch on the meta device); the presets equal those configs field for field.
@pytest.mark.parametrize("arch, count", [("ViT-B-32", 151_277_313), ("ViT-B-16", 149_620_737),
                                         ("ViT-L-14", 427_616_513), ("ViT-L-14-336", 427_944_193),
                                         ("ViT-H-14", 986_109_441), ("ViT-bigG-14", 2_539_567_105)])
def test_arch_presets_have_the_published_sizes(arch, count):
    assert count_params(clip_archs.model_config(clip_archs.load_arch(arch))) == count


def run_convert(*flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", "dalle2_jax.convert_clip", *flags], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def converted_dir(tmp_path_factory):
    """The OpenAI-layout fixture converted by the command line."""
    out = tmp_path_factory.mktemp("pretrained") / "vit_b32"
    result = run_convert(f"--checkpoint={fixture('vit_b32_openai', '.safetensors')}",
                         f"--arch={fixture('vit_b32_openai', '.json')}", f"--out={out}", f"--bpe_path={MERGES}",
                         "--dtype=float32")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "quick_gelu" in result.stdout and f"--config.clip.pretrained={out}" in result.stdout
    return str(out)


def test_command_line_output_is_a_frozen_clip_matching_open_clip(converted_dir):
    clip = FrozenClip.load(converted_dir, "clip.pretrained")
    assert clip.tokenizer.eot_id == 49407 and clip.config.model.activation == "quick_gelu"
    reference = np.load(fixture("vit_b32_openai", "_outputs.npz"))
    image = jax.jit(clip.encode_images)(clip.params, reference["images"])  # uint8 in, OpenAI's normalisation
    norm = np.linalg.norm(reference["image_embed"], axis=-1, keepdims=True)
    assert relative_error(image, reference["image_embed"] / norm) <= 1e-4
    text = jax.jit(clip.encode_texts)(clip.params, {"tokens": reference["tokens"]})
    norm = np.linalg.norm(reference["text_embed"], axis=-1, keepdims=True)
    assert relative_error(text["text_embed"], reference["text_embed"] / norm) <= 1e-4


def test_scan_layers_conversion_is_the_same_clip_in_the_scanned_layout(tmp_path):
    out = tmp_path / "vit_b32_scanned"
    convert_clip.convert_checkpoint(fixture("vit_b32_openai", ".safetensors"), fixture("vit_b32_openai", ".json"),
                                    str(out), MERGES, scan_layers=True)
    clip = FrozenClip.load(str(out), "clip.pretrained")
    assert clip.config.model.scan_layers
    blocks = clip.params["vision"]["transformer"]["blocks"]
    assert set(clip.params["vision"]["transformer"]) == {"blocks"} and blocks["ln_attn"]["scale"].shape == (2, 64)
    reference = np.load(fixture("vit_b32_openai", "_outputs.npz"))
    image = jax.jit(clip.encode_images)(clip.params, reference["images"])
    norm = np.linalg.norm(reference["image_embed"], axis=-1, keepdims=True)
    assert relative_error(image, reference["image_embed"] / norm) <= 1e-4
    text = jax.jit(clip.encode_texts)(clip.params, {"tokens": reference["tokens"]})
    norm = np.linalg.norm(reference["text_embed"], axis=-1, keepdims=True)
    assert relative_error(text["text_embed"], reference["text_embed"] / norm) <= 1e-4


def test_command_line_refusals_are_one_line(converted_dir, tmp_path):
    b32 = [f"--arch={fixture('vit_b32_openai', '.json')}", f"--bpe_path={MERGES}"]
    cases = [
        ([f"--checkpoint={tmp_path}/none.safetensors", *b32, f"--out={tmp_path}/a"], "none.safetensors: no such file"),
        ([f"--checkpoint={fixture('vit_b32_openai', '.safetensors')}", "--arch=ViT-L-14", f"--bpe_path={MERGES}",
          f"--out={tmp_path}/b"], "checkpoint lacks 384 keys of --arch=ViT-L-14 in OpenAI/OpenCLIP's key layout"),
        ([f"--checkpoint={fixture('vit_l14_openclip', '.safetensors')}",
          f"--arch={fixture('vit_l14_openclip', '.json')}", f"--out={tmp_path}/c"], "text_cfg.vocab_size=1000"),
        ([f"--checkpoint={fixture('vit_b32_openai', '.safetensors')}", *b32, f"--out={converted_dir}"],
         "exists and is not empty (pass --overwrite"),
        ([f"--checkpoint={fixture('vit_b32_openai', '.safetensors')}", *b32, f"--out={ROOT}/tests", "--overwrite"],
         "is not a converted CLIP (no pretrained.json): not replacing it"),
    ]
    for flags, message in cases:
        result = run_convert(*flags)
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0 and lines[-1].startswith("error: ") and message in lines[-1], result.stderr
    assert not os.path.exists(f"{tmp_path}/b")


@pytest.mark.parametrize("path", ["configs/shapes/prior.py", "configs/shapes/decoder.py"])
def test_prior_and_decoder_configs_build_on_the_converted_clip(converted_dir, path):
    from dalle2_jax.stages import make_stage

    config = load_config(path)
    config.clip.pretrained = converted_dir  # used instead of the config's clip.workdir
    config_schema.validate(config, num_devices=1, num_processes=1)
    stage = make_stage(config)
    assert (stage.clip.embed_dim, stage.clip.context_length, stage.clip.tokenizer.vocab_size) == (32, 77, 49408)
    if config.stage == "prior":
        assert stage.embeddings_dir == f"{converted_dir}/embeddings"
    assert jax.tree.leaves(jax.eval_shape(stage.init_params, jax.random.key(0)))
    config.clip.pretrained = os.path.dirname(converted_dir)
    with pytest.raises(ConfigError, match=r"^clip.pretrained='.*': not a converted CLIP \(no pretrained.json\)"):
        config_schema.validate(config, num_devices=1, num_processes=1)


def test_torch_checkpoints_are_read_with_weights_only(tmp_path):
    torch = pytest.importorskip("torch")
    tensors = _state("vit_l14_openclip")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": torch.from_numpy(v) for k, v in tensors.items()}},
               tmp_path / "epoch_3.pt")
    assert convert_clip.read_checkpoint(str(tmp_path / "epoch_3.pt")).keys() == tensors.keys()


@pytest.mark.parametrize("path", ["configs/paper/prior_vit_l14.py", "configs/paper/decoder_vit_l14.py"])
def test_vit_l14_paper_configs_validate_and_build(path, tmp_path):
    """Karlo's setting: the paper's prior / decoder on an imported ViT-L/14 (embedding 768), built
    through eval_shape on the sizes the converter writes for that arch (no weights needed)."""
    from types import SimpleNamespace

    from dalle2_jax.data.clip_bpe import ClipBpeTokenizer
    from dalle2_jax.models import prior, unet
    from dalle2_jax.stages import decoder

    clip_config = convert_clip.pretrained_config(clip_archs.load_arch("ViT-L-14-quickgelu"))
    (tmp_path / "config.json").write_text(clip_config.to_json())
    (tmp_path / "pretrained.json").write_text("{}")
    config = load_config(path)
    assert config.clip.pretrained and not config.clip.workdir
    config.clip.pretrained = str(tmp_path)
    config_schema.validate(config, num_devices=64, num_processes=16)
    embed_dim, text_width = clip_config.model.embed_dim, clip_config.model.text.width
    assert (embed_dim, text_width, clip_config.tokenizer.context_length) == (768, 768, 77)
    if config.stage == "prior":
        cfg = ml_collections.ConfigDict(config.model.to_dict())
        cfg.embed_dim, cfg.text_width, cfg.max_text_length = embed_dim, text_width, 77
        count = prior.count_params(cfg)
        assert 1.0e9 <= count < 1.3e9  # prior_1b.py's transformer; only the CLIP-facing layers shrink
    else:
        clip = SimpleNamespace(embed_dim=embed_dim, context_length=77,
                               tokenizer=SimpleNamespace(vocab_size=ClipBpeTokenizer.vocab_size,
                                                         pad_id=ClipBpeTokenizer.pad_id,
                                                         eot_id=ClipBpeTokenizer.eot_id))
        count = unet.count_params(decoder.unet_config(config, clip))
        assert abs(count - 3.5e9) / 3.5e9 < 0.15
    print(f"{path}: {count:,} parameters")


@pytest.mark.slow
def test_prior_trains_on_the_converted_clip(converted_dir, shapes_data_dir, tmp_path):
    """The prior stage end to end (CLIP BPE tokens of the captions, 32 px images resized to the
    converted CLIP's 224 px with OpenAI's statistics, embeddings, training, evaluation)."""
    from dalle2_jax.stages import make_stage
    from dalle2_jax.training.loop import train_and_evaluate
    from tests.tiny import TINY_CLIP_OVERRIDES, set_fields

    config = load_config("configs/shapes/prior.py")
    tiny_data = {k: v for k, v in TINY_CLIP_OVERRIDES.items() if k.startswith("data.")}
    set_fields(config, {**tiny_data, "data.data_dir": shapes_data_dir, "clip.pretrained": converted_dir,
                        "prior.embeddings_dir": str(tmp_path / "embeddings"), "prior.eval_limit": 16,
                        "model.width": 32, "model.depth": 1, "model.num_heads": 2, "sampling.num_steps": 4,
                        "train.num_steps": 2, "train.log_every": 1, "train.eval_every": 100,
                        "train.checkpoint_every": 100})
    _, metrics = train_and_evaluate(config, str(tmp_path / "prior"), make_stage(config))
    assert np.isfinite(metrics["eval/validation/cosine_prior"])
