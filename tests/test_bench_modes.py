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


def test_train_py_probes_each_round_and_counts_the_slow_ones(bench_module):
    """bench/train.py's rounds each start with the mode probe; the record counts the rounds whose
    SGEMM speed-up fell below the threshold, and the probe leaves the thread count as it was."""
    import fastcnn

    train = bench_module("train")
    before = fastcnn.get_num_threads()
    fastcnn.set_num_threads(2)
    try:
        probe = train.ModeProbe(2)
        speedup = probe()
        assert speedup > 0 and fastcnn.get_num_threads() == 2
        assert train.ModeProbe(1)() is None  # one thread: no mode to tell

        calls = []
        values = iter([1.95, 1.6, 1.7])

        def fake():
            calls.append(1)
            return next(values)

        runner = type("R", (), {"impl": "x", "mode": lambda self, t: None, "step": lambda s: 0})()
        times, speedups = train.time_config(
            [runner], "train", rounds=3, budget_s=0.0, min_steps=1, max_steps=1, probe=fake
        )
        assert len(calls) == 3 and speedups == [1.95, 1.6, 1.7]
        assert [len(r) for r in times["x"]] == [1, 1, 1]  # each round's steps
        assert sum(s < train.SLOW_SPEEDUP for s in speedups) == 2
    finally:
        fastcnn.set_num_threads(before)
