"""CPU flags from /proc/cpuinfo and the native-bf16 check."""

from __future__ import annotations

import pytest

from stroke_ray import machine

AVX2_ONLY = "fpu sse2 avx avx2 fma"
AVX512_BF16 = f"{AVX2_ONLY} avx512f avx512_vnni avx512_bf16"
SAPPHIRE_RAPIDS = f"{AVX2_ONLY} avx512f amx_tile amx_bf16"


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    """Point the module at a fake /proc/cpuinfo with the given flags line."""

    def write(flags: str | None, model: str = "Fake CPU") -> None:
        lines = ["processor\t: 0", f"model name\t: {model}"]
        if flags is not None:
            lines.append(f"flags\t\t: {flags}")
        text = "\n".join(lines) + "\n\nprocessor\t: 1\nflags\t\t: other_cpu_flags\n"
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        monkeypatch.setattr(machine, "_CPUINFO", path)
        machine._cpuinfo_fields.cache_clear()

    yield write
    machine._cpuinfo_fields.cache_clear()


@pytest.mark.parametrize(
    ("flags", "native"),
    [(AVX2_ONLY, False), (AVX512_BF16, True), (SAPPHIRE_RAPIDS, True), ("", False), (None, False)],
)
def test_native_bf16_follows_the_cpu_flags(cpuinfo, flags, native):
    cpuinfo(flags)
    assert machine.native_bf16("cpu") is native
    assert machine.native_bf16("cuda") is True


def test_flags_and_model_of_the_first_processor(cpuinfo):
    cpuinfo(AVX512_BF16, model="AMD EPYC")
    assert "avx512_bf16" in machine.cpu_flags()
    assert "other_cpu_flags" not in machine.cpu_flags()
    assert machine.cpu_model() == "AMD EPYC"


def test_missing_cpuinfo_means_no_flags(tmp_path, monkeypatch):
    monkeypatch.setattr(machine, "_CPUINFO", tmp_path / "absent")
    machine._cpuinfo_fields.cache_clear()
    try:
        assert machine.cpu_flags() == frozenset()
        assert machine.native_bf16("cpu") is False
    finally:
        machine._cpuinfo_fields.cache_clear()


def test_machine_info_reports_the_speed_flags_only(cpuinfo):
    cpuinfo(AVX512_BF16, model="AMD EPYC")
    info = machine.machine_info()
    assert info["cpu_model"] == "AMD EPYC"
    assert info["cpu_flags"] == ["avx2", "avx512_bf16", "avx512_vnni", "avx512f", "fma"]
    assert info["cpu_count"] >= 1
