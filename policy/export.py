"""Export a policy for runtimes without this project: ONNX (onnxruntime) or TorchScript.

    python -m dpstack.policy.export CKPT --format onnx [--out policy.onnx] [--opset 18]
    python -m dpstack.policy.export CKPT --format torchscript [--out policy.pt]

The exported graph is the whole chunk computation with the DDIM (η = 0) chain unrolled:

    (observation steps, ξ) → x_K = τ ξ → normalise → encode → K × [ε̂ = U-Net(x_k, k, c); x_{k'} = DDIM(x_k, ε̂)]
    → unnormalise → (action (B, Ta, Da), action_pred (B, T, Da))

(τ: the config's ``init_noise_scale``, 1 unless set) or, for a distilled policy (``sampler: consistency``,
n calls), the consistency chain, whose re-noising draws come in as a second input ``step_noise``
(B, n − 1, T, Da) when n > 1:

    x̂_0 = clip(f_θ(x_{t_i}, t_i, c));  x_{t_{i+1}} = √ᾱ x̂_0 + √(1 − ᾱ) z_i

so that, given the same noise, it computes what ``policy.predict_action`` does. The policy
config travels inside the file (ONNX metadata / TorchScript extra file). ``ExportedPolicy`` (what
``load_policy`` returns for such a file) has the policy interface (``config``, ``predict_action(obs,
generator)``): it draws x_K with torch and runs the graph, so the evaluation runner and the robot node take
it like a checkpoint.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from dpstack.diffusion.checkpoint_io import CheckpointError
from dpstack.diffusion.noise import randn
from dpstack.policy.diffusion_policy import DiffusionPolicyConfig, DiffusionUnetPolicy

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
CONFIG_KEY = "dpstack_policy_config"
OUTPUT_NAMES = ("action", "action_pred")
IMAGE_SIZE = 96  # Push-T camera observations are 96 × 96


def exported_format(path: str | os.PathLike) -> str | None:
    """``onnx`` or ``torchscript`` for a file this module writes, judged by content; None for anything else
    (a training checkpoint is also a zip, but without TorchScript's ``constants.pkl``)."""
    path = Path(path)
    if not path.is_file():
        return None
    if path.suffix == ".onnx":
        return "onnx"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(name.endswith("/constants.pkl") for name in archive.namelist()):
                return "torchscript"
    return None


def observation_names(config: DiffusionPolicyConfig) -> tuple[str, ...]:
    return ("obs",) if config.obs_type == "lowdim" else ("image", "agent_pos")


class SamplingGraph(nn.Module):
    """``forward(*observations, initial_noise)``: the chunk computation of the module docstring."""

    def __init__(self, policy: DiffusionUnetPolicy) -> None:
        super().__init__()
        if policy.config.sampler == "ddpm":
            raise ValueError("export unrolls the deterministic DDIM (η = 0) chain or a consistency chain; this "
                             "policy samples with 'ddpm': export a copy made with "
                             "python -m dpstack.policy.checkpoint SRC DST --sampler ddim")
        self.policy = policy
        self.names = observation_names(policy.config)
        self.eval()

    def forward(self, *inputs: torch.Tensor):
        observations, (sample, *step_noise) = inputs[:len(self.names)], inputs[len(self.names):]
        policy, scheduler = self.policy, self.policy.inference_scheduler
        sample = policy.config.init_noise_scale * sample  # A^K = τ ξ
        cond = policy._global_condition(dict(zip(self.names, observations)) if len(self.names) > 1
                                        else {"obs": observations[0]})
        for i, t in enumerate(scheduler.timesteps.tolist()):
            model_output = policy.model(sample, torch.tensor(t, device=sample.device), cond)
            if policy.config.sampler == "consistency":
                noise = step_noise[0][:, i] if i < len(scheduler.timesteps) - 1 else None
                sample = scheduler.step(model_output, t, sample, noise=noise).prev_sample
            else:
                sample = scheduler.step(model_output, t, sample, eta=0.0).prev_sample
        action_pred = policy.normalizer["action"].unnormalize(sample)
        start = policy.config.n_obs_steps - 1
        return action_pred[:, start:start + policy.config.n_action_steps], action_pred


def noise_names(config: DiffusionPolicyConfig) -> tuple[str, ...]:
    """The graph's noise inputs: x_K, and the re-noising draws of a consistency chain of more than one step."""
    return ("initial_noise", "step_noise") if renoising_steps(config) else ("initial_noise",)


def renoising_steps(config: DiffusionPolicyConfig) -> int:
    return config.num_inference_steps - 1 if config.sampler == "consistency" else 0


def example_inputs(config: DiffusionPolicyConfig, batch: int = 1) -> tuple[torch.Tensor, ...]:
    steps = config.n_obs_steps
    if config.obs_type == "lowdim":
        observations = (torch.zeros(batch, steps, config.obs_dim),)
    else:
        observations = (torch.zeros(batch, steps, 3, IMAGE_SIZE, IMAGE_SIZE), torch.zeros(batch, steps, 2))
    noise = [torch.zeros(batch, config.horizon, config.action_dim)]
    if renoising_steps(config):
        noise.append(torch.zeros(batch, renoising_steps(config), config.horizon, config.action_dim))
    return (*observations, *noise)


def export(policy: DiffusionUnetPolicy, path: str | os.PathLike, fmt: str = "onnx", opset: int = 18) -> Path:
    """Write the unrolled graph of ``policy`` to ``path`` in ``fmt`` (``onnx`` or ``torchscript``)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
    graph, path = SamplingGraph(policy), Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    inputs = example_inputs(policy.config)
    config_json = json.dumps(policy.config.to_dict())
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "torchscript":
            traced = torch.jit.freeze(torch.jit.trace(graph, inputs))
            torch.jit.save(traced, str(path), _extra_files={CONFIG_KEY: config_json})
            return path
        import onnx

        names = [*graph.names, *noise_names(policy.config)]
        torch.onnx.export(graph, inputs, str(path), input_names=names, output_names=list(OUTPUT_NAMES),
                          opset_version=opset, dynamo=False,
                          dynamic_axes={name: {0: "batch"} for name in names + list(OUTPUT_NAMES)})
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {CONFIG_KEY: config_json})
    onnx.save(model, str(path))
    return path


class ExportedPolicy:
    """An exported graph behind the policy interface: ``config``, ``predict_action(obs, generator)``, ``reset()``."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"exported policy {path} does not exist")
        self.path, self.format = path, exported_format(path)
        if self.format is None:
            raise CheckpointError(f"{path} is neither an ONNX file nor a TorchScript archive")
        try:
            config = self._open(path, threads)
        except Exception as error:  # noqa: BLE001 - onnxruntime and torch.jit raise their own error types
            raise CheckpointError(f"{path} could not be opened as an exported policy: {error}") from error
        if not config:
            raise CheckpointError(f"{path} carries no policy config: it was not written by dpstack.policy.export")
        self.config = DiffusionPolicyConfig.from_dict(json.loads(config))
        self.device = torch.device("cpu")

    def _open(self, path: Path, threads: int | None) -> str:
        """Load the graph; returns the policy config it carries (JSON, empty if none)."""
        if self.format == "onnx":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            return self.session.get_modelmeta().custom_metadata_map.get(CONFIG_KEY, "")
        extra = {CONFIG_KEY: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still supported
            self.module = torch.jit.load(str(path), _extra_files=extra, map_location="cpu")
        return extra[CONFIG_KEY]

    def reset(self) -> None:
        """Stateless between calls, like the policy."""

    def reconfigure(self, **changes) -> None:
        """Inference settings are part of the exported graph: only the values it was exported with pass."""
        changed = {key: value for key, value in changes.items() if getattr(self.config, key) != value}
        if changed:
            raise ValueError(f"{self.path} was exported with {({k: getattr(self.config, k) for k in changed})}; "
                             f"export the checkpoint again with {changed}")

    def optimize_for_inference(self) -> "ExportedPolicy":
        """Already a compiled graph."""
        return self

    def predict_action(self, obs: dict, generator=None) -> dict[str, torch.Tensor]:
        """As ``DiffusionUnetPolicy.predict_action``: x_K ~ N(0, I) from ``generator``, then the graph."""
        names = observation_names(self.config)
        observations = [torch.as_tensor(obs[name], dtype=torch.float32) for name in names]
        batch = observations[0].shape[0]
        shape = (batch, self.config.horizon, self.config.action_dim)
        noise = [randn(shape, generator, device="cpu")]  # drawn in the order the policy draws them
        if renoising_steps(self.config):
            noise.append(torch.stack([randn(shape, generator, device="cpu")
                                      for _ in range(renoising_steps(self.config))], dim=1))
        if self.format == "onnx":
            feeds = {name: value.numpy() for name, value in zip([*names, *noise_names(self.config)],
                                                                [*observations, *noise])}
            action, action_pred = (torch.from_numpy(x) for x in self.session.run(list(OUTPUT_NAMES), feeds))
        else:
            with torch.no_grad():
                action, action_pred = self.module(*observations, *noise)
        return {"action": action, "action_pred": action_pred}


def main(argv: list[str] | None = None) -> int:
    from dpstack.policy.checkpoint import load_policy

    parser = argparse.ArgumentParser(prog="python -m dpstack.policy.export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--format", choices=sorted(FORMATS), default="onnx")
    parser.add_argument("--out", type=Path, help="destination (default: the checkpoint's name with .onnx / .pt)")
    parser.add_argument("--opset", type=int, default=18)
    args = parser.parse_args(argv)
    out = args.out or args.checkpoint.with_suffix(FORMATS[args.format])
    try:
        policy = load_policy(args.checkpoint)
        written = export(policy, out, args.format, args.opset)
        exported = ExportedPolicy(written)
    except (CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    inputs = example_inputs(policy.config, batch=4)[:len(observation_names(policy.config))]
    obs = dict(zip(observation_names(policy.config), (torch.randn_like(x) for x in inputs)))
    started = time.perf_counter()
    ours = exported.predict_action(obs, torch.Generator().manual_seed(0))["action_pred"]
    seconds = time.perf_counter() - started
    reference = policy.predict_action(obs, torch.Generator().manual_seed(0))["action_pred"]
    print(f"wrote {written} ({written.stat().st_size / 1e6:.1f} MB); on 4 random observations the exported "
          f"policy's actions differ from the PyTorch policy's by at most {float((ours - reference).abs().max()):.2e} "
          f"(env units); {seconds * 1000:.0f} ms for the batch of 4")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
