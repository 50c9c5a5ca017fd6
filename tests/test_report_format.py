"""Numbers for people (groundup.report.format): each unit switches where its docstring says."""

from __future__ import annotations

from groundup.report.format import human, human_bytes, human_energy, human_flops, human_money, human_time, plural


def test_counts_bytes_and_flops_read_at_a_glance():
    assert [human(x) for x in (7e9, 1.4e12, 124e6, 950.0, 91.3e9)] == ["7B", "1.4T", "124M", "950", "91.3B"]
    assert [human_bytes(x) for x in (112e9, 6.48e12, 999.0, 1.64e9)] == ["112 GB", "6.48 TB", "999 B", "1.64 GB"]
    assert human_flops(8.4e22) == "8.4e+22" and human_flops(3.14159e23) == "3.14e+23"


def test_durations_money_and_energy_switch_units_at_their_thresholds():
    assert [human_time(s) for s in (119.0, 120.0, 2 * 3600 - 1, 2 * 3600, 3 * 86400 - 1, 3 * 86400)] == [
        "119.0 s", "2.0 min", "120.0 min", "2.0 h", "72.0 h", "3.0 days"]
    assert [human_money(d) for d in (10321.87, 99.5, 0.5, 0.004)] == ["$10,322", "$99.50", "$0.50", "$0.004"]
    assert human_energy(3468.15) == "3.5 MWh" and human_energy(0.01234, "kWh") == "0.0123 kWh"


def test_plural_says_one_gpu_and_many_gpus():
    assert [plural(n, "GPU") for n in (1, 2, 16384)] == ["1 GPU", "2 GPUs", "16,384 GPUs"]
