"""The Res-UNet factory (smp ``Unet``), safe weight loading and encoder freezing.

Weights are one of:
- ``"imagenet"``: smp's own pretrained encoder download (needs access to the Hugging Face
  hub or a filled cache; fails at once with a clear message when neither is there);
- ``"none"``: random initialisation (training from scratch);
- a local path or URI of a checkpoint: a whole-model state dict, an encoder-only state dict
  (smp encoder keys, or torchvision/timm ResNet keys with 3-channel ``conv1``, which is
  adapted to the model's input channels the way smp adapts ImageNet weights), or a dict
  holding one of
  those under ``"state_dict"``/``"model"``. ``.safetensors`` files are read with safetensors,
  anything else with ``torch.load(weights_only=True)``: a pickle carrying code is refused.
"""

from __future__ import annotations

import io
import os
import pickle
import socket
from collections.abc import Mapping

import segmentation_models_pytorch as smp
import torch

from stroke_ray.config import ModelConfig, is_scratch
from stroke_ray.io import ImageReadError, StorageOptions, read_bytes

__all__ = [
    "ModelConfig",
    "WeightsError",
    "build_model",
    "load_state_dict",
    "load_weights",
    "set_encoder_trainable",
]

NUM_CLASSES = 2
_HUB_HOST = "huggingface.co"
_HUB_CONNECT_TIMEOUT_S = 3.0
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


class WeightsError(ValueError):
    """Weights cannot be obtained or do not fit the model."""


def _hub_cached(encoder_name: str) -> bool:
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub"
    )
    return os.path.isdir(os.path.join(cache, f"models--smp-hub--{encoder_name}.imagenet"))


def _hub_reachable() -> bool:
    """Whether a TCP connection to the hub opens quickly (assumed so behind a proxy)."""
    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return True
    try:
        socket.create_connection((_HUB_HOST, 443), timeout=_HUB_CONNECT_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def _imagenet_unavailable(encoder_name: str, reason: str) -> WeightsError:
    return WeightsError(
        f"ImageNet weights for {encoder_name} cannot be downloaded ({reason}). Provide them "
        f"as a file instead: --weights /path/{encoder_name}_imagenet.pth (a torchvision or "
        f"timm {encoder_name} state dict, or an smp encoder state dict; local path or s3:// "
        f"URI), or fill the Hugging Face cache with smp-hub/{encoder_name}.imagenet"
    )


def _unet(config: ModelConfig, encoder_weights: str | None) -> smp.Unet:
    return smp.Unet(
        encoder_name=config.encoder_name,
        encoder_depth=config.encoder_depth,
        encoder_weights=encoder_weights,
        decoder_channels=config.decoder_channels,
        in_channels=config.in_channels,
        classes=NUM_CLASSES,
    )


def build_model(
    config: ModelConfig | None = None,
    weights: str = "none",
    storage_options: StorageOptions = None,
) -> smp.Unet:
    """A 2-class smp Unet with ``config.in_channels`` inputs and the requested initial weights
    (default architecture when ``config`` is None)."""
    config = config or ModelConfig()
    if weights == "imagenet":
        if not _hub_cached(config.encoder_name) and not _hub_reachable():
            raise _imagenet_unavailable(config.encoder_name, f"{_HUB_HOST} is unreachable")
        try:
            return _unet(config, "imagenet")
        except Exception as err:  # noqa: BLE001 - hub/network errors come in many types
            raise _imagenet_unavailable(config.encoder_name, str(err)[:200]) from err
    model = _unet(config, None)
    if not is_scratch(weights):
        load_weights(model, weights, storage_options)
    return model


def load_state_dict(uri: str, storage_options: StorageOptions = None) -> dict[str, torch.Tensor]:
    """Read tensors from a safetensors or torch file without executing pickled code."""
    try:
        data = read_bytes(uri, storage_options)
    except ImageReadError as err:
        raise WeightsError(f"weights {err}") from err
    if uri.endswith(".safetensors"):
        from safetensors.torch import load as load_safetensors

        try:
            return load_safetensors(data)
        except Exception as err:  # noqa: BLE001 - SafetensorError and friends
            raise WeightsError(
                f"{uri}: not a readable safetensors file ({type(err).__name__}: {err})"
            ) from err
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise WeightsError(
            f"{uri}: refused to load: the file holds Python objects other than tensors "
            f"(torch.load weights_only=True). Only state dicts are accepted. ({err})"
        ) from err
    except Exception as err:  # noqa: BLE001 - torch raises many types for corrupt files
        raise WeightsError(
            f"{uri}: not a readable checkpoint ({type(err).__name__}: {err})"
        ) from err
    for key in ("state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
    if not isinstance(loaded, Mapping):
        raise WeightsError(f"{uri}: expected a state dict, found {type(loaded).__name__}")
    return {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}


def _adapt_first_conv(state: dict[str, torch.Tensor], target: torch.Tensor) -> None:
    """Turn ``conv1.weight`` of another channel count (3 for ImageNet) into the target's, as
    smp does: repeat the input channels cyclically and rescale."""
    weight = state.get("conv1.weight")
    if weight is None or weight.shape[1] == target.shape[1]:
        return
    channels = [weight[:, i % weight.shape[1]] for i in range(target.shape[1])]
    state["conv1.weight"] = torch.stack(channels, dim=1) * (weight.shape[1] / target.shape[1])


def _misfit(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> str:
    """Describe missing, unexpected and wrongly shaped keys ("" when the state fits)."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{key} {tuple(state[key].shape)} vs {tuple(expected[key].shape)}"
        for key in sorted(set(state) & set(expected))
        if state[key].shape != expected[key].shape
    ]
    problems = [
        f"{title} {names[:5]}{' …' if len(names) > 5 else ''}"
        for title, names in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatch", mismatched),
        )
        if names
    ]
    return "; ".join(problems)


def load_weights(
    model: smp.Unet, uri: str, storage_options: StorageOptions = None, *, assign: bool = False
) -> str:
    """Load a whole-model or encoder-only state dict; return which kind was loaded.

    The state dict must fit exactly (every key, every shape). smp's own ``load_state_dict``
    overrides silently drop mismatched tensors (and the encoder's returns nothing), so the
    check is done here and the tensors are copied with ``torch.nn.Module.load_state_dict``
    (``assign``: the loaded tensors replace the model's, e.g. a model built on ``meta``).
    """
    state = load_state_dict(uri, storage_options)
    if any(key.startswith("decoder.") for key in state):
        target, kind = model, "model"
    else:
        state = {key.removeprefix("encoder."): value for key, value in state.items()}
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        _adapt_first_conv(state, model.encoder.state_dict()["conv1.weight"])
        target, kind = model.encoder, "encoder"
    problems = _misfit(state, target.state_dict())
    if problems:
        raise WeightsError(
            f"{uri}: {kind} weights do not fit {type(model.encoder).__name__}: {problems}"
        )
    torch.nn.Module.load_state_dict(target, state, strict=True, assign=assign)
    return kind


def set_encoder_trainable(model: smp.Unet, trainable: bool) -> None:
    """Freeze or unfreeze the encoder's parameters."""
    for parameter in model.encoder.parameters():
        parameter.requires_grad_(trainable)
