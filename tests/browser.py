"""Render report pages in headless Chromium: the DOM after load (with each image's load state
and box) and a screenshot, for tests that check what a reader actually sees.

Tests call :func:`require_chromium` first; it skips when Chromium is not installed
(``bash run.sh test`` installs it with apt-get when run as root).
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--hide-scrollbars", "--force-device-scale-factor=1"]
WIDTH = 1280
# After load: each <img> gets data-loaded (yes/no) and data-box (x,y,w,h in page pixels), the body
# the page height; the extra broken image shows the load check can fail.
PROBE = ("<img id='control' alt='control' src='data:image/png;base64,AAAA'><script>window.addEventListener('load', "
         "() => {for (const i of document.images) {const r = i.getBoundingClientRect(); "
         "i.setAttribute('data-loaded', i.complete && i.naturalWidth > 0 ? 'yes' : 'no'); "
         "i.setAttribute('data-box', [r.left + scrollX, r.top + scrollY, r.width, r.height].map(Math.round).join(','));}"
         "document.body.setAttribute('data-height', document.documentElement.scrollHeight);"
         "document.body.setAttribute('data-checked', '1');});</script></body>")


def require_chromium() -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed; `bash run.sh test` installs it with apt-get when run as root")
    return chromium


def _run(chromium: str, tmp: Path, args: list[str]) -> str:
    done = subprocess.run([chromium, *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args], capture_output=True,
                          text=True, timeout=120)
    return done.stdout


def render(page: Path, tmp: Path) -> dict:
    """Load ``page`` (with the probe) in Chromium: ``dom``, ``images`` (alt -> loaded, box),
    ``height`` and the probed copy's path (``probe``)."""
    chromium = require_chromium()
    probe = tmp / f"probe-{page.stem}.html"
    probe.write_text(page.read_text().replace("</body>", PROBE))
    dom = _run(chromium, tmp, [f"--window-size={WIDTH},900", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()])
    assert 'data-checked="1"' in dom, dom[-2000:]
    images = {}
    for attrs in re.findall(r"<img([^>]*)>", dom):
        alt = re.search(r'alt="([^"]*)"', attrs).group(1)
        box = [int(v) for v in re.search(r'data-box="([^"]*)"', attrs).group(1).split(",")]
        images[alt] = {"loaded": re.search(r'data-loaded="(\w+)"', attrs).group(1), "box": box}
    height = int(re.search(r'data-height="(\d+)"', dom).group(1))
    return {"dom": dom, "images": images, "height": height, "probe": probe}


def screenshot(rendered: dict, tmp: Path) -> np.ndarray:
    """The whole page as an RGB array ``[height, width, 3]`` of floats in [0, 1]."""
    from matplotlib.image import imread

    chromium = require_chromium()
    shot = tmp / f"{rendered['probe'].stem}.png"
    _run(chromium, tmp, [f"--window-size={WIDTH},{rendered['height']}", "--virtual-time-budget=5000",
                         f"--screenshot={shot}", rendered["probe"].as_uri()])
    return imread(shot)[..., :3]


def region(pixels: np.ndarray, box: list[int]) -> np.ndarray:
    x, y, w, h = box
    return pixels[y:y + h, x:x + w]


def near(pixels: np.ndarray, rgb: tuple[int, int, int], tol: float = 40) -> int:
    """How many pixels lie within ``tol`` (0-255 units, per channel) of the colour ``rgb``."""
    diff = np.abs(pixels * 255 - np.asarray(rgb, dtype=float)).max(axis=-1)
    return int((diff <= tol).sum())


def text_of(dom: str) -> str:
    """The visible text of a DOM dump, tags removed, entities as they are."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))

