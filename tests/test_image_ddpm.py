"""The image DDPM on the shared core: MNIST loading, the exact bound, L_hybrid's gradient routing, samplers,
training through the one workspace (exact resume), the CLIs and the errors a user can hit."""
import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from dpstack.datasets import mnist
from dpstack.diffusion.checkpoint_io import CheckpointError, load_checkpoint
from dpstack.generative.checkpoint import load_image_model
from dpstack.generative.classifier import frechet_distance
from dpstack.generative.image_diffusion import ImageDiffusion, ImageDiffusionConfig
from dpstack.generative.unet2d import UNet2DConfig
from dpstack.training.config import ConfigError, validate_config
from dpstack.training.workspace import TrainingWorkspace

REPO = Path(__file__).resolve().parent.parent
TINY_UNET = UNet2DConfig(base_channels=8, channel_mults=(1, 2), attention_resolutions=(14,), attention_heads=2,
                         dropout=0.0, groups=4, num_classes=10)
TINY_RUN = ["training.num_epochs=2", "task.max_train_items=48", "task.max_val_items=16", "training.batch_size=16",
            "training.lr_warmup_steps=2", "training.num_threads=1", "training.progress=false", "training.device=cpu",
            "model.num_train_timesteps=20", "model.unet.base_channels=8", "model.unet.channel_mults=[1,2]",
            "model.unet.attention_resolutions=[14]", "model.unet.groups=4", "model.unet.attention_heads=2",
            "eval.n_bpd=4", "eval.n_samples=20", "eval.steps=4", "training.rollout_every=2", "logging.mode=disabled"]


def tiny_model(**changes) -> ImageDiffusion:
    torch.manual_seed(0)
    unet = UNet2DConfig(**{**TINY_UNET.to_dict(), **changes.pop("unet", {})})
    return ImageDiffusion(ImageDiffusionConfig(num_train_timesteps=changes.pop("T", 50), unet=unet, **changes))


def run_config(*extra):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose(config_name="mnist_ddpm", overrides=TINY_RUN + list(extra))
    validate_config(cfg)
    return cfg


# --- data ---------------------------------------------------------------------------------------------
def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">i4").tobytes()
    raw = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(raw)
    return path


def test_read_idx_round_trips_and_refuses_truncated_files(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    assert np.array_equal(mnist.read_idx(write_idx(tmp_path / "a.gz", images)), images)
    assert np.array_equal(mnist.read_idx(write_idx(tmp_path / "b", images, compress=False)), images)
    (tmp_path / "c").write_bytes((tmp_path / "b").read_bytes()[:-10])
    with pytest.raises(mnist.MNISTDataError, match="truncated"):
        mnist.read_idx(tmp_path / "c")
    (tmp_path / "d").write_bytes(b"\x12\x34\x56\x78")
    with pytest.raises(mnist.MNISTDataError, match="not an IDX file"):
        mnist.read_idx(tmp_path / "d")


def test_fixed_split_of_the_test_digits(mnist_data):
    train_images, train_labels = mnist.load_split("train")
    held_images, held_labels = mnist.load_split("heldout")
    assert train_images.shape == (9000, 28, 28) and held_images.shape == (1000, 28, 28)
    assert train_images.dtype == np.uint8 and set(np.unique(held_labels)) == set(range(10))
    seen = {image.tobytes() for image in train_images}
    assert sum(image.tobytes() in seen for image in held_images) < 5  # disjoint (MNIST has a few duplicates)
    again, _ = mnist.load_split("heldout")
    assert np.array_equal(again, held_images)


def test_split_schemes_are_explicit(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "mnist"
    folder.mkdir()
    write_idx(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (1012, 28, 28)))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, (1012,)))
    with pytest.raises(mnist.MNISTDataError, match="needs the 60k training files"):
        mnist.load_split("train", tmp_path, "official")
    write_idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (30, 28, 28)))
    write_idx(folder / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, (30,)))
    assert mnist.load_split("train", tmp_path, "official")[0].shape[0] == 30
    assert mnist.load_split("heldout", tmp_path, "official")[0].shape[0] == 1012
    assert mnist.load_split("heldout", tmp_path)[0].shape[0] == 1000  # the default ignores the training files


