"""A synthetic clinic for trying Carechart: ``carechart demo load`` and the first run of
``carechart serve --demo``."""

from carechart.demo.service import (
    DemoAccount,
    DemoCredentials,
    DemoLoad,
    ensure_demo_clinic,
    load_demo,
)

__all__ = ["DemoAccount", "DemoCredentials", "DemoLoad", "ensure_demo_clinic", "load_demo"]
