"""The progress line (tqdm): step count, images per second and metrics on stderr; nothing when disabled."""

import time

from ib_attention_jax.training.metrics import Progress


def test_progress_line_shows_steps_rate_and_metrics(capsys):
    progress = Progress(total_steps=10, start_step=4, batch_size=8)
    for step in range(5, 11):
        time.sleep(0.01)
        progress.update(step, {"total": 1.2345, "accuracy": 0.5}, force=True)
    progress.close()
    err = capsys.readouterr().err
    assert "10/10" in err and "total=1.234" in err and "accuracy=0.5" in err and "img/s=" in err, err
    assert 0 < progress.images_per_second < 6 * 8 / 0.06 + 1  # 6 steps of 8 images in at least 60 ms


def test_disabled_progress_prints_nothing_but_still_measures(capsys):
    progress = Progress(total_steps=10, start_step=0, batch_size=8, enabled=False)
    time.sleep(0.01)
    progress.update(3, {"total": 1.0})
    progress.close()
    assert capsys.readouterr().err == ""
    assert progress.images_per_second > 0
