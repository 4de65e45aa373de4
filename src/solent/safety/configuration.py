"""Configuration risks (R46): the settings a trust's DCB0160 safety case must look at, read from the
settings this node actually runs with, each with the hazard it bears on and what to do.

A rule is a small function of the settings, so a new risky setting is one entry in ``RULES``;
`solent safety configuration` lists every rule's finding, flagged or not, because a safety case
records the safe values too.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from solent.domain.procedures import parse_map
from solent.errors import InvalidInput
from solent.settings import ENV_PREFIX, Settings

# high: a hazard's main control is switched off; medium: a control is weakened; low: a
# secondary effect (slower, later); info: never flagged, a value the safety case records.
SEVERITIES = ("high", "medium", "low", "info")


@dataclass(frozen=True, slots=True)
class Finding:
    setting: str  # SOLENT_* name(s)
    value: str
    flagged: bool
    severity: str
    hazards: tuple[str, ...]
    concern: str  # what goes wrong when flagged (for info: what the value decides)
    advice: str


@dataclass(frozen=True, slots=True)
class _Rule:
    settings: tuple[str, ...]
    severity: str
    hazards: tuple[str, ...]
    concern: str
    advice: str
    value: Callable[[Settings], str]
    flagged: Callable[[Settings], bool]
    # Where the severity depends on the deployment (a loopback-only listener), this picks it.
    severity_of: Callable[[Settings], str] | None = None


def _procedure_map(s: Settings) -> str:
    """The map's path, or why there is none to use: a path that names no readable, valid map
    is no map (the node refuses to start with it, and reports it as none here)."""
    if not s.procedure_map:
        return "(empty)"
    try:
        parse_map(Path(s.procedure_map).read_text(encoding="utf-8-sig"), s.procedure_map)
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        return f"{s.procedure_map} (unreadable: {why})"
    except InvalidInput as exc:
        return f"{s.procedure_map} (invalid: {exc})"
    return s.procedure_map


def _env(*names: str) -> tuple[str, ...]:
    return tuple(ENV_PREFIX + n.upper() for n in names)


def _loopback(s: Settings) -> bool:
    try:
        return ipaddress.ip_address(s.bind_address).is_loopback
    except ValueError:
        return s.bind_address == "localhost"


def _plain_severity(s: Settings) -> str:
    """Plain text on a loopback-only listener (a local TLS proxy, a laptop) is a lesser risk."""
    return "low" if _loopback(s) else "high"


def _tls_port(port: int, ca: object) -> str:
    if port == -1:
        return "-1 (off)"
    return f"{port} ({'mutual TLS' if ca else 'TLS, no client certificates'})"


def _consumers(s: Settings) -> set[str]:
    return {c.strip() for c in s.jobs_consumers.split(",") if c.strip()}


def _on(v: bool) -> str:
    return "true" if v else "false"


RULES: tuple[_Rule, ...] = (
    _Rule(
        _env("hl7_allow_unknown_senders"),
        "high",
        ("HAZ-001", "HAZ-003", "HAZ-005"),
        "HL7 from unregistered senders is applied: any system that reaches the port may merge, "
        "link or update a registered trust's patients.",
        "Turn it off; register each PAS/RIS/EMPI feed with `solent hl7 sender add`.",
        lambda s: _on(s.hl7_allow_unknown_senders),
        lambda s: s.hl7_allow_unknown_senders,
    ),
    _Rule(
        _env("dicom_allow_unknown", "dicom_unknown_trust"),
        "high",
        ("HAZ-013", "HAZ-004"),
        "Unregistered DICOM nodes may associate and query, retrieve and store; what they store "
        "is filed under the unknown-node trust.",
        "Turn it off; register each node with `solent ae add ... --trust` and its --allow list.",
        lambda s: f"{_on(s.dicom_allow_unknown)} (trust {s.dicom_unknown_trust or 'none'})",
        lambda s: s.dicom_allow_unknown,
    ),
    _Rule(
        _env("demo_data"),
        "high",
        ("HAZ-003", "HAZ-013"),
        "Synthetic demo patients (NHS test numbers, DEMO^ names) are loaded among real ones.",
        "Off in any archive that holds, or will hold, real patients.",
        lambda s: _on(s.demo_data),
        lambda s: s.demo_data,
    ),
    _Rule(
        _env("production"),
        "medium",
        ("HAZ-003",),
        "NHS test-range numbers (999 000 0000-999 999 9999) count as ordinary numbers and link "
        "records across trusts.",
        "Turn it on in an archive that holds real patients; leave it off for demo, test and "
        "training archives only.",
        lambda s: _on(s.production),
        lambda s: not s.production,
    ),
    _Rule(
        _env("dicom_tls_port", "dicom_tls_ca"),
        "high",
        ("HAZ-013", "HAZ-007"),
        "DICOM travels in plain text (or without node certificates): images and identities can "
        "be read or altered on the network, and a node is known by its address only (R37).",
        "Set SOLENT_DICOM_TLS_PORT with a certificate and SOLENT_DICOM_TLS_CA (mutual TLS); "
        "keep the plain port reachable from this host or a private segment only.",
        lambda s: _tls_port(s.dicom_tls_port, s.dicom_tls_ca),
        lambda s: s.dicom_tls_port == -1 or s.dicom_tls_ca is None,
        lambda s: _plain_severity(s) if s.dicom_tls_port == -1 else "medium",
    ),
    _Rule(
        _env("hl7_tls_port", "hl7_tls_ca"),
        "high",
        ("HAZ-013", "HAZ-001"),
        "HL7 travels in plain text (or without sender certificates): ADT can be read, or sent "
        "by anything that takes a registered sender's address (R37).",
        "Set SOLENT_HL7_TLS_PORT with a certificate and SOLENT_HL7_TLS_CA (mutual TLS).",
        lambda s: _tls_port(s.hl7_tls_port, s.hl7_tls_ca),
        lambda s: s.hl7_tls_port == -1 or s.hl7_tls_ca is None,
        lambda s: _plain_severity(s) if s.hl7_tls_port == -1 else "medium",
    ),
    _Rule(
        _env("http_tls_cert"),
        "high",
        ("HAZ-013",),
        "HTTP (viewer, DICOMweb, FHIR, bearer tokens) is served in plain text (R37).",
        "Set SOLENT_HTTP_TLS_CERT and SOLENT_HTTP_TLS_KEY, or terminate TLS at a balancer on "
        "this host or a private segment (and name it in SOLENT_HTTP_FORWARDED_FROM).",
        lambda s: "(unset: plain HTTP)" if s.http_tls_cert is None else str(s.http_tls_cert),
        lambda s: s.http_tls_cert is None,
        lambda s: "low" if _loopback(s) or s.http_forwarded_from else "high",
    ),
    _Rule(
        _env("proxy_protocol", "proxy_protocol_from"),
        "high",
        ("HAZ-013", "HAZ-001"),
        "PROXY headers are believed from anyone: a client can claim a registered node's or "
        "sender's address.",
        "Name the balancers in SOLENT_PROXY_PROTOCOL_FROM.",
        lambda s: f"{_on(s.proxy_protocol)} (from {s.proxy_protocol_from or 'any'})",
        lambda s: s.proxy_protocol and not s.proxy_protocol_from,
    ),
    _Rule(
        _env("stow_default_trust"),
        "medium",
        ("HAZ-004", "HAZ-013"),
        "STOW-RS from a caller with no trust is filed under this trust, as if it had sent it.",
        "Leave it empty; give each sending system an account of its own trust.",
        lambda s: s.stow_default_trust or "(empty)",
        lambda s: bool(s.stow_default_trust),
    ),
    _Rule(
        _env("conflict_policy"),
        "medium",
        ("HAZ-009", "HAZ-022"),
        "An instance re-sent under the same SOP Instance UID with different bytes replaces the "
        "one already stored and read.",
        "Use reject (the default): the first is kept and the sender told.",
        lambda s: s.conflict_policy,
        lambda s: s.conflict_policy == "replace",
    ),
    _Rule(
        _env("dicom_accept_unknown_sop_classes"),
        "low",
        ("HAZ-009",),
        "Private or unknown SOP classes are stored; the viewer may not be able to show them.",
        "Accept them only for the nodes that need it, and say so to users.",
        lambda s: _on(s.dicom_accept_unknown_sop_classes),
        lambda s: s.dicom_accept_unknown_sop_classes,
    ),
    _Rule(
        _env("jobs_consumers"),
        "medium",
        ("HAZ-016",),
        "Rules-based prior prefetch (R47) is not running: priors from other trusts are cold "
        "when an order, admission or study arrives.",
        "Add prefetch to SOLENT_JOBS_CONSUMERS (with procedures for R19 coding).",
        lambda s: s.jobs_consumers or "(empty)",
        lambda s: "prefetch" not in _consumers(s),
    ),
    _Rule(
        _env("jobs_consumers"),
        "low",
        ("HAZ-009",),
        "No fixity check: a stored blob that decays or is lost is found only when someone "
        "opens it.",
        "Add fixity to SOLENT_JOBS_CONSUMERS, and run `solent check` on a schedule.",
        lambda s: s.jobs_consumers or "(empty)",
        lambda s: "fixity" not in _consumers(s),
    ),
    _Rule(
        _env("prefetch_max_priors"),
        "medium",
        ("HAZ-016",),
        "Prefetch warms no prior at all.",
        "Set at least 1 (default 3), as the consortium's radiologists agree.",
        lambda s: str(s.prefetch_max_priors),
        lambda s: s.prefetch_max_priors == 0,
    ),
    _Rule(
        _env("prefetch_max_age_days"),
        "low",
        ("HAZ-016",),
        "Priors older than a year are not prefetched.",
        "The default is 1825 days (5 years); agree a shorter period with the radiologists.",
        lambda s: str(s.prefetch_max_age_days),
        lambda s: s.prefetch_max_age_days < 365,
    ),
    _Rule(
        _env("prefetch_relevance"),
        "info",
        ("HAZ-016",),
        "What makes a prior relevant for prefetch, best match first.",
        "Record the consortium's agreed rule in the safety case.",
        lambda s: s.prefetch_relevance,
        lambda s: False,
    ),
    _Rule(
        _env("procedure_map"),
        "low",
        ("HAZ-016",),
        "No procedure map (none set, or a file that cannot be read as one, which `solent "
        "serve` refuses): only codes trusts already send as NICIP/SNOMED CT count as mapped, "
        "so prefetch relevance by code and body region misses the rest.",
        "Load the consortium's map (`solent procedures check FILE` first).",
        lambda s: _procedure_map(s),
        lambda s: _procedure_map(s) != s.procedure_map,
    ),
    _Rule(
        _env("dicomweb_cache_mb"),
        "low",
        ("HAZ-016",),
        "The DICOMweb response cache is off: prefetched series metadata is not kept in memory.",
        "Keep the default 64 MB or size it as docs/operations.md says.",
        lambda s: str(s.dicomweb_cache_mb),
        lambda s: s.dicomweb_cache_mb == 0,
    ),
    _Rule(
        _env("dicomweb_access_cache_seconds"),
        "low",
        ("HAZ-012",),
        "A revoked access or an expired break-glass grant is honoured only after this long on "
        "DICOMweb.",
        "Keep it at 5 seconds or less.",
        lambda s: str(s.dicomweb_access_cache_seconds),
        lambda s: s.dicomweb_access_cache_seconds > 5,
    ),
    _Rule(
        _env("break_glass_minutes"),
        "medium",
        ("HAZ-014",),
        "A break-glass grant outlasts a shift (more than 8 hours).",
        "Keep it to the emergency (default 240 minutes); users break glass again if needed.",
        lambda s: str(s.break_glass_minutes),
        lambda s: s.break_glass_minutes > 480,
    ),
    _Rule(
        _env("audit_retention_years", "retention_adult_years"),
        "medium",
        ("HAZ-019",),
        "Audit records are purged before the images they concern: who looked at a patient "
        "cannot be answered while the images are still kept (R38).",
        "Set 0 (keep as long as the archive) or at least SOLENT_RETENTION_ADULT_YEARS, as "
        "Information Governance decides.",
        lambda s: (
            f"{s.audit_retention_years or '0 (as long as the archive)'} "
            f"(images: {s.retention_adult_years})"
        ),
        lambda s: 0 < s.audit_retention_years < s.retention_adult_years,
    ),
    _Rule(
        _env("audit_syslog_url"),
        "medium",
        ("HAZ-019",),
        "Audit messages exported over UDP syslog are lost silently when the network drops them.",
        "Use tls://host:port (RFC 5425) with SOLENT_AUDIT_SYSLOG_CA_FILE.",
        lambda s: s.audit_syslog_url or "(empty: kept in the archive only)",
        lambda s: s.audit_syslog_url.startswith("udp://"),
    ),
    _Rule(
        _env("log_patient_data"),
        "medium",
        ("HAZ-013",),
        "Patient identifiers are written to logs, outside the audited access rules.",
        "Turn it off (logs then carry UIDs only).",
        lambda s: _on(s.log_patient_data),
        lambda s: s.log_patient_data,
    ),
    _Rule(
        _env("cors_origins"),
        "medium",
        ("HAZ-013",),
        "Any web page may call DICOMweb from a signed-in user's browser.",
        "Name the viewer origins instead of *.",
        lambda s: s.cors_origins or "(empty)",
        lambda s: "*" in s.cors_origins.split(","),
    ),
    _Rule(
        _env("mdt_heartbeat_seconds"),
        "low",
        ("HAZ-015",),
        "A presenter on a node that died stays in the room, blocking its replacement, for "
        "three times this long.",
        "Keep it at a few seconds (default 2).",
        lambda s: str(s.mdt_heartbeat_seconds),
        lambda s: s.mdt_heartbeat_seconds > 10,
    ),
    _Rule(
        _env("retention_policy", "retention_adult_years"),
        "info",
        ("HAZ-010",),
        "Retention periods (R42): code = the Records Management Code of Practice minimums; rcr "
        "= also the RCR's 30 years after last contact.",
        "Record the consortium's choice in the safety case.",
        lambda s: f"{s.retention_policy} (adults {s.retention_adult_years} years)",
        lambda s: False,
    ),
    _Rule(
        _env("missing_patient_id_policy"),
        "info",
        ("HAZ-009",),
        "Images without a Patient ID are filed under an unidentified record per study "
        "(placeholder) or refused (reject).",
        "Record the choice; placeholder records go to reconciliation (R11).",
        lambda s: s.missing_patient_id_policy,
        lambda s: False,
    ),
    _Rule(
        _env("hl7_link_senders"),
        "info",
        ("HAZ-003",),
        "MSH-4 facilities besides registered trusts allowed to link and unlink across trusts "
        "(A24/A37).",
        "Name the consortium EMPI only.",
        lambda s: s.hl7_link_senders or "(empty)",
        lambda s: False,
    ),
)


def findings(settings: Settings) -> list[Finding]:
    """Every rule's finding for these settings, flagged first, most severe first."""
    out = []
    for rule in RULES:
        flagged = rule.flagged(settings)
        severity = rule.severity_of(settings) if rule.severity_of and flagged else rule.severity
        out.append(
            Finding(
                setting=", ".join(rule.settings),
                value=rule.value(settings),
                flagged=flagged,
                severity=severity,
                hazards=rule.hazards,
                concern=rule.concern,
                advice=rule.advice,
            )
        )
    out.sort(key=lambda f: (not f.flagged, SEVERITIES.index(f.severity)))
    return out
