"""The screenshot in docs/serve.png: a trained run behind `groundup serve`, headless Chromium
(Debian's), generate, click a token.

    python benchmarks/serve_screenshot.py --run runs/char --out docs/serve.png
"""

from __future__ import annotations

import argparse

from playwright.sync_api import sync_playwright

from groundup.serve import ServerThread, build_app


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--out", default="docs/serve.png")
    ap.add_argument("--prompt", default="ROMEO:\n")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--click", type=int, default=40, help="the position of the token to click")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    with ServerThread(build_app(args.run, device="cpu")) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 760})
        page.goto(url + "/")
        page.wait_for_function("state.model !== null")
        page.fill("#prompt", args.prompt)
        page.fill("#max-tokens", str(args.tokens))
        page.fill("#seed", str(args.seed))
        page.click("#go")
        page.wait_for_selector("#output[data-done='1']")
        page.click(f".tok[data-pos='{args.click}']")
        page.wait_for_selector("#attention canvas.heatmap")
        page.screenshot(path=args.out, full_page=True)
        browser.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
