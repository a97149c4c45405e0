"""Process settings every replica makes once: its thread budget and its garbage collector."""

from __future__ import annotations

import gc


def limit_threads() -> None:
    """One intra-op thread per replica: replicas share two cores with each other and the proxy."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


def freeze_start_up_heap() -> None:
    """Move every object alive after start-up (Ray, Serve, FastAPI, models: hundreds of thousands)
    into the collector's permanent generation, so that a full collection, which a stream of requests
    triggers now and then, walks only what requests created since."""
    gc.collect()
    gc.freeze()
