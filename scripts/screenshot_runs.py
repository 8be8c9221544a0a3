"""What a researcher compares in MLflow: the runs view with charts of a scalar and a verbal run, screenshotted.

    python scripts/screenshot_runs.py            # writes docs/mlflow_runs.png

Trains `reward=scalar` and `reward=verbal` (seed 0, `+debug=smoke`, 4 ALIVE steps, from the newest math warm
start under data/ whose held-out accuracy is above zero, else a warm start of at most `--warmstart-steps`,
cached for the second run) into a fresh SQLite store, serves
it with `mlflow server` on 127.0.0.1, and opens the URLs the second run printed in Debian's headless `chromium`
(apt install chromium), driven over the DevTools protocol on a pipe (no extra package): the run's URL must show
the run, the charts URL must show the section "Held-out accuracy and reward" first; then it closes MLflow's
assistant panel (it opens itself on a first visit) and takes the screenshot. Not run by CI: it needs a browser
and minutes.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars")
FIRST_SECTION = "Held-out accuracy and reward"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Chromium:
    """Headless chromium over `--remote-debugging-pipe`: DevTools commands on its fd 3, replies on its fd 4,
    each message JSON ending in a NUL byte."""

    def __init__(self, browser: str, profile: Path, width: int, height: int) -> None:
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        # above 10, so that moving them to 3 and 4 in the child cannot overwrite one with the other
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_r, from_w)]

        def on_3_and_4() -> None:
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.proc = subprocess.Popen([browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                                      "--remote-debugging-pipe", "about:blank"], pass_fds=(3, 4),
                                     preexec_fn=on_3_and_4, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for fd in (to_r, from_w, *high):
            os.close(fd)
        self.out, self.inp = os.fdopen(to_w, "wb"), os.fdopen(from_r, "rb")
        self.next_id, self.buffer = 0, b""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if getattr(self, "session", None):
            message["sessionId"] = self.session
        self.out.write(json.dumps(message).encode() + b"\0")
        self.out.flush()
        while True:
            while b"\0" not in self.buffer:
                chunk = self.inp.read1(1 << 16)
                if not chunk:
                    raise RuntimeError(f"chromium closed the pipe during {method}")
                self.buffer += chunk
            raw, self.buffer = self.buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def js(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def open(self, url: str, until: str, timeout: float = 90.0) -> str:
        """Navigate and wait until the page's text holds `until`; returns the text."""
        self.call("Page.navigate", url=url)
        deadline = time.time() + timeout
        while time.time() < deadline:
            text = self.js("document.body ? document.body.innerText : ''") or ""
            if until in text:
                return text
            time.sleep(0.5)
        raise SystemExit(f"{url} did not show {until!r} within {timeout:g} s")

    def close_assistant(self) -> bool:
        return bool(self.js("(() => { const b = document.querySelector("
                            "'[data-component-id=\"mlflow.assistant.chat_panel.close\"]');"
                            " if (b) { b.click(); return true; } return false; })()"))

    def screenshot(self, out: Path) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def quit(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def train(root: Path, data: Path, mode: str, steps: int, init: list[str], env: dict) -> dict[str, str]:
    """One run; returns the URLs its last lines printed (this run, compare runs)."""
    out = subprocess.run([sys.executable, str(REPO / "train.py"), "+experiment=math", "+debug=smoke", f"reward={mode}",
                          *init, f"trainer.max_steps={steps}", f"paths.root_dir={root}", f"paths.data_dir={data}"],
                         cwd=root, env=env, check=True, capture_output=True, text=True).stdout
    print("\n".join(line for line in out.splitlines() if line.startswith("held-out accuracy math_heldout")), flush=True)
    urls = dict(re.findall(r"^  (this run|compare runs)[^:]*: (\S+)$", out, re.M))
    if set(urls) != {"this run", "compare runs"}:
        raise SystemExit(f"the {mode} run did not print both URLs:\n{out[-2000:]}")
    return urls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "mlflow_runs.png")
    ap.add_argument("--data", type=Path, default=REPO / "data")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmstart-steps", type=int, default=450, help="when data/ holds no math warm start")
    ap.add_argument("--settle-s", type=float, default=10.0, help="seconds the charts get to draw after they appear")
    args = ap.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise SystemExit("no chromium found: apt install chromium")
    # the cached math warm start with the best held-out accuracy, when it is above zero (a smoke's is not)
    found = [(json.loads(m.read_text()).get("heldout_accuracy", 0.0), m.parent)
             for m in sorted((args.data / "warmstart").glob("math-*/metrics.json"))]
    best = max(found, default=(0.0, None))
    init = ([f"model.init_from={best[1]}", "warmstart.enabled=false"] if best[0] > 0 else
            [f"warmstart.steps={args.warmstart_steps}"])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        env.pop("MLFLOW_TRACKING_URI", None)
        train(root, args.data.resolve(), "scalar", args.steps, init, env)
        urls = train(root, args.data.resolve(), "verbal", args.steps, init, env)
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                                   "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--workers", "1"], cwd=root,
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        chrome = None
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(240):
                try:
                    urllib.request.urlopen(f"{base}/health", timeout=2)
                    break
                except OSError:
                    time.sleep(0.5)
            # the printed URLs name `mlflow ui`'s default address; this server listens on a free port
            run_page, charts = (u.replace("http://127.0.0.1:5000", base) for u in (urls["this run"], urls["compare runs"]))
            chrome = Chromium(browser, root / "chromium-profile", 1600, 1000)
            chrome.open(run_page, until="math-verbal-s0")
            print(f"run URL opens the run: {run_page}")
            chrome.open(charts, until=FIRST_SECTION)
            time.sleep(2)
            closed = chrome.close_assistant()
            text = chrome.open(charts, until=FIRST_SECTION)
            first = text.index(FIRST_SECTION)
            later = [s for s in ("constructor/solve_rate_hist", "eval/math_heldout") if s in text[first:]]
            print(f"charts URL opens the runs view, {FIRST_SECTION!r} first (then {', '.join(later)}; assistant "
                  f"panel {'closed' if closed else 'not found'}): {charts}")
            time.sleep(args.settle_s)
            chrome.screenshot(args.out)
            print(f"{args.out}")
        finally:
            if chrome is not None:
                chrome.quit()
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
