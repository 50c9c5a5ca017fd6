"""The web page in a real browser (headless Chromium driven by Playwright): generate, click a
token, and check the attention heatmaps hold and draw what the API computes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from groundup.serve import ServerThread, build_app


CHROMIUM = os.environ.get("GROUNDUP_CHROMIUM", "/usr/bin/chromium")
SCREENSHOT = os.environ.get("GROUNDUP_SCREENSHOT")  # set to write the docs' screenshot


def _browser_or_skip():
    """Playwright and Debian's chromium; in CI (CI=true) their absence fails instead of skipping."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    missing = [name for name, ok in [("the playwright package (pip, dev extra)", sync_playwright is not None),
                                     (f"chromium at {CHROMIUM} (apt-get install -y chromium)",
                                      Path(CHROMIUM).exists() or shutil.which(CHROMIUM))] if not ok]
    if missing:
        message = "the browser test needs " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; CI must run it (.ci/run installs chromium)")
        pytest.skip(message)
    return sync_playwright


@pytest.fixture(scope="module")
def run_dir(served_run):
    return served_run


def test_page_generates_and_draws_the_attention_the_api_returns(run_dir):
    sync_playwright = _browser_or_skip()
    app = build_app(run_dir, device="cpu")
    with ServerThread(app) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url + "/")
            page.wait_for_function("document.getElementById('model-name').textContent.includes('tinyrun')")
            page.fill("#prompt", "ROMEO:\n")
            page.fill("#max-tokens", "12")
            page.fill("#seed", "4")
            page.click("#go")
            page.wait_for_selector("#output[data-done='1']", timeout=20_000)
            generated = page.locator(".tok:not(.prompt)")
            assert generated.count() == 12
            probs = [float(generated.nth(k).get_attribute("data-prob")) for k in range(12)]
            assert all(0 < q <= 1 for q in probs)

            position = 10  # a generated token: 7 prompt characters, then the 4th generated one
            page.click(f".tok[data-pos='{position}']")
            page.wait_for_selector("#attention canvas.heatmap")
            ids = page.evaluate("state.ids")
            inspection = page.request.post(url + "/api/inspect", data=json.dumps({"ids": ids}),
                                           headers={"content-type": "application/json"}).json()
            # the colour of each generated token is the probability the model gave it
            assert probs == pytest.approx(inspection["token_probs"][7:], abs=1e-4)
            canvases = page.locator("#attention canvas.heatmap")
            assert canvases.count() == inspection["n_layer"]
            for layer in range(inspection["n_layer"]):
                canvas = canvases.nth(layer)
                weights = json.loads(canvas.get_attribute("data-weights"))
                assert json.loads(canvas.get_attribute("data-kinds")) == inspection["head_kinds"][layer]
                expected = [head[position][: position + 1] for head in inspection["attention"][layer]]
                assert len(weights) == inspection["n_head"] and len(weights[0]) == position + 1
                assert sum(weights, []) == pytest.approx(sum(expected, []), abs=1e-6)
                # the pixels: the centre of each cell has the colour of the API's weight
                geometry = {k: float(canvas.get_attribute(f"data-{k}")) for k in ("cell", "left", "top", "row-height")}
                for head in range(inspection["n_head"]):
                    for s in range(position + 1):
                        x = int(geometry["left"] + (s + 0.5) * geometry["cell"])
                        y = int(geometry["top"] + (head + 0.5) * geometry["row-height"])
                        pixel = canvas.evaluate(f"c => Array.from(c.getContext('2d').getImageData({x}, {y}, 1, 1).data.slice(0, 3))")
                        want = page.evaluate(f"groundupHeat({expected[head][s]})")
                        assert max(abs(a - b) for a, b in zip(pixel, want)) <= 1, (layer, head, s, pixel, want)
            top = page.locator("#dist tr")
            assert top.count() == 10
            assert float(top.nth(0).locator("td").nth(1).text_content()) == pytest.approx(inspection["top"][position][0]["prob"], abs=1e-4)
            if SCREENSHOT:
                page.screenshot(path=SCREENSHOT, full_page=True)

            page.click("button[data-tab='positions']")
            page.wait_for_function("document.getElementById('pe-dots').innerHTML.includes('polyline')")
            page.click("button[data-tab='embeddings']")
            page.wait_for_function("document.getElementById('pca').childElementCount > 10")
            page.click("#near-go")
            page.wait_for_function("document.getElementById('nearest').rows.length == 10")
        finally:
            browser.close()
