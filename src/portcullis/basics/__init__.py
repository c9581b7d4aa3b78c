"""The bottom layer: what every other layer shares, importing nothing of the project.

`vocabulary` (decisions, reasons, close reasons, modes), `errors` (the one error
tree), `names` (host names and patterns), `ip` (address types, CIDRs, unmapping)
and `hostport` (host:port text). See docs/architecture.md for the layers above.
"""
