"""The index: SQL tables of trusts, nodes, patients, studies, series, instances and events."""

from solent.index.sql import Index

__all__ = ["Index"]
