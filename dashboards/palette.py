"""One colour per op class, shared by every dashboard figure.

Hues follow the category (compute greens and teals, memory ambers, communication reds, purples
and oranges, host grey) so a glance still reads the category, while each collective kind and
each compute class has its own colour. A collective's waiting part is its colour mixed with
white: the same kind, visibly not moving data.
"""

from __future__ import annotations

import numpy as np

from sohuprof.schema import OP_CLASSES

__all__ = ["OP_CLASS_COLORS", "CATEGORY_COLORS", "class_color", "class_rgb", "WAIT_LIGHTEN"]

OP_CLASS_COLORS = {
    "gemm": "#1b7f79", "attention": "#2b59a3", "norm": "#7cb518", "elementwise": "#4f9d69", "embedding": "#3a86a8",
    "sampling": "#a7c957", "router": "#0fa3b1", "other": "#8d99ae",
    "memcpy": "#e9a23b", "memset": "#c77d1a",
    "all_reduce": "#d62828", "all_gather": "#8338ec", "reduce_scatter": "#b5179e", "all_to_all": "#ff4d6d",
    "broadcast": "#6a4c93", "send": "#f77f00", "recv": "#9c6644",
    "host": "#6c7a89",
}
assert set(OP_CLASS_COLORS) == set(OP_CLASSES), "a colour for every op class"
#: Category colours (legends and aggregate views).
CATEGORY_COLORS = {"compute": "#2a9d8f", "memory": "#e9a23b", "communication": "#d62828", "host": "#6c7a89"}
#: How far a collective's waiting part is mixed towards white.
WAIT_LIGHTEN = 0.6
_FALLBACK = "#8d99ae"


def _rgb(color: str) -> tuple[int, int, int]:
    color = color.lstrip("#")
    return int(color[0:2], 16), int(color[2:4], 16), int(color[4:6], 16)


def class_rgb(name: str) -> tuple[int, int, int]:
    """RGB of an op class, or of ``<class>:wait`` (lighter)."""
    base, _, suffix = str(name).partition(":")
    r, g, b = _rgb(OP_CLASS_COLORS.get(base, _FALLBACK))
    if suffix == "wait":
        r, g, b = (round(c + (255 - c) * WAIT_LIGHTEN) for c in (r, g, b))
    return int(r), int(g), int(b)


def class_color(name: str) -> str:
    """``#rrggbb`` of an op class, or of ``<class>:wait``."""
    return "#%02x%02x%02x" % class_rgb(name)


def class_table(classes: np.ndarray) -> np.ndarray:
    """``[len(classes), 3]`` uint8 RGB of each class (for images)."""
    return np.array([class_rgb(c) for c in classes] or np.zeros((0, 3)), dtype=np.uint8).reshape(-1, 3)
