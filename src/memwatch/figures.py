"""Figures that leave the user's matplotlib alone: the one plotting idiom of memwatch.

Every plot (the `memwatch analyze` report, the demo report, the sinks' heatmap) is a
`matplotlib.figure.Figure` on its own Agg canvas: never pyplot, never
``matplotlib.use()``, so a notebook's or a training script's backend and its open
figures are untouched, and no display is needed. matplotlib is the ``plot`` extra,
imported here on first use.
"""

from __future__ import annotations

import io
from pathlib import Path


def new_figure(width: float = 6.4, height: float = 4.8):
    """A `Figure` of `width` x `height` inches on an Agg canvas, laid out "constrained"."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("plots need matplotlib: pip install 'memwatch[plot]'") from err
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write `fig` as a PNG at `path` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def png_bytes(fig, dpi: int = 100) -> bytes:
    """`fig` rendered as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
