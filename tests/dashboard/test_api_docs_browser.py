"""The API docs page works with no network: Swagger UI comes from the installed package, not a CDN."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest

from .system import chromium, new_page, running_system

pytestmark = pytest.mark.browser


async def test_api_docs_render_from_packaged_assets_with_every_other_host_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    errors: list[str] = []
    off_host: list[str] = []
    async with running_system(tmp_path, monkeypatch, [], []) as system, chromium() as browser:
        page = await new_page(browser, errors)

        async def only_loopback(route):  # type: ignore[no-untyped-def]
            if urlsplit(route.request.url).hostname in ("127.0.0.1", "localhost"):
                await route.continue_()
            else:  # what a machine without internet sees
                off_host.append(route.request.url)
                await route.abort()

        await page.route("**/*", only_loopback)
        await page.goto(f"{system.base}/docs")
        title = page.locator(".swagger-ui .info .title")
        await title.wait_for()
        assert "faregate backend" in await title.inner_text()
        await page.locator(".opblock-summary-path", has_text="/api/v1/health").first.wait_for()
        assert off_host == []
        assert errors == []


async def test_docs_page_points_only_at_its_own_assets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_system(tmp_path, monkeypatch, [], []) as system:
        page = await system.api.get("/docs")
        assert page.status_code == 200
        assert "cdn." not in page.text and "https://" not in page.text
        script = await system.api.get("/docs/assets/swagger-ui-bundle.js")
        assert script.status_code == 200 and len(script.content) > 100_000
        redoc = await system.api.get("/redoc")
        assert redoc.status_code == 200 and "https://" not in redoc.text
