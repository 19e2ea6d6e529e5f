"""``curves.png``: what a run has learned so far, redrawn after every epoch.

Loss per branch, the sigmoid loss's temperature and bias per branch (or the softmax loss's logit
scale) against steps, and validation R@1 per epoch. Headless: matplotlib's Agg backend, written
atomically so a reader never sees half a picture.
"""
from __future__ import annotations

import io
from typing import Dict, Sequence

from .checkpoint import atomic_write


# Panels: (title, prefixes of the logged statistics drawn in it).
_PANELS = (("training loss", ("loss",)), ("temperature exp(t)", ("temperature_", "logit_scale_")), ("bias", ("bias_",)))


def plot_curves(step_log: Sequence[Dict[str, float]], history: Sequence[Dict[str, float]], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    steps = [row["step"] for row in step_log]
    for ax, (title, prefixes) in zip(axes, _PANELS):
        keys = sorted({k for row in step_log for k in row if k != "step" and k.startswith(prefixes)})
        for key in keys:
            ax.plot(steps, [row.get(key, float("nan")) for row in step_log], label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        if keys:
            ax.legend(fontsize=7)
    ax = axes[-1]
    ax.plot([h["epoch"] for h in history], [h["val_t2v_R1"] for h in history], marker="o")
    ax.set_title("validation text-to-video R@1")
    ax.set_xlabel("epoch")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))

