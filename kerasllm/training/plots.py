"""The end-of-run PNG: train/val loss and learning-rate curves from `log.csv`."""

from pathlib import Path

from kerasllm.training.callbacks import read_log


def _column(rows, key):
    points = [(float(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
    return [p[0] for p in points], [p[1] for p in points]


def plot_run(log_csv, png_path, title=None):
    """Draws loss / val loss (left) and learning rate (right) against step into `png_path`.

    Args:
        log_csv: a `log.csv` written by `RunLog`.
        png_path: where the PNG goes.
        title: figure title.

    Returns:
        `png_path` as a `Path`, or None when the log has no rows.

    Examples:

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "log.csv").write_text("step,loss,val_loss,learning_rate\\n10,2.0,2.1,0.001\\n20,1.5,,0.0005\\n")
    >>> plot_run(folder / "log.csv", folder / "curves.png").stat().st_size > 1000
    True
    """
    # A bare Figure, not pyplot: no backend switch (matplotlib.use("Agg") would break a
    # notebook's inline plots) and nothing left open.
    from matplotlib.figure import Figure

    rows = read_log(log_csv)
    if not rows:
        return None
    figure = Figure(figsize=(10, 3.6), layout="constrained")
    left, right = figure.subplots(1, 2)
    for key, label in (("loss", "train loss"), ("val_loss", "val loss")):
        steps, values = _column(rows, key)
        if steps:
            left.plot(steps, values, marker="o" if len(steps) < 30 else None, label=label)
    left.set(xlabel="step", ylabel="cross-entropy (nats/token)", title="loss")
    left.legend()
    left.grid(alpha=0.3)
    steps, values = _column(rows, "learning_rate")
    right.plot(steps, values, color="tab:green")
    right.set(xlabel="step", ylabel="learning rate", title="learning rate")
    right.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    png_path = Path(png_path)
    tmp = png_path.with_name(png_path.stem + ".partial.png")
    figure.savefig(tmp, dpi=100)
    tmp.replace(png_path)
    return png_path
