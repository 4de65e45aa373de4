"""pydicom-level work that knows nothing of storage: parsing, frame offsets, DICOM JSON."""
