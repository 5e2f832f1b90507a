"""Screenshot a Prefect UI page in headless Chromium over the DevTools protocol (docs/ui.md).

Plain `chromium --headless --screenshot` cannot click; the flow run page's Artifacts tab needs a
click (its ?tab= query is reset while the run loads). Uses `websockets`, a Prefect dependency.

usage: python docs/screenshots/shoot.py OUT.png URL [--click TEXT] [--height 1800] [--full] [--js CODE]
"""

import argparse
import base64
import io
import json
import subprocess
import tempfile
import time
import urllib.request

from PIL import Image
from websockets.sync.client import connect

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("url")
parser.add_argument("--click", help="click the first element whose text is exactly this (e.g. Artifacts)")
parser.add_argument("--width", type=int, default=1400)
parser.add_argument("--height", type=int, default=1800)
parser.add_argument("--wait", type=float, default=6, help="seconds to let the page load (and after a click)")
parser.add_argument("--port", type=int, default=9333)
parser.add_argument("--js", action="append", default=[], help="JavaScript to run after the click, then wait")
parser.add_argument("--full", action="store_true", help="the whole page, not the window")
parser.add_argument("--colors", type=int, default=128, help="palette size: keeps a 1400x2300 page near 100 KB")
args = parser.parse_args()

chrome = subprocess.Popen([
    "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    f"--user-data-dir={tempfile.mkdtemp()}", f"--window-size={args.width},{args.height}",
    f"--remote-debugging-port={args.port}", "about:blank",
], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    for _ in range(100):
        try:
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{args.port}/json"))
            page = next(t for t in targets if t["type"] == "page")
            break
        except (OSError, StopIteration):
            time.sleep(0.2)
    with connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
        ids = iter(range(1, 10**6))

        def call(method, **params):
            i = next(ids)
            ws.send(json.dumps({"id": i, "method": method, "params": params}))
            while True:
                message = json.loads(ws.recv())
                if message.get("id") == i:
                    return message.get("result", {})

        call("Page.enable")
        screen = {"deviceScaleFactor": 1, "mobile": False}
        call("Emulation.setDeviceMetricsOverride", width=args.width, height=args.height, **screen)
        call("Page.navigate", url=args.url)
        time.sleep(args.wait)
        if args.click:
            script = (
                "(() => { const el = [...document.querySelectorAll('button, a, [role=tab], li, span')]"
                f".find(e => e.textContent.trim() === {json.dumps(args.click)}); "
                "if (el) { el.click(); return true; } return false; })()"
            )
            print("clicked:", call("Runtime.evaluate", expression=script, returnByValue=True)["result"].get("value"))
            time.sleep(args.wait)
        for script in args.js:
            print("js:", call("Runtime.evaluate", expression=script, returnByValue=True)["result"].get("value"))
            time.sleep(args.wait)
        if args.full:
            scroll = call("Runtime.evaluate", expression="document.documentElement.scrollHeight", returnByValue=True)
            height = scroll["result"]["value"]
            call("Emulation.setDeviceMetricsOverride", width=args.width, height=max(height, args.height), **screen)
            time.sleep(1)
        shot = call("Page.captureScreenshot", format="png")
        image = Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB")
        image.quantize(colors=args.colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            args.out, optimize=True
        )
finally:
    chrome.terminate()
    chrome.wait()
