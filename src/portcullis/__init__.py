"""Portcullis: a Layer 7 egress firewall for container-registry traffic."""
__version__ = "0.1.0"
