"""Tests for stroke_ray.model: shapes, safe weight loading and encoder freezing."""

from __future__ import annotations

import functools
import os
import pickle
import shlex
import socket
import time
from dataclasses import replace
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch
import torchvision
from safetensors.torch import save_file

from stroke_ray.config import ModelConfig
from stroke_ray.model import (
    WeightsError,
    build_model,
    load_weights,
    set_encoder_trainable,
)

CONFIG = ModelConfig(encoder_name="resnet18", decoder_channels=(16, 8, 8, 4, 4))
IN_CHANNELS = CONFIG.in_channels  # the paper's four sequences by default
SIDE = 64


@functools.lru_cache(maxsize=1)
def _reference_state() -> dict[str, torch.Tensor]:
    """State dict of one randomly initialised tiny model (built once, never mutated)."""
    torch.manual_seed(0)
    return {k: v.clone() for k, v in build_model(CONFIG).state_dict().items()}


def _assert_state_equal(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    """Every tensor of ``model``'s state dict equals ``expected``."""
    state = model.state_dict()
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)


class _RunsCode:
    """An object whose unpickling runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"echo pwned > {shlex.quote(str(self.marker))}",)


def test_output_shape() -> None:
    model = build_model(CONFIG).eval()
    with torch.no_grad():
        output = model(torch.randn(2, IN_CHANNELS, SIDE, SIDE))
    assert IN_CHANNELS == 4
    assert output.shape == (2, 2, SIDE, SIDE)
    assert model.encoder.conv1.in_channels == IN_CHANNELS


@pytest.mark.parametrize("channels", [1, 3, 5])
def test_input_channels_follow_the_config(channels: int) -> None:
    model = build_model(replace(CONFIG, in_channels=channels)).eval()
    with torch.no_grad():
        output = model(torch.randn(1, channels, SIDE, SIDE))
    assert output.shape == (1, 2, SIDE, SIDE)
    assert model.encoder.conv1.in_channels == channels


def test_config_round_trip() -> None:
    assert ModelConfig.from_dict(CONFIG.to_dict()) == CONFIG


@pytest.mark.parametrize("wrapped", [False, True])
def test_whole_model_state_dict_loads(tmp_path: Path, wrapped: bool) -> None:
    path = tmp_path / "model.pt"
    state = _reference_state()
    torch.save({"state_dict": state, "epoch": 3} if wrapped else state, path)
    torch.manual_seed(123)  # a different random start that loading must overwrite
    _assert_state_equal(build_model(CONFIG, weights=str(path)), state)


def test_safetensors_loads(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in _reference_state().items()}, str(path))
    torch.manual_seed(7)
    _assert_state_equal(build_model(CONFIG, weights=str(path)), _reference_state())


def test_corrupt_safetensors_refused(tmp_path: Path) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(WeightsError, match="broken.safetensors"):
        build_model(CONFIG, weights=str(path))


@pytest.mark.parametrize("channels", [IN_CHANNELS, 1, 3, 5])
def test_torchvision_encoder_state_dict_adapted(tmp_path: Path, channels: int) -> None:
    torch.manual_seed(1)
    torchvision_state = torchvision.models.resnet18(weights=None).state_dict()
    assert torchvision_state["conv1.weight"].shape[1] == 3 and "fc.weight" in torchvision_state
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(torchvision_state, path)

    model = build_model(replace(CONFIG, in_channels=channels), weights=str(path))

    conv1 = model.encoder.conv1.weight.detach()
    assert conv1.shape == (64, channels, 7, 7)
    source = torchvision_state["conv1.weight"]
    for channel in range(channels):  # smp: repeat RGB cyclically, scale by 3/channels
        torch.testing.assert_close(conv1[:, channel], source[:, channel % 3] * 3 / channels)
    encoder_state = model.encoder.state_dict()
    for key in ("layer4.1.conv2.weight", "bn1.running_mean", "layer2.0.downsample.0.weight"):
        torch.testing.assert_close(encoder_state[key], torchvision_state[key], rtol=0, atol=0)


def test_smp_encoder_state_dict_loads(tmp_path: Path) -> None:
    path = tmp_path / "encoder.pt"
    encoder_state = {f"encoder.{k}": v for k, v in _reference_state().items() if "encoder." in k}
    encoder_state = {k.removeprefix("encoder.encoder."): v for k, v in encoder_state.items()}
    torch.save(encoder_state, path)
    model = build_model(CONFIG, weights=str(path))
    for key, value in model.encoder.state_dict().items():
        torch.testing.assert_close(value, _reference_state()[f"encoder.{key}"], rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("save", ["torch", "pickle"])
def test_pickle_with_code_refused(tmp_path: Path, save: str) -> None:
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pt"
    payload = {"state_dict": {"conv1.weight": torch.zeros(1)}, "extra": _RunsCode(marker)}
    if save == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))

    with pytest.raises(WeightsError, match="refused to load"):
        build_model(CONFIG, weights=str(path))

    assert not marker.exists()


def test_pickle_payload_is_live(tmp_path: Path) -> None:
    marker = tmp_path / "pwned.txt"
    pickle.loads(pickle.dumps(_RunsCode(marker)))  # the control: plain pickle runs the code
    assert marker.read_text().strip() == "pwned"


@pytest.mark.parametrize(
    "encoder, problem",
    [
        ("resnet34", r"unexpected \['layer1\.2\."),
        ("resnet50", r"shape mismatch \['layer1\.0\.conv1\.weight \(64, 64, 1, 1\)"),
    ],
    ids=["resnet34", "resnet50"],
)
def test_wrong_encoder_refused(tmp_path: Path, encoder: str, problem: str) -> None:
    path = tmp_path / f"{encoder}.pth"
    builder = getattr(torchvision.models, encoder)
    torch.save(builder(weights=None).state_dict(), path)
    torch.manual_seed(0)
    model = build_model(CONFIG)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        WeightsError, match=rf"encoder weights do not fit ResNetEncoder: .*{problem}"
    ):
        build_model(CONFIG, weights=str(path))
    with pytest.raises(WeightsError):
        load_weights(model, str(path))
    _assert_state_equal(model, before)  # nothing half-loaded


def test_whole_model_with_other_decoder_refused(tmp_path: Path) -> None:
    other = ModelConfig(encoder_name="resnet18", decoder_channels=(16, 8, 8, 4, 2))
    path = tmp_path / "other.pt"
    torch.save(build_model(other).state_dict(), path)
    with pytest.raises(WeightsError, match="model weights do not fit"):
        build_model(CONFIG, weights=str(path))


def test_non_state_dict_refused(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(WeightsError, match="expected a state dict"):
        build_model(CONFIG, weights=str(path))
    (tmp_path / "garbage.pt").write_bytes(b"definitely not a checkpoint")
    with pytest.raises(WeightsError, match="garbage.pt"):
        build_model(CONFIG, weights=str(tmp_path / "garbage.pt"))


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="absent.pt: file not found"):
        build_model(CONFIG, weights=str(tmp_path / "absent.pt"))


def _hub_connectable() -> bool:
    """Whether huggingface.co:443 accepts a TCP connection within two seconds."""
    try:
        socket.create_connection(("huggingface.co", 443), timeout=2).close()
    except OSError:
        return False
    return True


def _no_cache_no_proxy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Point the Hugging Face cache at an empty folder and drop proxy settings."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_imagenet_offline_fails_fast(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if _hub_connectable():
        pytest.skip("huggingface.co is reachable: the offline path cannot be observed")
    _no_cache_no_proxy(monkeypatch, tmp_path)
    started = time.perf_counter()
    with pytest.raises(WeightsError, match="--weights"):
        build_model(CONFIG, weights="imagenet")
    assert time.perf_counter() - started < 5.0


def test_imagenet_blocked_connection_fails_fast(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _no_cache_no_proxy(monkeypatch, tmp_path)
    attempts: list[tuple[object, ...]] = []

    def blocked(address: tuple[str, int], timeout: float | None = None) -> socket.socket:
        """Simulate a resolvable host behind a firewall that drops packets."""
        attempts.append((address, timeout))
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", blocked)
    started = time.perf_counter()
    with pytest.raises(WeightsError, match="--weights"):
        build_model(CONFIG, weights="imagenet")
    assert time.perf_counter() - started < 5.0
    assert attempts and all(timeout is not None and timeout <= 5 for _, timeout in attempts)


def test_set_encoder_trainable() -> None:
    torch.manual_seed(0)
    model = build_model(CONFIG).train()
    set_encoder_trainable(model, False)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    images = torch.randn(2, IN_CHANNELS, SIDE, SIDE)
    target = torch.randint(0, 2, (2, SIDE, SIDE))
    loss = torch.nn.functional.cross_entropy(model(images), target)
    loss.backward()
    optimizer.step()

    for name, parameter in model.named_parameters():
        unchanged = torch.equal(parameter.detach(), before[name])
        assert unchanged == name.startswith("encoder."), name

    set_encoder_trainable(model, True)
    assert all(p.requires_grad for p in model.parameters())
    assert isinstance(model, smp.Unet)
