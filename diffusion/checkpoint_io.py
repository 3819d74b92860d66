"""Checkpoint files of every model on the core (policies, image and text models): atomic writes, validated reads.

A checkpoint is a ``torch.save`` dict of tensors and plain Python values only (it loads with
``weights_only=True``): the run's full config, the model config (``policy_config`` for a policy,
``model_config`` otherwise), the state dicts, the training position and RNG states, and the latest metrics.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

CHECKPOINT_FORMAT = "diffusion-policy-stack/1"


class CheckpointError(RuntimeError):
    """A file that is not a usable checkpoint of this project; the message says why."""


def save_checkpoint(payload: dict, path: str | os.PathLike) -> Path:
    """Write ``payload`` to ``path`` atomically: a temp file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "wb") as handle:
        torch.save({"format": CHECKPOINT_FORMAT, **payload}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return path


def _unreadable_message(path: Path, error: Exception) -> str:
    """Why ``torch.load`` refused ``path``, in full sentences (torch's own text runs to a paragraph)."""
    if not zipfile.is_zipfile(path):
        return (f"checkpoint {path} is unreadable: it is not the zip archive torch.save writes, so it is "
                f"truncated (an interrupted copy), corrupted or another kind of file. Copy it again from its "
                f"source, or write it again with train.py or python -m dpstack.policy.checkpoint")
    if "Weights only load failed" in str(error):
        return (f"checkpoint {path} is a torch file holding Python objects beyond tensors and plain values, "
                f"so this project did not write it (its checkpoints load with weights_only=True)")
    return (f"checkpoint {path} is a damaged torch archive ({type(error).__name__}). Copy it again from its "
            f"source, or write it again with train.py or python -m dpstack.policy.checkpoint")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by ``save_checkpoint``; raises ``CheckpointError`` naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(_unreadable_message(path, error)) from error
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path} is not a checkpoint of this project (format {found!r}, "
                              f"expected {CHECKPOINT_FORMAT!r})")
    for key in ("config", "state_dicts"):
        if key not in payload:
            raise CheckpointError(f"checkpoint {path} lacks {key!r}; it was not written by train.py")
    if "policy_config" not in payload and "model_config" not in payload:
        raise CheckpointError(f"checkpoint {path} lacks its model config; it was not written by train.py")
    return payload


def load_model(path: str | os.PathLike, recipe: str, build, device: str | torch.device = "cpu",
               use_ema: bool = True, train_hint: str = ""):
    """``build(model_config)`` with the checkpoint's EMA (or raw) weights, in eval mode on ``device``; a
    checkpoint of another recipe is refused, naming what it holds."""
    payload = load_checkpoint(path, map_location=device)
    found = payload["config"].get("recipe", "policy")
    if found != recipe or "model_config" not in payload:
        raise CheckpointError(f"checkpoint {path} holds a model of recipe {found!r}, not {recipe!r} {train_hint}".rstrip())
    return load_weights(build(payload["model_config"]), payload, path, use_ema).to(device).eval()


def model_weights(payload: dict, use_ema: bool = True) -> dict:
    """The payload's EMA state dict (when present and ``use_ema``), else its raw one."""
    states = payload["state_dicts"]
    return states["ema_model"] if use_ema and states.get("ema_model") is not None else states["model"]


def load_weights(model: torch.nn.Module, payload: dict, path, use_ema: bool = True) -> torch.nn.Module:
    """``model`` with the payload's EMA weights (when present and ``use_ema``), else its raw weights."""
    weights = model_weights(payload, use_ema)
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint {path} does not match its own model config: {error}") from error
    return model
