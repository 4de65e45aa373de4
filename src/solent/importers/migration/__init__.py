"""`solent migrate`: consolidate legacy PACS (inventory, reconcile, transfer, verify).

These modules talk to the legacy systems and to ``Services.migration`` only; what must survive
a crash (inventory, per-instance state, identity decisions) lives in the index behind it.
"""
