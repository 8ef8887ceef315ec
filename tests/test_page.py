"""The chat page in a real browser: headless Chromium (the system's, Debian's `chromium`) driven
by Playwright against the real server. Never skipped: without Chromium it fails and says how
to install it. The screenshot is kept in the test's tmp dir (and in $LOCALEFT_ARTEFACTS if
set)."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from pathlib import Path

import pytest
from liveserver import running

from localeft import tokenview
from localeft.server.app import STATIC, create_app

HI = [{"role": "user", "content": "hi"}]


def chromium() -> str:
    path = (
        os.environ.get("LOCALEFT_CHROMIUM")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
    )
    if not path:
        pytest.fail(
            "the browser test needs Chromium: `scripts/install.sh --test` installs it "
            "(Debian/Ubuntu: apt-get install chromium), or set LOCALEFT_CHROMIUM=/path/to/chrome"
        )
    return path


def test_the_chat_page_streams_and_sends_beta_and_mode(make_em, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    em = make_em()
    with running(create_app(em, model="tiny")) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            bodies, elsewhere = [], []

            def seen(request):
                if request.url == url + "/v1/chat/completions":
                    bodies.append(json.loads(request.post_data))
                elif not request.url.startswith((url, "data:")):
                    elsewhere.append(request.url)

            page.on("request", seen)
            page.goto(url + "/")
            expect(page.locator("#model")).to_contain_text("tiny")
            page.fill("#temperature", "0")
            page.fill("#max-tokens", "40")

            # first message: the worker is held, so the reply is seen streaming, then complete
            with em.group.lock:
                page.fill("#prompt", "hi")
                page.press("#prompt", "Enter")
                expect(page.locator(".msg.user .body")).to_have_text("hi")
                expect(page.locator(".msg.assistant.streaming")).to_have_count(1)
                expect(page.locator("#stop")).to_be_visible()
            first = page.locator(".msg.assistant").nth(0)
            expect(first.locator(".stats")).to_contain_text("tok/s")
            expect(page.locator(".msg.assistant.streaming")).to_have_count(0)
            g = em.chat(HI, temperature=0, max_tokens=40)
            assert first.locator(".tok").count() == len(g.tokens)
            assert bodies[0]["beta"] == 1 and bodies[0]["mode"] == "eft"
            assert bodies[0]["stream"] is True and bodies[0]["logprobs"] is True

            # the token view: highlighted tokens carry a shade, hovering shows their log-probs
            moved = first.locator(".tok.moved")
            assert moved.count() > 0
            moved.first.hover()
            expect(page.locator("#tip")).to_be_visible()
            expect(page.locator("#tip")).to_contain_text("EFT")
            expect(page.locator("#tip")).to_contain_text("large base")

            # move the slider and switch the mode: the next request carries them
            page.locator("#beta").fill("1.5")
            expect(page.locator("#beta-value")).to_have_text("1.50")
            page.locator("label", has_text=re.compile("^large$")).click()
            page.fill("#prompt", "and then?")
            page.click("#send")
            second = page.locator(".msg.assistant").nth(1)
            expect(second.locator(".stats")).to_contain_text("beta 1.50")
            assert bodies[1]["beta"] == 1.5 and bodies[1]["mode"] == "large"
            assert [m["role"] for m in bodies[1]["messages"]] == ["user", "assistant", "user"]
            page.mouse.move(5, 5)
            shot = tmp_path / "chat-page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("LOCALEFT_ARTEFACTS"):
                out = Path(os.environ["LOCALEFT_ARTEFACTS"])
                out.mkdir(parents=True, exist_ok=True)
                shutil.copy(shot, out / shot.name)
            assert elsewhere == []  # nothing fetched from anywhere but the server
        finally:
            browser.close()


def test_the_page_uses_the_token_view_colours():
    """The page's shades are tokenview.py's (one look for terminal, HTML page and chat page)."""
    css = (STATIC / "style.css").read_text()
    for i, (bg, fg) in enumerate(zip(tokenview._HTML_BG, tokenview._HTML_FG)):
        assert f".s{i} {{ background: {bg}; color: {fg}; }}" in css
    js = (STATIC / "app.js").read_text()
    assert f"const BINS = [{', '.join(f'{b:g}' for b in tokenview.BINS)}];" in js
    for name in ("index.html", "app.js", "style.css"):
        text = (STATIC / name).read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text


def test_new_chat_during_a_reply_starts_a_clean_conversation(make_em, monkeypatch):
    """ "new chat" while a reply streams: the half reply stays out of the next conversation."""
    from playwright.sync_api import expect, sync_playwright

    from localeft.textstream import TextStream

    em = make_em()
    gate, fed = threading.Event(), []
    real_feed = TextStream.feed

    def feed(self, piece):  # the first reply pauses inside its 3rd token
        fed.append(piece)
        if len(fed) == 3:
            gate.wait(30)
        return real_feed(self, piece)

    monkeypatch.setattr(TextStream, "feed", feed)
    with running(create_app(em, model="tiny")) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            bodies = []
            page.on(
                "request",
                lambda r: (
                    bodies.append(json.loads(r.post_data))
                    if r.url == url + "/v1/chat/completions"
                    else None
                ),
            )
            page.goto(url + "/")
            expect(page.locator("#model")).to_contain_text("tiny")
            page.fill("#temperature", "0")
            page.fill("#prompt", "hi")
            page.press("#prompt", "Enter")
            expect(page.locator(".msg.assistant .tok")).to_have_count(2)  # half a reply
            page.click("#clear")
            expect(page.locator("#send")).to_be_visible()
            gate.set()
            page.fill("#prompt", "and then?")
            page.press("#prompt", "Enter")
            expect(page.locator(".msg.assistant .stats")).to_have_count(1)
            assert bodies[1]["messages"] == [{"role": "user", "content": "and then?"}]
        finally:
            gate.set()
            browser.close()
