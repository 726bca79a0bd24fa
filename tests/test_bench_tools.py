"""bench/compare_losses.py: the bf16 / fp16 comparison that bench/gpu_check.sh reports."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from compare_losses import compare  # noqa: E402


def _write_log(run_dir, losses, skipped=(), val_loss=1.0):
    run_dir.mkdir()
    rows = [dict(step=10 * (i + 1), loss=loss, skipped_steps=10 if i in skipped else 0) for i, loss in enumerate(losses)]
    rows.append(dict(step=10 * len(losses), val_loss=val_loss))
    (run_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_dir


def test_curves_within_and_outside_noise_and_skipped_rows_left_out(tmp_path):
    base = [2.0, 1.8, 1.9, 1.6, 1.7, 1.5, 1.55, 1.4]
    a = _write_log(tmp_path / "a", base)
    close = _write_log(tmp_path / "b", [x + 0.01 for x in base], val_loss=1.02)
    apart = _write_log(tmp_path / "c", [x + 0.5 for x in base])
    result = compare(a, close)
    assert result["within_noise"] and result["compared_log_rows"] == 8
    assert result["heldout_val_loss_at_last_check"]["ratio"] == 1.02
    assert not compare(a, apart)["within_noise"]
    # a row where one run skipped its steps (loss 0 there) is counted, not compared
    skipped = _write_log(tmp_path / "d", [0.0] + base[1:], skipped=(0,))
    result = compare(a, skipped)
    assert result["within_noise"] and result["compared_log_rows"] == 7 and result["skipped_steps"] == [0, 10]


def test_skipped_subsample_is_disjoint_from_the_first_and_follows_the_same_order():
    from convert_measured import Item, subsample
    items = [Item(cls=c, rel=f"{c}/{i:03d}.png", read=None) for c in ("fall", "wave") for i in range(30)]
    first, second = subsample(items, 10), subsample(items, 10, skip_per_class=10)
    both = subsample(items, 20)
    for c in ("fall", "wave"):
        a, b = {it.rel for it in first[c]}, {it.rel for it in second[c]}
        assert len(a) == len(b) == 10 and not a & b and a | b == {it.rel for it in both[c]}
    assert sum(len(v) for v in subsample(items, None, skip_per_class=25).values()) == 10   # the last 5 per class