def test_missing_mnist_says_where_it_looked_and_how_to_fetch(tmp_path):
    with pytest.raises(mnist.MNISTDataError) as error:
        mnist.MNISTDataset("train", tmp_path)
    assert str(tmp_path / "mnist") in str(error.value)
    assert "python -m dpstack.datasets.download mnist" in str(error.value)


def test_model_space_is_the_256_levels_of_the_8bit_images():
    levels = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16)
    x = mnist.to_model_space(levels)
    assert x.shape == (1, 1, 16, 16) and x.min() == -1 and x.max() == 1
    assert torch.equal(mnist.to_uint8(x)[:, 0], levels)


# --- the model and the bound --------------------------------------------------------------------------
def test_untrained_bound_is_finite_and_made_of_its_terms(mnist_data):
    model = tiny_model(unet={"num_classes": None}, T=50, beta_schedule="squaredcos_cap_v2")
    digits = mnist.to_model_space(mnist.MNISTDataset("train", max_items=8).images)
    bound = model.bits_per_dim(digits, generator=torch.Generator().manual_seed(0))
    assert bound["terms"].shape == (8, 50) and torch.isfinite(bound["total"]).all()
    assert bound["prior"].max() < 0.01  # L_T is negligible: q(x_T | x_0) is nearly N(0, I)
    assert torch.allclose(bound["total"], bound["prior"] + bound["terms"].sum(1))
    assert 2 < float(bound["total"].mean()) < 12  # an untrained ε̂ = 0 network: several bits per pixel


def test_bound_in_pieces_through_a_ledger_equals_one_run(tmp_path, mnist_data):
    from dpstack.generative.evaluate import bits_per_dim

    model = tiny_model(unet={"num_classes": None}, T=10)
    model.eval()
    digits = mnist.to_model_space(mnist.MNISTDataset("train", max_items=6).images)
    whole = bits_per_dim(model, digits, batch_size=2, seed=3, progress=False)
    ledger = tmp_path / "bpd.json"
    bits_per_dim(model, digits[:4], batch_size=2, seed=3, progress=False, ledger=ledger, fingerprint="m")
    calls = []
    original = model.bits_per_dim
    model.bits_per_dim = lambda x, generator: calls.append(len(x)) or original(x, generator=generator)
    pieces = bits_per_dim(model, digits, batch_size=2, seed=3, progress=False, ledger=ledger, fingerprint="m")
    assert calls == [2]  # only the batch the first run did not reach
    assert pieces == pytest.approx(whole, rel=1e-12) and pieces["n_images"] == 6
    with pytest.raises(ValueError, match="belongs to another evaluation"):
        bits_per_dim(model, digits, batch_size=2, seed=3, progress=False, ledger=ledger, fingerprint="other")


def test_the_ledger_fingerprint_names_the_weights_and_config_not_the_file():
    from dpstack.generative.evaluate import model_fingerprint

    first, retrained = tiny_model(), tiny_model()  # the same seed: bit-identical weights, as a re-run gives
    assert model_fingerprint(first, "test_split") == model_fingerprint(retrained, "test_split")
    assert model_fingerprint(first, "test_split") != model_fingerprint(first, "official")
    assert model_fingerprint(first) != model_fingerprint(tiny_model(beta_schedule="squaredcos_cap_v2"))
    with torch.no_grad():
        next(retrained.parameters()).view(-1)[0] += 1e-6
    assert model_fingerprint(first) != model_fingerprint(retrained)


