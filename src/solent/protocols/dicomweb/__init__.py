"""DICOMweb (PS3.18) at /dicomweb: QIDO-RS, WADO-RS, STOW-RS, WADO-URI and capabilities.

``install(app)`` is the one call the HTTP application makes: it includes the routes and, when
``cors_origins`` is set, lets browsers on those origins call them.
"""

from __future__ import annotations

from solent.protocols.dicomweb.router import install

__all__ = ["install"]
