"""bench/machine_modes.py (the fast/slow-minutes probe) runs and reports each probe at all
threads and at one, with numbers that can be read."""

import json


def test_one_round_reports_every_probe_at_both_thread_counts(bench_module, capsys):
    import fastcnn

    modes = bench_module("machine_modes")
    before = fastcnn.get_num_threads()
    modes.main(["--rounds", "1", "--threads", "2", "--size", "12", "--gemm", "64", "--add-mb", "1"])
    assert fastcnn.get_num_threads() == 2
    fastcnn.set_num_threads(before)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")]
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["bench"] == "machine_mode" and record["round"] == 0
    for name in ("resnet8_step_ms", "sgemm_ms", "add_ms"):
        for t in ("2t", "1t"):
            assert record[f"{name}_{t}"] > 0
    assert record["sgemm_speedup"] > 0