def test_a_model_overfit_to_a_few_digits_gives_them_fewer_bits(mnist_data):
    model = tiny_model(unet={"num_classes": None, "base_channels": 16, "groups": 8, "attention_resolutions": ()},
                       T=100)
    # Four digits: the held-out gap is ~1.6 bits/dim after 300 steps (eight gave ~0.5, too near the bar to
    # survive a different CPU's float rounding).
    train = mnist.to_model_space(mnist.MNISTDataset("train", max_items=4).images)
    held = mnist.to_model_space(mnist.MNISTDataset("heldout", max_items=8).images)
    untrained = float(model.bits_per_dim(train, generator=torch.Generator().manual_seed(1))["total"].mean())
    optimizer = torch.optim.Adam(model.parameters(), 2e-3)
    for step in range(300):
        loss = model.compute_loss({"image": train, "label": None}, torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    on_train = float(model.bits_per_dim(train, generator=torch.Generator().manual_seed(1))["total"].mean())
    on_held = float(model.bits_per_dim(held, generator=torch.Generator().manual_seed(1))["total"].mean())
    assert on_train < untrained - 1 and on_train < on_held - 0.5, (untrained, on_train, on_held)


def test_hybrid_variance_head_learns_from_the_vlb_only():
    model = tiny_model(objective="hybrid", unet={"learn_variance": True, "num_classes": None}, T=20)
    batch = {"image": torch.rand(4, 1, 28, 28) * 2 - 1, "label": None}
    output = {}
    model.unet.register_forward_hook(lambda module, inputs, out: output.__setitem__("y", out))

    def output_gradient(vlb_weight):
        model.config.vlb_weight = vlb_weight
        output.clear()
        y = model.compute_loss(batch, torch.Generator().manual_seed(0))
        return torch.autograd.grad(y, output["y"])[0]

    without_vlb, with_vlb = output_gradient(0.0), output_gradient(1e-3)
    assert torch.count_nonzero(without_vlb[:, 1:]) == 0  # L_simple never reaches the variance channel
    assert torch.count_nonzero(with_vlb[:, 1:]) > 0
    assert torch.equal(without_vlb[:, :1], with_vlb[:, :1])  # the mean is frozen inside L_vlb


def test_config_refuses_inconsistent_objectives():
    with pytest.raises(ValueError, match="learn_variance must be true exactly when"):
        ImageDiffusionConfig(objective="hybrid")
    with pytest.raises(ValueError, match="fixed_small"):
        ImageDiffusionConfig(variance_type="learned_range")
    with pytest.raises(ValueError, match="unknown beta schedule"):
        ImageDiffusionConfig(beta_schedule="cosine")


def test_wrong_image_size_is_refused():
    with pytest.raises(ValueError, match=r"this model takes \(B, 1, 28, 28\)"):
        tiny_model().compute_loss({"image": torch.zeros(2, 1, 32, 32), "label": torch.zeros(2, dtype=torch.long)})


def test_ddim_eta0_is_deterministic_given_x_T_and_samplers_accept_labels():
    model = tiny_model().eval()
    x_T = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    first = model.sample(3, "ddim", 5, 0.0, generator=torch.Generator().manual_seed(1), noise=x_T.clone())
    second = model.sample(3, "ddim", 5, 0.0, generator=torch.Generator().manual_seed(2), noise=x_T.clone())
    assert torch.equal(first, second)
    stochastic = model.sample(3, "ddim", 5, 1.0, generator=torch.Generator().manual_seed(2), noise=x_T.clone())
    assert not torch.equal(first, stochastic)
    for sampler in ("ddpm", "ddim"):
        images = model.sample(2, sampler, 4, labels=torch.tensor([3, 7]), guidance_scale=3.0)
        assert images.shape == (2, 1, 28, 28) and images.abs().max() <= 1
    with pytest.raises(ValueError, match="class labels must be in 0..9"):
        model.sample(1, "ddim", 2, labels=torch.tensor([10]))
    with pytest.raises(ValueError, match="unconditional"):
        tiny_model(unet={"num_classes": None}).sample(1, "ddim", 2, labels=torch.tensor([1]))


def test_ddpm_variance_is_a_sampling_choice_whose_noise_has_the_stated_std():
    """One respaced step t → t' adds σ z with σ² = β = 1 − ᾱ_t/ᾱ_t' (fixed_large) or β̃ = β (1 − ᾱ_t')/(1 − ᾱ_t)."""
    model = tiny_model().eval()
    x_T = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    after_first_step = {}
    for variance in ("fixed_small", "fixed_large"):
        chain = []  # every step's x_{t'}
        model.sample(2, "ddpm", 3, noise=x_T.clone(), generator=torch.Generator().manual_seed(1), variance=variance,
                     on_step=lambda t, x, output: chain.append(output.prev_sample.clone()))
        after_first_step[variance] = chain[0]
    scheduler = model.make_scheduler("ddpm", "fixed_large")
    scheduler.set_timesteps(3)
    t, t_next = (int(step) for step in scheduler.timesteps[:2])
    alpha_bar = scheduler.alphas_cumprod.double()
    beta = 1 - alpha_bar[t] / alpha_bar[t_next]
    beta_tilde = beta * (1 - alpha_bar[t_next]) / (1 - alpha_bar[t])
    z = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))  # the first step's draw
    difference = after_first_step["fixed_large"] - after_first_step["fixed_small"]
    assert torch.allclose(difference, float(beta.sqrt() - beta_tilde.sqrt()) * z, atol=1e-5)
    with pytest.raises(ValueError, match="objective=hybrid"):
        model.sample(1, "ddpm", 2, variance="learned")
    with pytest.raises(ValueError, match="DDIM's σ comes from η"):
        model.sample(1, "ddim", 2, variance="fixed_large")
    hybrid = tiny_model(objective="hybrid", unet={"learn_variance": True}).eval()
    for variance in (None, "learned", "fixed_small", "fixed_large"):
        assert hybrid.sample(2, "ddpm", 3, variance=variance).shape == (2, 1, 28, 28)


