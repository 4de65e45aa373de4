"""Authentication (local users, service API tokens, OpenID Connect), HTTP enforcement, audit export.

Authorization itself lives in ``solent.services.access`` and the audit trail in
``solent.services.audit``; this package proves who is calling and turns that into a Principal.
"""
