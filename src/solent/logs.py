"""Structured logging. Patient identifiers stay out of logs unless SOLENT_LOG_PATIENT_DATA is on."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

_STANDARD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}
PATIENT_FIELDS = {"patient_id", "patient_name", "nhs_number", "birth_date"}


# A bearer token in a URL's query (the MDT live room's WebSocket: browsers cannot send headers
# there), e.g. in uvicorn's "WebSocket /path?token=..." lines: a credential, never logged.
_TOKEN_IN_QUERY = re.compile(r"([?&](?:access_)?token=)[^&\s\"'#]+", re.IGNORECASE)


class RedactTokens(logging.Filter):
    """Replaces the value of ``token=`` query parameters in every record's message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "token=" in message.lower():
            record.msg, record.args = _TOKEN_IN_QUERY.sub(r"\1[redacted]", message), None
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, patient_data: bool) -> None:
        super().__init__()
        self.patient_data = patient_data

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key in _STANDARD or key.startswith("_"):
                continue
            if key in PATIENT_FIELDS and not self.patient_data:
                continue
            doc[key] = (
                value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
            )
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self, patient_data: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.patient_data = patient_data

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {
            k: v
            for k, v in vars(record).items()
            if k not in _STANDARD
            and not k.startswith("_")
            and (self.patient_data or k not in PATIENT_FIELDS)
        }
        return line + ("" if not extras else " " + " ".join(f"{k}={v}" for k, v in extras.items()))


def configure(fmt: str = "text", level: str = "INFO", patient_data: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(patient_data) if fmt == "json" else TextFormatter(patient_data)
    )
    handler.addFilter(RedactTokens())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # procrastinate logs two ~1 KB lines per job at INFO: millions a day at a region's volume.
    # Failures and retries it logs at WARNING and above still show; `solent jobs` shows the rest.
    # httpx logs every request (its URL names studies) at INFO: a DICOMweb migration printed
    # three lines per study over its own progress.
    for noisy in ("pynetdicom", "botocore", "urllib3", "alembic", "procrastinate", "httpx"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
