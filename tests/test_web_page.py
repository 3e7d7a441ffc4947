"""The web chat page in a real headless browser (Debian's chromium driven by Playwright): it streams the answer
token by token and keeps the conversation. Skips only outside CI when chromium is not installed."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from lmforge.inference.server import BackgroundServer, app_for_run

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

if not os.path.exists(CHROMIUM) and not os.environ.get("CI"):
    pytest.skip("chromium is not installed (apt-get install chromium); CI installs it", allow_module_level=True)

if os.environ.get("CI"):  # in CI a missing Playwright is a failure, not a skip
    from playwright.sync_api import sync_playwright
else:
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright

# Records every text an assistant bubble showed, to see that the answer arrives in pieces.
WATCH = """
window.__updates = [];
new MutationObserver((records) => {
  for (const r of records) {
    const el = r.target.nodeType === 1 ? r.target : r.target.parentElement;
    const bubble = el && el.closest && el.closest('.assistant');
    // setting textContent replaces the bubble's text node: the added node keeps the text of that moment
    if (bubble) for (const n of r.addedNodes) window.__updates.push(n.textContent);
  }
}).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});
"""


@pytest.fixture(scope="module")
def url(tiny_run):
    with BackgroundServer(app_for_run(tiny_run, max_batch=4)) as u:
        yield u


def test_page_streams_an_answer_and_keeps_the_conversation(url):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            bodies: list[dict] = []
            page.on("request", lambda r: bodies.append(json.loads(r.post_data))
                    if r.url.endswith("/v1/chat/completions") else None)
            page.goto(url + "/")
            page.wait_for_function("document.getElementById('model').textContent.length > 1 && "
                                   "!document.getElementById('model').textContent.startsWith('…')")
            page.fill("#max-tokens", "40")
            page.evaluate(WATCH)

            page.fill("#input", "Tell me a story about a cat.")
            page.click("#send")
            page.wait_for_selector(".assistant[data-streaming='false']", timeout=60_000)
            first = page.inner_text(".assistant")
            assert first.strip(), "no answer appeared"
            updates = page.evaluate("window.__updates")
            growing = [u for u in updates if u]
            assert len(set(growing)) > 1, f"the answer did not stream: {updates}"  # several partial texts
            assert all(first.startswith(u.strip()) or u.strip() == "" for u in growing)  # each a prefix

            # a second turn: the request carries the whole conversation
            page.fill("#input", "And then?")
            page.press("#input", "Enter")
            page.wait_for_function("document.querySelectorAll(\".assistant[data-streaming='false']\").length == 2",
                                   timeout=60_000)
            assert page.locator(".msg.user").all_inner_texts() == ["Tell me a story about a cat.", "And then?"]
            assert len(bodies) == 2 and bodies[1]["stream"] is True
            roles = [m["role"] for m in bodies[1]["messages"]]
            assert roles == ["user", "assistant", "user"]
            assert bodies[1]["messages"][1]["content"] == first.strip()
            assert not page.locator(".msg.error").count()
        finally:
            browser.close()
