"""A headless Chromium driven through the DevTools protocol over a pipe (`--remote-debugging-pipe`:
commands on fd 3, answers on fd 4, each a JSON message ended by a NUL byte), so a test can open a
page, run script in it (click a button, read the DOM) and take a screenshot, with no library."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import subprocess
import tempfile
import time


class Browser:
    def __init__(self, chromium: str, width: int = 1400, height: int = 900):
        self.profile = tempfile.TemporaryDirectory(prefix="farm-chromium-")
        to_child, self._out = os.pipe()  # we write commands, the browser reads them on its fd 3
        self._in, from_child = os.pipe()  # the browser writes answers on its fd 4, we read them
        # Moved to fds of 10 and up first, so that placing them at 3 and 4 cannot overwrite either.
        r, w = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child, from_child))
        os.close(to_child)
        os.close(from_child)
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--remote-debugging-pipe", f"--user-data-dir={self.profile.name}", f"--window-size={width},{height}",
                "about:blank"]
        self.proc = subprocess.Popen(["bash", "-c", f'exec "$0" "$@" 3<&{r} 4>&{w} {r}<&- {w}>&-', chromium, *args],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, pass_fds=(r, w))
        os.close(r)
        os.close(w)
        self._buffer, self._id = b"", 0
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def call(self, method: str, session: bool = False, timeout: float = 30, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                answer = json.loads(raw)
                if answer.get("id") == self._id:
                    if "error" in answer:
                        raise RuntimeError(f"{method}: {answer['error']}")
                    return answer.get("result", {})
            left = deadline - time.time()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise TimeoutError(f"{method}: no answer from Chromium in {timeout} s")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed its DevTools pipe")
            self._buffer += chunk

    def open(self, url: str):
        self.call("Page.navigate", session=True, url=url)

    def js(self, expression: str):
        """The value of a script expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 60, every: float = 0.1, seen: list | None = None, until=bool):
        """Wait until a script expression's value in the page passes `until` (is truthy, by
        default); return the value. With `seen`, every distinct value along the way is appended."""
        deadline = time.time() + timeout
        while True:
            try:
                value = self.js(expression)
            except RuntimeError:
                value = None  # the page is (re)loading
            if seen is not None and (not seen or seen[-1] != value):
                seen.append(value)
            if until(value):
                return value
            if time.time() > deadline:
                raise TimeoutError(f"{expression!r} did not hold in {timeout} s (last: {value!r})")
            time.sleep(every)

    def screenshot(self, path):
        data = self.call("Page.captureScreenshot", session=True, format="png")["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self):
        try:
            self.call("Browser.close", timeout=5)
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._in, self._out):
            try:
                os.close(fd)
            except OSError:
                pass
        self.profile.cleanup()