def test_guidance_scale_interpolates_conditional_and_unconditional_predictions():
    model = tiny_model().eval()
    for parameter in model.parameters():  # a non-trivial network (the zero-initialised head would give 0)
        torch.nn.init.normal_(parameter, std=0.05)
    x, t, labels = torch.randn(2, 1, 28, 28), torch.tensor(10), torch.tensor([1, 2])
    conditional, unconditional = model.unet(x, t, labels), model.unet(x, t, None)
    assert torch.allclose(model.denoiser(labels, 0.0)(x, t), unconditional, atol=1e-5)
    assert torch.allclose(model.denoiser(labels, 1.0)(x, t), conditional, atol=1e-5)
    assert torch.allclose(model.denoiser(labels, 3.0)(x, t), unconditional + 3 * (conditional - unconditional),
                          atol=1e-4)


def test_frechet_distance_of_shifted_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-8)
    assert frechet_distance(a, a + [2.0, 0, 0]) == pytest.approx(4.0, rel=1e-6)
    assert frechet_distance(a, a * 2) == pytest.approx(3.0, rel=0.05)  # tr(Σ + 4Σ − 2·2Σ) = tr Σ ≈ 3


# --- training through the workspace, the CLIs ---------------------------------------------------------
def test_fid_ledger_in_pieces_equals_one_run(tmp_path):
    from dpstack.generative.classifier import MNISTClassifier
    from dpstack.generative.fid_ledger import FIDLedger, cell_key
    torch.manual_seed(1)
    model, classifier = tiny_model(T=10), MNISTClassifier()
    reference = np.random.default_rng(0).normal(size=(64, 128))
    key = cell_key("ddim", 1.0, 5)
    whole = FIDLedger(None, "m", seed=3, chunk_size=4)
    whole.fill(model, classifier, "ddim", 1.0, 5, 10)
    pieces = FIDLedger(tmp_path / "sweep.npz", "m", seed=3, chunk_size=4)
    pieces.fill(model, classifier, "ddim", 1.0, 5, 10, deadline=0.0)  # past its deadline: nothing drawn
    assert pieces.cell(key).n == 0
    pieces.fill(model, classifier, "ddim", 1.0, 5, 4)                  # the first chunk only, then a new process
    reopened = FIDLedger(tmp_path / "sweep.npz", "m", seed=3, chunk_size=4)
    assert reopened.cell(key).n == 4
    reopened.fill(model, classifier, "ddim", 1.0, 5, 10)
    assert reopened.cell(key).n == 10
    assert reopened.frechet_distance(key, reference) == whole.frechet_distance(key, reference)
    with pytest.raises(ValueError, match="another sweep"):
        FIDLedger(tmp_path / "sweep.npz", "other model", seed=3, chunk_size=4)
    small, large = cell_key("ddpm", 0.0, 5), cell_key("ddpm", 0.0, 5, "fixed_large")
    whole.fill(model, classifier, "ddpm", 0.0, 5, 4)
    whole.fill(model, classifier, "ddpm", 0.0, 5, 4, variance="fixed_large")  # a cell of its own, other samples
    assert small != large and whole.cell(small).n == whole.cell(large).n == 4
    assert whole.cell(small).first_chunk_sha != whole.cell(large).first_chunk_sha


