"""OHIF as the node serves it: its own app-config.js, SPA routes, 404s, no path traversal."""

from __future__ import annotations

from pathlib import Path

import yarl

from node.web.viewer import OHIF_VERSION, installed_ohif_dir

from web_support import add_users, browser, login, web_config, web_node


async def test_ohif_served_with_the_nodes_own_config(tmp_path: Path) -> None:
    dist = installed_ohif_dir()
    assert dist is not None, f"OHIF {OHIF_VERSION} is not unpacked: run scripts/bootstrap.sh"
    cfg = web_config(tmp_path / "n")
    add_users(cfg.data_dir)
    async with web_node(cfg) as (node, web):
        async with browser() as anonymous:   # the viewer, like everything else, needs a login
            resp = await anonymous.get(web.url + "viewer?StudyInstanceUIDs=1.2.3",
                                       allow_redirects=False)
            assert resp.status == 303 and resp.headers["Location"].startswith("/login?next=")
            assert (await anonymous.get(web.url + "app-config.js", allow_redirects=False)).status == 303
        async with browser() as client:
            await login(client, web.url, "alice")
            config = await (await client.get(web.url + "app-config.js")).text()
            assert "window.location.origin + '/dicomweb'" in config
            assert "cloudfront" not in config and "https://" not in config   # never the shipped one
            assert "basicViewerTour" in config and '"investigationalUseDialog"' in config
            for route in ("viewer", "viewer/dicomweb", "segmentation"):
                resp = await client.get(web.url + route + "?StudyInstanceUIDs=1.2.3")
                assert resp.status == 200, route
                page = await resp.text()
                assert 'src="/app-config.js"' in page and "wasm-unsafe-eval" in resp.headers[
                    "Content-Security-Policy"]
            bundle = next(dist.glob("app.bundle.*.js")).name
            resp = await client.get(web.url + bundle)
            assert resp.status == 200 and "immutable" in resp.headers["Cache-Control"]
            for missing in ("nothere.bundle.js", "assets/nothere.png", "sw.js"):
                assert (await client.get(web.url + missing)).status == 404, missing
            worker = await (await client.get(web.url + "init-service-worker.js")).text()
            assert "unregister" in worker and "googleapis" not in worker
            for evil in ("assets/../../../../../../etc/passwd", "%2e%2e/%2e%2e/%2e%2e/etc/passwd",
                         "static/..%2f..%2f..%2fetc%2fpasswd", "..%5c..%5cetc%5cpasswd"):
                resp = await client.get(yarl.URL(web.url + evil, encoded=True),
                                        allow_redirects=False)   # sent as written
                assert "root:x:0:0" not in await resp.text(), evil
                assert resp.status in (403, 404), (evil, resp.status)
            resp = await client.post(web.url + "viewer", headers={"X-CSRF-Token": "x"})
            assert resp.status in (403, 404)


async def test_viewer_missing_says_how_to_install(tmp_path: Path) -> None:
    from node.web.service import WebService
    from node.web.settings import WebSettings

    cfg = web_config(tmp_path / "n")
    add_users(cfg.data_dir)
    service = WebService(settings=WebSettings(secure=False, ohif_dir=None))
    async with web_node(cfg, web=service) as (node, web), browser() as client:
        await login(client, web.url, "alice")
        resp = await client.get(web.url + "viewer?StudyInstanceUIDs=1")
        assert resp.status == 503 and "bootstrap.sh" in await resp.text()
        assert (await client.get(web.url + "app.bundle.js")).status == 404
