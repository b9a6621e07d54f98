"""Capsules: one small, deployable product per factory or supply-chain area (docs/capsules.md).

A capsule is a folder with a ``capsule.toml`` (connector templates, model recipe, proof
pipeline, edge and orchestration policies, deliverable template, simulator profile); this
package validates, applies, signs and simulates them.
"""

from capsules.catalogue import CATALOGUE, apply, catalogue, find, load
from capsules.errors import BundleInvalid, CapsuleError, CapsuleInvalid, UnknownCapsule
from capsules.render import Endpoints
from capsules.spec import Capsule, parse_capsule

__all__ = [
    "CATALOGUE",
    "BundleInvalid",
    "Capsule",
    "CapsuleError",
    "CapsuleInvalid",
    "Endpoints",
    "UnknownCapsule",
    "apply",
    "catalogue",
    "find",
    "load",
    "parse_capsule",
]
