"""One log format for every agent: time, component, level, message."""

from __future__ import annotations

import logging
import os


def setup(component: str, level: str | None = None) -> logging.Logger:
    """Configure root logging once and return the component's logger."""
    lvl = (level or os.environ.get("KNL_LOG_LEVEL") or "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, lvl, logging.INFO),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    return logging.getLogger(component)
