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

if _PARTS & {"head", "hello", "decide"}:
    # Parts replaced by a memo of their own answers: what is left of their
    # cost is a dict lookup, so the count drops by about what they cost.
    from collections.abc import Callable

    def _memo(fn: Callable[..., Any], key: Callable[..., Any]) -> Callable[..., Any]:
        seen: dict[Any, Any] = {}

        def memoized(*args: Any, **kwargs: Any) -> Any:
            k = key(*args, **kwargs)
            if k not in seen:
                seen[k] = fn(*args, **kwargs)
            return seen[k]

        return memoized

    if "head" in _PARTS:
        import portcullis.proxy.explicit as _explicit
        import portcullis.proxy.reading as _reading

        _reading.parse_request_head = _memo(  # type: ignore[assignment]
            _reading.parse_request_head, lambda b, limit: (bytes(b), limit))
        _explicit.check_request = _memo(  # type: ignore[assignment]
            _explicit.check_request, lambda head: id(head))
    if "hello" in _PARTS:
        import portcullis.proxy.reading as _reading

        _reading.parse_client_hello = _memo(  # type: ignore[assignment]
            _reading.parse_client_hello, lambda b, *rest: bytes(b))
    if "decide" in _PARTS:
        import portcullis.policy.engine as _engine

        _engine.Engine.decide = _memo(  # type: ignore[method-assign]
            _engine.Engine.decide, lambda self, *a, **k: (id(self), a, tuple(k.items())))