def test_fid_ledger_shared_by_two_processes_loses_no_chunk(tmp_path):
    """Two sweeps on one ledger saving in turn keep each other's cells, and a stale copy of a cell never
    overwrites a longer one: the longer copy of the same deterministic chunks wins."""
    from dpstack.generative.classifier import MNISTClassifier
    from dpstack.generative.fid_ledger import FIDLedger, cell_key
    torch.manual_seed(1)
    model, classifier = tiny_model(T=10), MNISTClassifier()
    path, eta0, eta1 = tmp_path / "sweep.npz", cell_key("ddim", 0.0, 5), cell_key("ddim", 1.0, 5)
    first, second = (FIDLedger(path, "m", seed=3, chunk_size=4) for _ in range(2))
    first.fill(model, classifier, "ddim", 0.0, 5, 4)
    second.fill(model, classifier, "ddim", 1.0, 5, 4)    # saved after first's save: keeps first's cell
    first.fill(model, classifier, "ddim", 0.0, 5, 8)     # first saves again after second: keeps second's cell
    second.fill(model, classifier, "ddim", 0.0, 5, 8)    # the same cell, already complete in the file: no draw
    assert second.cell(eta0).n == 8
    stale = FIDLedger(path, "m", seed=3, chunk_size=4)  # holds η = 1 at 4 samples
    first.fill(model, classifier, "ddim", 1.0, 5, 8)     # extends second's η = 1 cell from its 4 samples
    stale.fill(model, classifier, "ddpm", 0.0, 5, 4)     # its save must not put η = 1 back to 4,
    second.fill(model, classifier, "ddim", 0.5, 5, 4)    # nor must the save of the process that drew those 4
    stored = FIDLedger(path, "m", seed=3, chunk_size=4)
    assert stored.cell(eta0).n == 8 and stored.cell(eta1).n == 8 and stored.cell(cell_key("ddpm", 0.0, 5)).n == 4
    one_run = FIDLedger(None, "m", seed=3, chunk_size=4)
    one_run.fill(model, classifier, "ddim", 1.0, 5, 8)
    assert np.array_equal(stored.cell(eta1).outer, one_run.cell(eta1).outer)


def test_fid_moments_give_numpy_covariance():
    from dpstack.generative.fid_ledger import CellMoments
    features = np.random.default_rng(0).normal(size=(50, 128)) * 3 + 1
    cell = CellMoments()
    cell.add(features[:20])
    cell.add(features[20:])
    mu, cov = cell.gaussian()
    assert np.allclose(mu, features.mean(0)) and np.allclose(cov, np.cov(features, rowvar=False))


def test_train_resume_exactly_and_evaluate(tmp_path, mnist_data):
    straight = TrainingWorkspace(run_config(), tmp_path / "straight").run()
    assert np.isfinite(straight["test/bits_per_dim"]) and "test/conditional_class_accuracy" in straight
    assert (tmp_path / "straight" / "media" / "samples_epoch_0002.png").exists()
    TrainingWorkspace(run_config("training.max_train_steps=4"), tmp_path / "resumed").run()  # stops mid-epoch 1
    TrainingWorkspace(run_config(), tmp_path / "resumed").run()
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "latest.ckpt")["state_dicts"]
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "latest.ckpt")["state_dicts"]
    for key in ("model", "ema_model"):
        assert all(torch.equal(a[key][name], b[key][name]) for name in a[key])
    with pytest.raises(CheckpointError, match="different model config"):
        TrainingWorkspace(run_config("training.num_epochs=3", "model.objective=hybrid",
                                     "model.unet.learn_variance=true"), tmp_path / "straight").run()


def run(module, *arguments, cwd):
    return subprocess.run([sys.executable, "-m", module, *arguments], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, mnist_data):
    out = tmp_path_factory.mktemp("mnist_run")
    TrainingWorkspace(run_config("training.num_epochs=1", "training.rollout_every=0"), out).run()
    return out / "checkpoints" / "latest.ckpt"


