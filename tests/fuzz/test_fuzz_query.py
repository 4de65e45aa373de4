"""DICOMweb / C-FIND query keys from hostile clients: the shared query engine's parser and the
HTTP query endpoints. Only InvalidInput (a 400 with a readable body) may come out, never a 500."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from solent.app import Archive, build_archive
from solent.domain.attributes import ATTRIBUTES, Level
from solent.domain.principal import SYSTEM
from solent.errors import InvalidInput
from solent.settings import load_settings
from tests.fuzz.conftest import fuzz_settings

matching = pytest.importorskip("solent.domain.matching")

KEYWORDS = [a.keyword for a in ATTRIBUTES]
TEXT = st.characters(codec="utf-8", exclude_categories=("Cs",))
VALUE_PIECES = st.sampled_from(
    [
        "*",
        "?",
        "-",
        "\\",
        "^",
        "=",
        "%",
        "_",
        "'",
        '"',
        ";",
        "--",
        "/*",
        "..",
        "../",
        "{{7*7}}",
        "${jndi:x}",
        "20250101",
        "2025",
        "0101",
        "120000.5",
        "1.2.840.10008",
        "\x00",
        " ",
        "ZZA",
        "9990000018",
        "DEMO^ALICE",
        "NaN",
        "-1",
        "99999999999999999999",
    ]
)


@st.composite
def value(draw: st.DrawFn) -> str | list[str] | None:
    kind = draw(st.sampled_from(["pieces", "text", "list", "none"]))
    if kind == "none":
        return None
    if kind == "list":
        return draw(st.lists(st.text(TEXT, max_size=20), max_size=4))
    if kind == "text":
        return draw(st.text(TEXT, max_size=80))
    return "".join(draw(st.lists(VALUE_PIECES, max_size=6)))


keys = st.dictionaries(
    st.one_of(
        st.sampled_from(KEYWORDS),
        st.text(TEXT, max_size=20),
        st.sampled_from(
            ["00100020", "0020000D", "IssuerOfPatientID", "includefield", "fuzzymatching"]
        ),
    ),
    value(),
    max_size=8,
)


@fuzz_settings()
@given(
    level=st.sampled_from(list(Level)),
    query=keys,
    fuzzy=st.booleans(),
    linked=st.booleans(),
    model=st.sampled_from([None, *list(matching.InformationModel)]),
)
def test_parse_query_returns_a_query_or_invalid_input(
    level: Level, query: dict[str, str | list[str] | None], fuzzy: bool, linked: bool, model: object
) -> None:
    try:
        parsed = matching.parse_query(level, query, fuzzy_names=fuzzy, linked=linked, model=model)
    except InvalidInput as exc:
        assert str(exc)
        return
    assert isinstance(parsed, matching.Query)
    scoped = matching.scope_patient_identity(parsed, "ZZA")
    assert isinstance(scoped, matching.Query)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Archive]]:
    from solent.protocols.http import create_app
    from tests.conftest import http_headers

    archive = build_archive(load_settings(environ={}, data_dir=tmp_path_factory.mktemp("q") / "v"))
    archive.index.add_trust("ZZA", "Trust A")
    archive.index.add_trust("ZZB", "Trust B")
    with TestClient(create_app(archive), raise_server_exceptions=False) as c:
        c.headers.update(http_headers(archive))
        yield c, archive
    archive.close()


API_PARAMS = [
    "limit",
    "offset",
    "issuer",
    "patient_id",
    "nhs_number",
    "fuzzymatching",
    "includefield",
]
QUERY_PATHS = [
    "/api/studies",
    "/api/patients",
    "/api/audit",
    "/dicomweb/studies",
    "/dicomweb/series",
    "/dicomweb/instances",
    "/fhir/ImagingStudy",
    "/fhir/Patient",
]


@fuzz_settings(share=0.1)
@given(
    path=st.sampled_from(QUERY_PATHS),
    params=st.lists(
        st.tuples(
            st.one_of(
                st.sampled_from([*KEYWORDS, *API_PARAMS]),
                st.text(TEXT, max_size=12),
            ),
            st.text(TEXT, max_size=60),
        ),
        max_size=6,
    ),
)
def test_query_endpoints_never_fail_with_500(
    client: tuple[TestClient, Archive], path: str, params: list[tuple[str, str]]
) -> None:
    c, archive = client
    before = archive.query.list_studies(SYSTEM)
    r = c.get(path, params=params)
    assert r.status_code < 500, (path, params, r.status_code, r.text[:500])
    assert r.status_code in (200, 204, 400, 401, 403, 404, 406, 413, 422, 429), r.status_code
    assert archive.query.list_studies(SYSTEM) == before
