"""A screenshot of the chat page with a real reply and the token view (docs/serve-page.png).

Starts the server on 127.0.0.1 over the given models, drives headless Chromium (the system's)
through Playwright: one message, greedy, at the given beta; hovers a highlighted token so the
tooltip shows, and saves the page.

    .venv/bin/python benchmarks/page_screenshot.py L.gguf F.gguf B.gguf --beta 0.5 -o shot.png
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uvicorn  # noqa: E402
from playwright.sync_api import expect, sync_playwright  # noqa: E402

from localeft import Emulator  # noqa: E402
from localeft.server.app import create_app  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("large_base")
    ap.add_argument("small_ft")
    ap.add_argument("small_base")
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("-n", "--tokens", type=int, default=80)
    ap.add_argument("--message", default="Write a Python function that reverses a string.")
    ap.add_argument("-o", "--out", default="docs/serve-page.png")
    a = ap.parse_args()
    em = Emulator(a.large_base, a.small_ft, a.small_base, n_ctx=2048, beta=a.beta)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    name = Path(a.large_base).stem
    server = uvicorn.Server(uvicorn.Config(create_app(em, model=name), log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    chrome = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chrome, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(url + "/")
        expect(page.locator("#model")).to_contain_text(name)
        page.fill("#temperature", "0")
        page.fill("#max-tokens", str(a.tokens))
        page.fill("#prompt", a.message)
        page.press("#prompt", "Enter")
        expect(page.locator(".msg.assistant .stats")).to_be_visible(timeout=600_000)
        moved = page.locator(".msg.assistant .tok.moved").count()
        if moved:
            page.locator(".msg.assistant .tok.moved").nth(min(2, moved - 1)).hover()
        page.screenshot(path=a.out)
        browser.close()
    server.should_exit = True
    print(f"{a.out}: {moved} highlighted tokens")


if __name__ == "__main__":
    main()
