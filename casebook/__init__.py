"""Casebook: each clinician's own notebook of conversations about patients."""

__version__ = '0.1.0'