def test_sample_cli_writes_a_png_of_the_right_size(tmp_path, tiny_checkpoint):
    import imageio.v3 as iio

    result = run("dpstack.generative.sample", str(tiny_checkpoint), "--steps", "3", "--n", "20", "--label", "7",
                 "--guidance", "2", "--out", str(tmp_path / "grid.png"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    image = iio.imread(tmp_path / "grid.png")
    assert image.shape == ((2 * 30 - 2) * 2, (10 * 30 - 2) * 2) and image.dtype == np.uint8
    result = run("dpstack.generative.sample", str(tiny_checkpoint), "--sampler", "ddpm", "--variance", "fixed_large",
                 "--steps", "3", "--n", "10", "--scale", "1", "--out", str(tmp_path / "large.png"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert iio.imread(tmp_path / "large.png").shape == (28, 10 * 30 - 2)  # one row: digits 0–9


def test_cli_refuses_other_checkpoints_and_bad_labels(tmp_path, tiny_checkpoint):
    result = run("dpstack.generative.sample", str(REPO / "pretrained" / "pusht_lowdim_small.ckpt"), cwd=tmp_path)
    assert result.returncode == 2 and "recipe 'policy', not 'image_diffusion'" in result.stderr
    result = run("dpstack.generative.sample", str(tmp_path / "missing.ckpt"), cwd=tmp_path)
    assert result.returncode == 2 and "does not exist" in result.stderr
    result = run("dpstack.generative.sample", str(tiny_checkpoint), "--label", "12", "--steps", "2", cwd=tmp_path)
    assert result.returncode == 2 and "class labels must be in 0..9" in result.stderr
    result = run("dpstack.generative.sample", str(tiny_checkpoint), "--sampler", "ddpm", "--variance", "learned",
                 "--steps", "2", cwd=tmp_path)
    assert result.returncode == 2 and "needs a model trained with objective=hybrid" in result.stderr
    with pytest.raises(CheckpointError, match="not a policy"):
        from dpstack.policy.checkpoint import load_policy

        load_policy(tiny_checkpoint)


def test_pictures_of_the_reverse_process_and_the_samplers(tmp_path, tiny_checkpoint):
    import imageio.v3 as iio

    from dpstack.generative.pictures import save_reverse_process, save_sampler_comparison, strip_timesteps

    model = load_image_model(tiny_checkpoint)
    strip, gif = save_reverse_process(model, tmp_path, n=2)
    shown = strip_timesteps(model.config.num_train_timesteps)
    assert shown == [19, 15, 11, 8, 6, 4, 2, 1, 0]
    assert iio.imread(strip).shape == ((4 * 30 - 2) * 2, (len(shown) * 30 - 2) * 2)
    assert iio.imread(gif, index=None).shape[0] >= 2
    comparison = iio.imread(save_sampler_comparison(model, tmp_path / "cmp.png", n=2, steps=(2, 4)))
    assert comparison.shape == ((6 * 30 - 2) * 2, (2 * 30 - 2) * 2)


def test_bad_recipe_config_is_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match="learn_variance"):
        run_config("model.objective=hybrid")
    with pytest.raises(ConfigError, match="unknown key model.unet.base_channel"):
        run_config("+model.unet.base_channel=4")


# --- training hygiene (any recipe; the image DDPM is the cheapest to run) -----------------------------
def test_non_finite_loss_stops_with_a_clear_error_and_no_bad_checkpoint(tmp_path, mnist_data, monkeypatch):
    from dpstack.training.workspace import TrainingDivergedError

    compute_loss, calls = ImageDiffusion.compute_loss, []

    def nan_from_the_fifth_step(self, batch, generator=None):  # epoch 0 (3 steps) is saved first
        calls.append(1)
        loss = compute_loss(self, batch, generator)
        return loss * float("nan") if len(calls) >= 5 and self.training else loss

    monkeypatch.setattr(ImageDiffusion, "compute_loss", nan_from_the_fifth_step)
    workspace = TrainingWorkspace(run_config("training.rollout_every=0", "training.val_every=0"), tmp_path)
    with pytest.raises(TrainingDivergedError, match=r"step 5 \(epoch 1\): the loss is nan; nothing was saved from "
                                                    r"it and .*latest.ckpt \(written before this step\) is intact"):
        workspace.run()
    saved = load_checkpoint(tmp_path / "checkpoints" / "latest.ckpt")
    assert saved["training_state"]["global_step"] == 3
    assert all(torch.isfinite(value).all() for value in saved["state_dicts"]["model"].values())
    with pytest.raises(TrainingDivergedError, match="no checkpoint was written"):
        TrainingWorkspace(run_config("training.lr=1e30", "training.rollout_every=0"), tmp_path / "fresh").run()
    assert not (tmp_path / "fresh" / "checkpoints" / "latest.ckpt").exists()


def test_gradient_clipping_bounds_the_gradient_the_optimizer_sees(tmp_path, mnist_data):
    import json

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    seen = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    handle = register_optimizer_step_pre_hook(record)
    try:
        TrainingWorkspace(run_config("training.num_epochs=1", "training.rollout_every=0", "training.log_every=1",
                                     "training.grad_clip_norm=0.001"), tmp_path).run()
    finally:
        handle.remove()
    lines = [json.loads(line) for line in (tmp_path / "logs.json.txt").read_text().splitlines()]
    logged = [line["grad_norm"] for line in lines if "grad_norm" in line]
    assert len(seen) == len(logged) == 3
    assert all(norm <= 0.001 * (1 + 1e-5) for norm in seen) and all(norm > 0.001 for norm in logged)
    with pytest.raises(ConfigError, match="grad_clip_norm must be null"):
        run_config("training.grad_clip_norm=-1")


def test_sigterm_saves_a_checkpoint_that_resumes(tmp_path, mnist_data):
    import signal
    import time

    overrides = [o for o in TINY_RUN if not o.startswith("training.num_epochs")]
    command = [sys.executable, str(REPO / "train.py"), "--config-name=mnist_ddpm", *overrides,
               "training.num_epochs=1000", "training.rollout_every=0", "training.log_every=1",
               f"hydra.run.dir={tmp_path}"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "logs.json.txt"
    deadline = time.monotonic() + 120
    while (not log.exists() or log.read_text().count("\n") < 2) and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "SIGTERM: stopped at step" in stdout
    saved = load_checkpoint(tmp_path / "checkpoints" / "latest.ckpt")["training_state"]
    assert saved["global_step"] >= 2 and "host_rng" in saved
    resumed = subprocess.run([*command[:-4], f"training.num_epochs={saved['epoch'] + 1}", "training.rollout_every=0",
                              f"hydra.run.dir={tmp_path}"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed {tmp_path / 'checkpoints' / 'latest.ckpt'} at epoch {saved['epoch']}" in resumed.stdout


def test_a_failing_evaluation_keeps_the_epochs_training(tmp_path, mnist_data, monkeypatch):
    from dpstack.training.recipes import ImageDiffusionRecipe

    def broken(*args, **kwargs):
        raise RuntimeError("evaluation crashed")

    monkeypatch.setattr(ImageDiffusionRecipe, "evaluate", broken)
    with pytest.raises(RuntimeError, match="evaluation crashed"):
        TrainingWorkspace(run_config("training.num_epochs=1", "training.rollout_every=1"), tmp_path).run()
    saved = load_checkpoint(tmp_path / "checkpoints" / "latest.ckpt")["training_state"]
    assert saved["global_step"] == 3 and saved["epoch"] == 1  # resumable after the crash, nothing retrained


def test_the_shipped_checkpoint_samples_out_of_the_box(tmp_path):
    """``python -m dpstack.generative.sample`` with no checkpoint argument loads pretrained/mnist_ddpm.ckpt."""
    import imageio.v3 as iio

    result = run("dpstack.generative.sample", "--steps", "2", "--n", "10", "--label", "3", "--guidance", "2",
                 "--out", str(tmp_path / "threes.png"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert iio.imread(tmp_path / "threes.png").shape == ((30 - 2) * 2, (10 * 30 - 2) * 2)
    model = load_image_model(REPO / "pretrained" / "mnist_ddpm.ckpt")
    assert model.config.unet.num_classes == 10 and sum(p.numel() for p in model.parameters()) < 1e6
