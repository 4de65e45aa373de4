"""DICOM network services (DIMSE) on pynetdicom: SCPs, SCU and their CLI."""
