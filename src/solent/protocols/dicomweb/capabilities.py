"""OPTIONS /dicomweb: what this origin server supports (PS3.18 8.9), as JSON people can read.

The same facts are written out for people in docs/conformance-dicomweb.md.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from solent import __version__
from solent.dicom import transcode as tc
from solent.protocols.dicomweb.accept import IMAGE_FAMILIES

router = APIRouter()

RESOURCES: dict[str, list[str]] = {
    "/studies": ["GET (QIDO-RS)", "POST (STOW-RS)"],
    "/studies/{study}": ["GET (WADO-RS)", "POST (STOW-RS)"],
    "/studies/{study}/metadata": ["GET"],
    "/studies/{study}/series": ["GET (QIDO-RS)"],
    "/studies/{study}/series/{series}": ["GET"],
    "/studies/{study}/series/{series}/metadata": ["GET"],
    "/studies/{study}/series/{series}/instances": ["GET (QIDO-RS)"],
    "/studies/{study}/instances": ["GET (QIDO-RS)"],
    "/series": ["GET (QIDO-RS)"],
    "/instances": ["GET (QIDO-RS)"],
    "/studies/{study}/series/{series}/instances/{instance}": ["GET"],
    "/studies/{study}/series/{series}/instances/{instance}/metadata": ["GET"],
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}": ["GET"],
    "/studies/{study}/series/{series}/instances/{instance}/bulkdata/{path}": ["GET"],
    "/studies/{study}/series/{series}/instances/{instance}/rendered": ["GET"],
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frame}/rendered": ["GET"],
    "/studies/{study}/thumbnail": ["GET"],
    "/studies/{study}/series/{series}/thumbnail": ["GET"],
    "/studies/{study}/series/{series}/instances/{instance}/thumbnail": ["GET"],
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frame}/thumbnail": ["GET"],
    "/wado": ["GET (WADO-URI)"],
}


def capabilities() -> dict[str, Any]:
    decodable = sorted(
        ts
        for ts in {
            *tc.NATIVE,
            *tc.ENCODABLE,
            *tc.JPEG_XL_SYNTAXES,
            tc.DEFLATED_IMAGE_FRAME,
            tc.JPEG_EXTENDED,
            tc.HTJ2K_LOSSLESS_RPCL,
        }
        if tc.can_decode(ts)
    )
    return {
        "server": f"Solent PACS {__version__}",
        "standard": "DICOM PS3.18 (DICOMweb)",
        "resources": RESOURCES,
        "retrieve": {
            "instances": 'multipart/related; type="application/dicom" (transfer-syntax=* is '
            "as stored; no transfer-syntax means Explicit VR Little Endian)",
            "metadata": "application/dicom+json (gzip when accepted)",
            "frames_and_bulkdata": sorted({"application/octet-stream", *IMAGE_FAMILIES}),
            "rendered": [
                "image/jpeg",
                "image/png",
                "image/gif",
                "application/pdf (encapsulated PDF)",
            ],
            "rendered_parameters": ["window", "viewport", "quality"],
            "transfer_syntaxes_decoded": decodable,
            "transfer_syntaxes_encoded": sorted(tc.ENCODABLE),
        },
        "store": {
            "media_types": ['multipart/related; type="application/dicom"'],
            "failure_reasons": {
                "0xA700": "out of resources (storage failure)",
                "0xA900": "instance does not belong to the study in the URL",
                "0xC000": "cannot understand (malformed, missing or invalid attributes)",
                "0x0110": "processing failure (e.g. study filed under another patient)",
                "0x0111": "duplicate SOP Instance UID with different content",
                "0x0124": "not authorized",
            },
        },
        "query": {
            "parameters": [
                "{attribute}={value}",
                "includefield",
                "fuzzymatching",
                "limit",
                "offset",
            ],
            "patient_identity": "PatientID must be qualified by IssuerOfPatientID (R24)",
        },
    }


@router.options("")
@router.options("/")
def options() -> Response:
    return JSONResponse(capabilities(), headers={"Allow": "GET, POST, OPTIONS"})
