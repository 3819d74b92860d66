"""Latent text-to-image diffusion: the KL autoencoder, prompts and their tokenizer, cross-attention,
classifier-free guidance, the two-stage training run through the one workspace, and the CLIs."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from dpstack.diffusion.checkpoint_io import CheckpointError, load_checkpoint, save_checkpoint
from dpstack.generative.autoencoder import AutoencoderConfig, KLAutoencoder, latent_scale
from dpstack.generative.checkpoint import export_model, load_text_to_image
from dpstack.generative.latent_diffusion import LatentTextToImage, TextToImageConfig
from dpstack.generative.prompts import (
    ADJECTIVES,
    HELDOUT_TEMPLATES,
    SEEN_TEMPLATES,
    PromptTokenizer,
    describe,
    ink_thresholds,
    stroke_weight_classes,
)
from dpstack.generative.transformer import TransformerConfig
from dpstack.generative.unet2d import UNet2D, UNet2DConfig
from dpstack.training.config import ConfigError, validate_config
from dpstack.training.workspace import TrainingWorkspace

REPO = Path(__file__).resolve().parent.parent
TINY_RUN = ["task.max_train_items=64", "task.max_val_items=16", "training.num_epochs=1", "training.batch_size=32",
            "training.lr_warmup_steps=2", "training.num_threads=1", "training.progress=false", "training.device=cpu",
            "training.rollout_every=1", "logging.mode=disabled", "model.num_train_timesteps=20",
            "model.unet.base_channels=16", "eval.n_samples=10", "eval.steps=2",
            "autoencoder.model.channels=[8,8,8]", "autoencoder.training.num_epochs=1",
            "autoencoder.training.rollout_every=1"]


def run_config(*extra):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose(config_name="mnist_txt2img", overrides=TINY_RUN + list(extra))
    validate_config(cfg)
    return cfg


def tiny_model(dropout: float = 0.1) -> LatentTextToImage:
    torch.manual_seed(0)
    config = TextToImageConfig(
        autoencoder=AutoencoderConfig(channels=(8, 8, 8)), num_train_timesteps=20, condition_dropout=dropout,
        text_encoder=TransformerConfig(vocab_size=PromptTokenizer().vocab_size, block_size=41, n_layer=1, n_head=2,
                                       d_model=16, dropout=0.0),
        unet=UNet2DConfig(in_channels=4, base_channels=8, channel_mults=(1, 2), attention_resolutions=(7, 4),
                          attention_heads=2, groups=4, dropout=0.0, context_dim=16),
        ink_thresholds=[[-0.85, -0.75]] * 10)
    model = LatentTextToImage(config)
    for parameter in model.unet.parameters():  # zero-initialised outputs would make every branch equal
        torch.nn.init.normal_(parameter, std=0.05)
    return model.eval()


# --- autoencoder --------------------------------------------------------------------------------------
def test_autoencoder_round_trips_shapes_and_its_loss_and_kl_are_finite():
    autoencoder = KLAutoencoder(AutoencoderConfig(channels=(8, 16, 16)))
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    mean, log_variance = autoencoder.encode(x)
    assert mean.shape == log_variance.shape == (5, 4, 7, 7) and autoencoder.config.latent_size == 7
    assert autoencoder.decode(mean).shape == x.shape
    kl = autoencoder.kl_to_standard_normal(mean, log_variance)
    assert kl.shape == (5,) and torch.isfinite(kl).all() and (kl >= 0).all()
    # KL(N(0, 1) ‖ N(0, 1)) = 0 and KL(N(1, 1) ‖ N(0, 1)) = ½ per dimension
    assert autoencoder.kl_to_standard_normal(torch.zeros(1, 3), torch.zeros(1, 3)).item() == 0.0
    assert autoencoder.kl_to_standard_normal(torch.ones(1, 3), torch.zeros(1, 3)).item() == pytest.approx(1.5)
    loss = autoencoder.compute_loss({"image": x})
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in autoencoder.parameters())
    assert latent_scale(autoencoder, x) > 0
    with pytest.raises(ValueError, match="this autoencoder takes"):
        autoencoder.encode(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="not divisible"):
        AutoencoderConfig(image_size=30)


# --- prompts ------------------------------------------------------------------------------------------
def test_prompts_name_the_digit_and_held_out_paraphrases_are_never_trained_on():
    rng = np.random.default_rng(0)
    assert not set(SEEN_TEMPLATES) & set(HELDOUT_TEMPLATES)
    for label in range(10):
        for weight in (-1, 0, 1):
            for split in ("seen", "heldout"):
                prompt = describe(label, weight, rng, split)
                words = set(prompt.replace(",", "").split())
                assert {str(label), "zero one two three four five six seven eight nine".split()[label]} & words
                for other in (-1, 0, 1):  # an adjective, when present, is the image's true stroke weight
                    if other != weight:
                        assert not words & set(ADJECTIVES[other])


def test_stroke_weight_classes_split_each_class_at_its_percentiles():
    ink = torch.linspace(-1, 1, 100).repeat(2)
    labels = torch.arange(2).repeat_interleave(100)
    thresholds = torch.tensor(ink_thresholds(ink, labels, num_classes=2))
    weights = stroke_weight_classes(ink, labels, thresholds)
    assert weights.tolist().count(-1) == 60 and weights.tolist().count(1) == 60  # 30 % thin, 30 % thick a class


def test_tokenizer_pads_to_one_length_and_refuses_bad_prompts_clearly():
    tokenizer = PromptTokenizer(max_length=12)
    tokens = tokenizer.encode(["A Seven", "", "7"])
    assert tokens.shape == (3, 13) and (tokens[:, 0] == 1).all()
    assert (tokens[1, 1:] == 0).all()  # the empty prompt ∅: BOS and padding only
    assert torch.equal(tokens[0], tokenizer.encode(["a seven"])[0])  # case-insensitive
    with pytest.raises(ValueError, match=r"outside the tokenizer's alphabet: \['é'\]"):
        tokenizer.encode(["a seven é"])
    with pytest.raises(ValueError, match="at most 12 are allowed"):
        tokenizer.encode(["a very long prompt indeed"])


# --- model --------------------------------------------------------------------------------------------
def test_unet_cross_attends_and_handles_odd_latent_sizes():
    unet = UNet2D(UNet2DConfig(in_channels=4, base_channels=8, channel_mults=(1, 2), attention_resolutions=(7, 4),
                               attention_heads=2, groups=4, context_dim=6), image_size=7)
    assert sum(not isinstance(m, torch.nn.Identity) for level in unet.down for m in level.cross_attentions) == 2
    for parameter in unet.parameters():
        torch.nn.init.normal_(parameter, std=0.1)
    z, t = torch.randn(2, 4, 7, 7), torch.tensor([3, 5])
    a, b = torch.randn(2, 5, 6), torch.randn(2, 5, 6)
    out = unet(z, t, context=a)
    assert out.shape == z.shape and not torch.allclose(out, unet(z, t, context=b))
    with pytest.raises(ValueError, match="context must be given"):
        unet(z, t)


def test_guidance_zero_is_unconditional_and_one_is_conditional():
    model = tiny_model()
    z, t = torch.randn(3, 4, 7, 7), torch.tensor(7)
    prompts = ["a seven", "the digit 2", "nine"]
    with torch.no_grad():
        conditional = model.unet(z, t, context=model.encode_prompts(prompts))
        unconditional = model.unet(z, t, context=model.encode_prompts([""] * 3))
        assert not torch.allclose(conditional, unconditional)
        torch.testing.assert_close(model.denoiser(prompts, 0.0)(z, t), unconditional)
        torch.testing.assert_close(model.denoiser(prompts, 1.0)(z, t), conditional)
        torch.testing.assert_close(model.denoiser(prompts, 3.0)(z, t), unconditional + 3 * (conditional - unconditional))


def test_condition_dropout_rate_holds():
    model = tiny_model(dropout=0.25)
    images, labels = torch.rand(4000, 1, 28, 28) * 2 - 1, torch.arange(4000) % 10
    prompts = model.training_prompts(images, labels, torch.Generator().manual_seed(0))
    dropped = sum(prompt == "" for prompt in prompts) / len(prompts)
    assert abs(dropped - 0.25) < 3 * (0.25 * 0.75 / 4000) ** 0.5
    assert model.training_prompts(images[:50], labels[:50], torch.Generator().manual_seed(1)) == \
        model.training_prompts(images[:50], labels[:50], torch.Generator().manual_seed(1))


def test_sampling_is_deterministic_for_ddim_eta_zero_and_decodes_digits():
    model = tiny_model()
    images = model.sample(["a seven", ""], 3.0, "ddim", 3, generator=torch.Generator().manual_seed(0))
    again = model.sample(["a seven", ""], 3.0, "ddim", 3, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 1, 28, 28) and torch.equal(images, again) and images.abs().max() <= 1
    assert model.sample(["x"], 2.0, "ddpm", 2).shape == (1, 1, 28, 28)
    with pytest.raises(ValueError, match="steps must be in"):
        model.sample(["x"], steps=50)
    with pytest.raises(ValueError, match="outside the tokenizer's alphabet"):
        model.sample(["a sevén"], steps=2)


# --- training through the workspace, the CLIs ----------------------------------------------------------
def test_config_errors_name_the_stage_and_the_derived_keys():
    with pytest.raises(ConfigError, match=r"autoencoder stage: unknown key model\.chanels \(did you mean model\.channels\?\)"):
        run_config("+autoencoder.model.chanels=[8]")
    with pytest.raises(ConfigError, match="model.latent_scale is set from the trained autoencoder"):
        run_config("+model.latent_scale=0.5")
    with pytest.raises(ConfigError, match="unet.in_channels=3 must equal autoencoder.latent_channels=4"):
        run_config("model.unet.in_channels=3")
    with pytest.raises(ConfigError, match="eval.sampler must be ddim or ddpm, got 'ddmi'"):
        run_config("eval.sampler=ddmi")
    with pytest.raises(ConfigError, match="autoencoder.recipe must be autoencoder"):
        run_config("autoencoder.recipe=image_diffusion")
    with pytest.raises(ConfigError, match="autoencoder_checkpoint=missing.ckpt does not exist"):
        run_config("autoencoder_checkpoint=missing.ckpt")
    with pytest.raises(ConfigError, match="max_prompt_length=12 is shorter than the longest"):
        run_config("model.max_prompt_length=12", "model.text_encoder.block_size=13")
    with pytest.raises(ConfigError, match="unknown key autoencoder_checkpoint"):
        with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
            validate_config(compose(config_name="mnist_ddpm", overrides=["+autoencoder_checkpoint=x"]))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, mnist_data):
    out = tmp_path_factory.mktemp("txt2img_run")
    metrics = TrainingWorkspace(run_config(), out).run()
    return out, metrics


def test_two_stage_run_trains_the_autoencoder_first_and_resumes_without_retraining(tiny_run):
    out, metrics = tiny_run
    stage = out / "autoencoder" / "checkpoints" / "latest.ckpt"
    assert stage.exists() and (out / "autoencoder" / "media" / "reconstructions_epoch_0001.png").exists()
    assert load_checkpoint(stage)["config"]["recipe"] == "autoencoder"
    assert {"test/seen_prompt_accuracy", "test/heldout_prompt_accuracy", "test/seen_classifier_fid"} <= set(metrics)
    assert (out / "media" / "guidance_epoch_0001.png").exists()
    model = load_text_to_image(out / "checkpoints" / "latest.ckpt")
    autoencoder_weights = load_checkpoint(stage)["state_dicts"]["ema_model"]
    for key, value in autoencoder_weights.items():  # the frozen autoencoder travels inside the model
        torch.testing.assert_close(model.autoencoder.state_dict()[key], value)
    assert model.config.latent_scale > 0 and len(model.config.ink_thresholds) == 10
    modified = stage.stat().st_mtime_ns
    assert TrainingWorkspace(run_config(), out).run() == {}  # both runs finished: nothing retrains
    assert stage.stat().st_mtime_ns == modified
    with pytest.raises(CheckpointError, match="different autoencoder_checkpoint"):
        TrainingWorkspace(run_config("training.num_epochs=2", f"autoencoder_checkpoint={stage}"), out).run()
    other = KLAutoencoder(AutoencoderConfig(channels=(8, 8, 8)))  # the stage's file replaced by another autoencoder
    payload = load_checkpoint(stage)
    payload["state_dicts"]["ema_model"] = other.state_dict()
    save_checkpoint(payload, stage)
    with pytest.raises(CheckpointError, match="trained over another autoencoder"):
        TrainingWorkspace(run_config("training.num_epochs=2"), out).run()


def test_txt2img_cli_writes_a_png_and_refuses_bad_prompts(tmp_path, tiny_run):
    import imageio.v3 as iio

    out, _ = tiny_run
    slim = export_model(out / "checkpoints" / "latest.ckpt", tmp_path / "slim.ckpt")

    def cli(*arguments):
        return subprocess.run([sys.executable, "-m", "dpstack.generative.txt2img", *arguments,
                               "--checkpoint", str(slim)], cwd=tmp_path, capture_output=True, text=True, timeout=300)

    result = cli("a handwritten seven", "--steps", "3", "--n", "3", "--out", str(tmp_path / "seven.png"))
    assert result.returncode == 0, result.stderr
    image = iio.imread(tmp_path / "seven.png")
    assert image.shape == ((28) * 4, (3 * 30 - 2) * 4) and image.dtype == np.uint8
    result = cli("a sevén", "--steps", "2")
    assert result.returncode == 2 and "outside the tokenizer's alphabet" in result.stderr
    result = cli("x" * 41, "--steps", "2")
    assert result.returncode == 2 and "at most 40 are allowed" in result.stderr
    assert cli("", "--steps", "2", "--n", "1", "--out", str(tmp_path / "any.png")).returncode == 0  # ∅: unconditional


def test_the_shipped_model_draws_the_asked_for_digit_out_of_the_box(tmp_path):
    """``python -m dpstack.generative.txt2img`` with no --checkpoint loads pretrained/mnist_txt2img.ckpt, and
    the MNIST classifier recognises the prompted digit in the shipped model's guided samples."""
    import imageio.v3 as iio

    from dpstack.generative.classifier import load_classifier, predict_features

    result = subprocess.run([sys.executable, "-m", "dpstack.generative.txt2img", "a handwritten seven", "--steps",
                             "5", "--n", "2", "--out", str(tmp_path / "seven.png")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert iio.imread(tmp_path / "seven.png").shape == (28 * 4, (2 * 30 - 2) * 4)
    model = load_text_to_image(REPO / "pretrained" / "mnist_txt2img.ckpt")
    prompts = [f"a handwritten {digit}" for digit in range(10)] * 3
    images = model.sample(prompts, 3.0, "ddim", 10, generator=torch.Generator().manual_seed(0))
    _, predicted = predict_features(load_classifier()[0], images)
    assert (predicted == torch.arange(10).repeat(3)).float().mean() >= 0.8
