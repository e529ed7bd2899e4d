"""The precision a run trains in: bfloat16 detection, the auto choice, warnings of slow ones."""

import pytest

from lungseg import machine
from lungseg.precision import choose_precision, cpu_bf16_flags, onednn_disabled

EPYC = """processor\t: 0
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16 avx512_vnni
"""
SAPPHIRE_RAPIDS = "flags\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
OLD_XEON = "model name\t: Xeon\nflags\t: avx2 fma avx512f avx512_vnni\n"


def test_bf16_flags_are_read_from_cpuinfo(tmp_path, monkeypatch):
    assert cpu_bf16_flags(EPYC) == ("avx512_bf16",)
    assert cpu_bf16_flags(SAPPHIRE_RAPIDS) == ("amx_bf16", "avx512_bf16")
    assert cpu_bf16_flags(OLD_XEON) == ()
    assert cpu_bf16_flags("") == ()
    monkeypatch.setattr(machine, "CPUINFO", tmp_path / "cpuinfo")
    assert cpu_bf16_flags() == ()  # unreadable (not Linux): no bfloat16 assumed
    (tmp_path / "cpuinfo").write_text(EPYC)
    assert cpu_bf16_flags() == ("avx512_bf16",)


def test_onednn_switch():
    assert not onednn_disabled({})
    assert not onednn_disabled({"TF_ENABLE_ONEDNN_OPTS": "1"})
    assert onednn_disabled({"TF_ENABLE_ONEDNN_OPTS": "0"})
    assert onednn_disabled({"TF_ENABLE_ONEDNN_OPTS": "False"})


@pytest.mark.parametrize(
    "cpuinfo, gpu, environ, saved, chosen, words",
    [
        (EPYC, False, {}, None, "mixed_bfloat16", "the CPU has avx512_bf16"),
        (SAPPHIRE_RAPIDS, False, {}, None, "mixed_bfloat16", "amx_bf16, avx512_bf16"),
        (OLD_XEON, False, {}, None, "float32", "no bfloat16 instructions"),
        (EPYC, False, {"TF_ENABLE_ONEDNN_OPTS": "0"}, None, "float32", "TF_ENABLE_ONEDNN_OPTS=0"),
        (EPYC, True, {}, None, "float32", "a GPU is present"),
        # A resumed run keeps the precision it started with, on any machine.
        (OLD_XEON, True, {}, "mixed_bfloat16", "mixed_bfloat16", "as the run being resumed"),
        (EPYC, False, {}, "float32", "float32", "as the run being resumed"),
    ],
)
def test_auto_chooses_bfloat16_only_where_the_cpu_has_it(cpuinfo, gpu, environ, saved, chosen, words):
    policy, line, warning = choose_precision("auto", gpu, saved=saved, cpuinfo=cpuinfo, environ=environ)
    assert (policy, warning) == (chosen, False)
    assert line.startswith(f"precision auto: {chosen}") and words in line


def test_slow_explicit_choices_are_kept_with_one_warning_line():
    policy, line, warning = choose_precision("mixed_float16", gpu=False, cpuinfo=EPYC, environ={})
    assert (policy, warning) == ("mixed_float16", True)
    assert "\n" not in line and "far slower than float32" in line
    assert "mixed_bfloat16" in line and "float32" in line
    assert choose_precision("mixed_float16", gpu=True)[2] is False
    policy, line, warning = choose_precision("mixed_bfloat16", gpu=False, cpuinfo=OLD_XEON, environ={})
    assert (policy, warning) == ("mixed_bfloat16", True) and "no bfloat16 instructions" in line
    assert choose_precision("mixed_bfloat16", gpu=False, cpuinfo=EPYC, environ={})[1:] == (
        "precision: mixed_bfloat16", False)
    assert choose_precision("float32", gpu=False, cpuinfo=OLD_XEON)[1:] == ("precision: float32", False)
    # A run resumed with auto keeps its precision, warned about where it is slow.
    policy, line, warning = choose_precision("auto", False, saved="mixed_bfloat16", cpuinfo=OLD_XEON, environ={})
    assert (policy, warning) == ("mixed_bfloat16", True)
    assert line.startswith("mixed_bfloat16 will likely") and line.endswith("(as the run being resumed started with)")
