"""Fixtures shared by the browser test modules: one demo server for the interop package (starting
it costs a minute) and one chromium per module; each test gets the browser with its pages closed
after it, so a finished test's viewers take no CPU from the next. Chromium is per module, not
per package: Playwright's sync API keeps an event loop running in the thread while chromium is
open, and other modules run by the same pytest process call asyncio.run()."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import RunningServer, start_server
from tests.interop.oidc_provider import Account, OidcProvider
from tests.interop.viewer_support import PASSWORD, add_user, chromium, require_browser


@pytest.fixture(scope="package")
def idp() -> Iterator[OidcProvider]:
    """The region's identity provider (a minimal one on loopback): dr.sso, a ZZA radiologist."""
    provider = OidcProvider({"dr.sso": Account(PASSWORD, "ZZA", ("radiologist",))})
    yield provider
    provider.stop()


@pytest.fixture(scope="package")
def demo(tmp_path_factory: pytest.TempPathFactory, idp: OidcProvider) -> Iterator[RunningServer]:
    """`solent serve` with the demo data, the users rad (radiologist) and drza (clinician), and
    single sign-on with `idp` offered in the viewer."""
    require_browser()
    srv = start_server(
        tmp_path_factory.mktemp("viewer") / "srv",
        extra_env={"SOLENT_DEMO_DATA": "true", **idp.settings_env()},
        timeout=240,
    )
    srv.env["SOLENT_DEMO_DATA"] = "true"
    idp.redirect_uris.add(f"{srv.base_url}/viewer/")
    add_user(srv, "rad", "ZZA", "radiologist")
    add_user(srv, "drza", "ZZA", "clinician")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def chromium_session() -> Iterator[Any]:
    require_browser()
    with chromium() as b:
        yield b


@pytest.fixture
def browser(chromium_session: Any) -> Iterator[Any]:
    yield chromium_session
    for context in list(chromium_session.contexts):
        context.close()
