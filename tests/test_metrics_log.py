"""metrics.jsonl, TensorBoard events and curves.png."""

from d2e2s_jax.training import metrics_log


def _write_run(workdir, steps, resume_step=None):
  log = metrics_log.MetricsLog(workdir, resume_step=resume_step)
  for step in steps:
    log.write(step, "train", {"loss": 1.0 / step, "learning_rate": 1e-5})
    if step % 2 == 0:
      log.write(step, "dev", {"triplet": {"precision": 50.0, "recall": 40.0, "f1": 44.4}})
  log.close()


def test_resume_drops_lines_after_the_checkpoint(tmp_path):
  _write_run(tmp_path / "full", range(1, 7))
  # Interrupted after step 5 with the checkpoint at step 4, then resumed.
  _write_run(tmp_path / "resumed", range(1, 6))
  _write_run(tmp_path / "resumed", range(5, 7), resume_step=4)
  full = (tmp_path / "full" / "metrics.jsonl").read_text()
  assert (tmp_path / "resumed" / "metrics.jsonl").read_text() == full
  records = metrics_log.read_metrics(tmp_path / "full" / "metrics.jsonl")
  assert [r["step"] for r in records if r["split"] == "dev"] == [2, 4, 6]
  assert list((tmp_path / "full" / "tensorboard").iterdir())


def test_plot_curves_writes_png(tmp_path):
  log = metrics_log.MetricsLog(tmp_path)
  for step in range(1, 5):
    log.write(step, "train", {"loss": 2.0 / step + 1.5, "entity_loss": 1.0 / step, "sentiment_loss": 1.0 / step,
                              "learning_rate": 1e-5})
    log.write(step, "dev", {"triplet": {"precision": 50.0, "recall": 40.0, "f1": 44.4}})
    log.write(step, "test", {"triplet": {"precision": 50.0, "recall": 40.0, "f1": 40.0}})
  log.close()
  png = tmp_path / "curves.png"
  metrics_log.plot_curves(metrics_log.read_metrics(tmp_path / "metrics.jsonl"), png)
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_curves_of_an_older_log_without_loss_parts(tmp_path):
  _write_run(tmp_path, range(1, 5))
  png = tmp_path / "curves.png"
  metrics_log.plot_curves(metrics_log.read_metrics(tmp_path / "metrics.jsonl"), png)
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
