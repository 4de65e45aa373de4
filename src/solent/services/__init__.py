"""Archive services: query, retrieve, identity, access, audit. Adapters call these."""
