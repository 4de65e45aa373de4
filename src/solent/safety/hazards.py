"""The hazard log (DCB0129, R45) and known limitations (R46), read from the package's data files.

The log is data (``hazard_log.toml``) so that a trust's Clinical Safety Officer exports the same
entries the project reviews, and a unit test holds every control's evidence (pytest node ids) to
tests that exist. Risk ratings are computed from severity and likelihood with DCB0129's 5x5
matrix, never written by hand, so a rating cannot disagree with its inputs.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from solent.errors import ConfigurationError

SEVERITIES = ("minor", "significant", "considerable", "major", "catastrophic")
LIKELIHOODS = ("very-low", "low", "medium", "high", "very-high")

# DCB0129 clinical risk matrix: rows are likelihood (very low .. very high), columns severity
# (minor .. catastrophic); what each rating asks for is RISK_MEANING.
_MATRIX = (
    (1, 1, 2, 2, 3),
    (1, 2, 2, 3, 4),
    (2, 2, 3, 3, 4),
    (2, 3, 3, 4, 5),
    (3, 4, 4, 5, 5),
)
RISK_MEANING = {
    1: "acceptable, no further action",
    2: "acceptable where further reduction is impractical or costs more than it gains",
    3: "undesirable: acceptable only when further reduction is impractical (CSO sign-off)",
    4: "unacceptable: further controls mandatory",
    5: "unacceptable",
}
# The identity and imaging hazards R45 says must each be explicit entries.
R45_TOPICS = (
    "wrong merge",
    "missed merge",
    "cross-trust ID collision",
    "stale demographics",
    "rejected-but-visible images",
    "lossy images used for primary diagnosis",
)
CONTROL_KINDS = ("design", "deployment")


def risk(severity: str, likelihood: str) -> int:
    """The DCB0129 risk rating (1-5) of a severity and likelihood named as in the log."""
    return _MATRIX[LIKELIHOODS.index(likelihood)][SEVERITIES.index(severity)]


@dataclass(frozen=True, slots=True)
class Rating:
    severity: str
    likelihood: str

    @property
    def risk(self) -> int:
        return risk(self.severity, self.likelihood)


@dataclass(frozen=True, slots=True)
class Control:
    id: str
    kind: str  # design: this software does it (evidence: tests); deployment: the trust does it
    description: str
    evidence: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Hazard:
    id: str
    title: str
    causes: tuple[str, ...]
    effect: str
    harm: str
    initial: Rating
    residual: Rating
    controls: tuple[Control, ...]
    settings: tuple[str, ...]
    r45: str


@dataclass(frozen=True, slots=True)
class Limitation:
    id: str
    title: str
    detail: str
    hazards: tuple[str, ...]
    docs: str


def _data(name: str) -> dict[str, Any]:
    text = resources.files("solent.safety").joinpath(name).read_text(encoding="utf-8")
    return tomllib.loads(text)


def _rating(where: str, raw: Any) -> Rating:
    if not isinstance(raw, dict):
        raise ConfigurationError(f"{where}: expected {{severity, likelihood}}")
    sev, like = raw.get("severity"), raw.get("likelihood")
    if sev not in SEVERITIES:
        raise ConfigurationError(f"{where}: severity {sev!r} is not one of {', '.join(SEVERITIES)}")
    if like not in LIKELIHOODS:
        raise ConfigurationError(
            f"{where}: likelihood {like!r} is not one of {', '.join(LIKELIHOODS)}"
        )
    return Rating(sev, like)


def _control(hazard_id: str, raw: dict[str, Any]) -> Control:
    cid = str(raw.get("id", ""))
    if not cid.startswith(hazard_id + ".C"):
        raise ConfigurationError(f"{hazard_id}: control id {cid!r} must start {hazard_id}.C")
    kind = raw.get("kind")
    if kind not in CONTROL_KINDS:
        raise ConfigurationError(f"{cid}: kind {kind!r} is not one of {', '.join(CONTROL_KINDS)}")
    evidence = tuple(raw.get("evidence", ()))
    if kind == "deployment" and evidence:
        raise ConfigurationError(f"{cid}: a deployment control's evidence is the trust's own")
    return Control(cid, kind, str(raw["description"]), evidence)


def parse_hazard_log(data: dict[str, Any]) -> tuple[Hazard, ...]:
    """The hazards of a parsed log; raises ConfigurationError naming the entry at fault."""
    hazards: list[Hazard] = []
    seen: set[str] = set()
    for raw in data.get("hazard", []):
        hid = str(raw.get("id", ""))
        if not hid.startswith("HAZ-") or hid in seen:
            raise ConfigurationError(f"hazard id {hid!r} is not a new HAZ-nnn id")
        seen.add(hid)
        missing = [k for k in ("title", "causes", "effect", "harm", "control") if not raw.get(k)]
        if missing:
            raise ConfigurationError(f"{hid}: missing {', '.join(missing)}")
        r45 = str(raw.get("r45", ""))
        if r45 and r45 not in R45_TOPICS:
            raise ConfigurationError(f"{hid}: r45 {r45!r} is not one of {', '.join(R45_TOPICS)}")
        hazards.append(
            Hazard(
                id=hid,
                title=str(raw["title"]),
                causes=tuple(raw["causes"]),
                effect=str(raw["effect"]),
                harm=str(raw["harm"]),
                initial=_rating(f"{hid} initial", raw.get("initial")),
                residual=_rating(f"{hid} residual", raw.get("residual")),
                controls=tuple(_control(hid, c) for c in raw["control"]),
                settings=tuple(raw.get("settings", ())),
                r45=r45,
            )
        )
    return tuple(hazards)


def hazard_log() -> tuple[Hazard, ...]:
    """The hazard log shipped with this release."""
    return parse_hazard_log(_data("hazard_log.toml"))


def limitations() -> tuple[Limitation, ...]:
    """The known limitations shipped with this release."""
    return tuple(
        Limitation(
            id=str(raw["id"]),
            title=str(raw["title"]),
            detail=str(raw["detail"]),
            hazards=tuple(raw.get("hazards", ())),
            docs=str(raw.get("docs", "")),
        )
        for raw in _data("limitations.toml").get("limitation", [])
    )
