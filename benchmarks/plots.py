"""Matplotlib for reports: headless, optional where a machine lacks it, and written atomically."""
from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None where matplotlib is not installed (GPU check machines)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path, dpi: int = 90) -> Path:
    import matplotlib.pyplot as plt

    from amnet.core.fileio import atomic_write

    atomic_write(path, lambda t: fig.savefig(t, dpi=dpi, format="png"))
    plt.close(fig)
    return path
