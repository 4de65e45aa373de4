"""Reproducible benchmarks of Solent PACS, side by side with Orthanc (`python -m bench`)."""
