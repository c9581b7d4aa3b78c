"""A source tree for bench/ab.py (`--tree NAME=bench/ablated`) whose process can
run with parts of its per-connection work replaced by no-ops, to weigh them:
`--env NAME=PROTO_ABLATE=log,metrics`. Python imports this module at start-up
because the tree is first on PYTHONPATH; `portcullis` here is a link to src/."""

from __future__ import annotations

import os
from typing import Any

_PARTS = set(filter(None, os.environ.get("PROTO_ABLATE", "").split(",")))


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


if _PARTS:
    import portcullis.observe.log as _log
    import portcullis.observe.metrics as _metrics

    if "log" in _PARTS:
        _log.DecisionLog.decision = _nothing  # type: ignore[method-assign]
        _log.DecisionLog.close_event = _nothing  # type: ignore[method-assign]
    if "metrics" in _PARTS:
        for _name in ("record_decision", "record_close", "connection_opened",
                      "connection_closed", "observe_dns", "observe_connect"):
            setattr(_metrics.Metrics, _name, _nothing)

if "gc" in _PARTS:
    import gc as _gc

    _gc.disable()
