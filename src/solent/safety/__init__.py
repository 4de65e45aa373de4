"""Clinical safety (R45, R46): the hazard log, known limitations and configuration risks that a
trust's DCB0160 safety case reads, shipped as data with every release (docs/clinical-safety.md)."""
