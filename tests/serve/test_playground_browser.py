"""The playground in a real browser: headless Chromium (Debian's ``chromium``) against a real server.

Chromium is driven through the DevTools protocol over ``--remote-debugging-pipe`` (JSON messages on file
descriptors 3 and 4), so no websocket library, Playwright or downloaded browser is needed. The test types
an input, clicks Generate, waits for the streamed output, checks it against the API's answer for the same
input and greedy settings, and saves a screenshot to ``artifacts/playground.png`` (or
``$T5KIT_ARTIFACTS/playground.png``).
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import missing_system_part

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serve_helpers import CLEAN_EXIT, Server, save_tiny_checkpoint  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("T5KIT_ARTIFACTS", Path(__file__).resolve().parents[2] / "artifacts"))


class Browser:
    """Headless Chromium speaking the DevTools protocol over a pipe; every wait is bounded."""

    def __init__(self, user_data_dir: Path, width: int = 1100, height: int = 820):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_fds() -> None:  # the browser reads commands on fd 3 and writes replies on fd 4
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-dev-shm-usage",
                "--remote-debugging-pipe",
                f"--user-data-dir={user_data_dir}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=wire_fds,
            pass_fds=(3, 4),  # kept open across exec (the child closes other fds after wire_fds)
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self.events: queue.Queue[dict] = queue.Queue()
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable", session=True)
        self.call("Runtime.enable", session=True)
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=True,
        )

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_browser, 1 << 16)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message:
                    with self._cond:
                        self._replies[message["id"]] = message
                        self._cond.notify_all()
                else:
                    self.events.put(message)

    def call(
        self, method: str, params: dict | None = None, session: bool = False, timeout: float = 30.0
    ) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        with self._cond:
            if not self._cond.wait_for(lambda: message["id"] in self._replies, timeout):
                raise TimeoutError(f"no reply to {method} within {timeout} s")
            reply = self._replies.pop(message["id"])
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def js(self, expression: str):
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=True,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0, what: str = "") -> object:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"{what or expression} did not happen within {timeout} s")

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", {"url": url}, session=True)
        self.wait_for("document.readyState === 'complete'", what=f"loading {url}")

    def click(self, selector: str) -> None:
        """A real mouse click at the element's centre."""
        box = self.js(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
            ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.call(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": box[0], "y": box[1], "button": "left", "clickCount": 1},
                session=True,
            )

    def type(self, selector: str, text: str) -> None:
        """Focus the field, clear it, and type ``text`` as keyboard input."""
        self.js(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
            "e.focus(); e.select(); })()"
        )
        self.call(
            "Input.dispatchKeyEvent",
            {"type": "keyDown", "key": "Backspace", "code": "Backspace", "windowsVirtualKeyCode": 8},
            session=True,
        )
        self.call(
            "Input.dispatchKeyEvent",
            {"type": "keyUp", "key": "Backspace", "code": "Backspace", "windowsVirtualKeyCode": 8},
            session=True,
        )
        for ch in text:
            self.call("Input.dispatchKeyEvent", {"type": "char", "text": ch}, session=True)

    def screenshot(self, path: Path) -> Path:
        data = self.call(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=True
        )["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (TimeoutError, RuntimeError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass


def _random_adapter(checkpoint: Path, directory: Path) -> Path:
    """A LoRA adapter over ``checkpoint`` with random (not identity) matrices, in peft's layout."""
    import torch

    from t5kit import T5Model
    from t5kit.adapters import LoRAConfig, add_lora, lora_layers, save_adapter

    model = T5Model.from_pretrained(str(checkpoint))
    add_lora(model, LoRAConfig(r=4, alpha=8, targets=("q", "v", "wo")))
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator) * 0.3)
    return save_adapter(model, directory)


@pytest.mark.slow
def test_playground_generates_in_a_real_browser(tmp_path):
    if not Path(CHROMIUM).exists():
        missing_system_part("chromium is not installed (Debian: apt-get install -y chromium)")
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny-t5")
    adapter = _random_adapter(checkpoint, tmp_path / "adapter-fr")
    server = Server(checkpoint, tmp_path / "server.log", "--adapter", f"fr={adapter}")
    browser = None
    try:
        browser = Browser(tmp_path / "chromium-profile")
        browser.navigate(server.url + "/")
        assert browser.js("document.title") == "t5kit playground"
        browser.wait_for(
            "!document.getElementById('model').textContent.includes('loading')", what="model info"
        )
        browser.js(
            "document.getElementById('task').value = 'translate_en_de';"
            "document.getElementById('task').dispatchEvent(new Event('change'));"
            "document.getElementById('max_new_tokens').value = '24';"
        )
        text = "The house is wonderful."
        browser.type("#input", text)
        assert browser.js("document.getElementById('input').value") == text
        assert browser.js("document.getElementById('stream').checked") is True
        browser.click("#generate")
        browser.wait_for(
            "document.getElementById('status').dataset.state === 'done'",
            timeout=60,
            what="the generation to finish",
        )
        shown = browser.js("document.getElementById('output').textContent")
        stats = browser.js("document.getElementById('stats').textContent")
        expected = httpx.post(
            server.url + "/v1/generate",
            timeout=60,
            json={"inputs": text, "task": "translate_en_de", "parameters": {"max_new_tokens": 24}},
        ).json()
        assert shown and shown == expected["outputs"][0]["text"]
        assert f"{expected['outputs'][0]['output_tokens']} tokens" in stats
        # The adapter the server holds is offered, and a generation with it is the API's with that adapter.
        assert browser.js("document.getElementById('adapter-row').hidden") is False
        assert browser.js("[...document.getElementById('adapter').options].map(o => o.value).join(',')") == ",fr"
        browser.js("document.getElementById('adapter').value = 'fr';")
        browser.click("#generate")
        browser.wait_for("document.getElementById('status').dataset.state === 'done'", timeout=60,
                         what="the generation with the adapter to finish")
        adapted = httpx.post(
            server.url + "/v1/generate",
            timeout=60,
            json={"inputs": text, "task": "translate_en_de", "adapter": "fr", "parameters": {"max_new_tokens": 24}},
        ).json()["outputs"][0]["text"]
        assert browser.js("document.getElementById('output').textContent") == adapted != shown
        shot = browser.screenshot(ARTIFACTS / "playground.png")
        print(f"playground screenshot: {shot}")
        assert shot.stat().st_size > 10_000
    finally:
        if browser is not None:
            browser.close()
        assert server.stop() in CLEAN_EXIT, server.output()
