"""Reports in a real browser: a tiny real training run renders its report (``train.py --report``),
and the session's real runs (tests/conftest.py: one with the identity task and its retrieval
examples) render theirs; headless Chromium loads them from disk, with every image decoded, no
script error, sortable tables that sort, no sideways scrolling on a narrow window, and
screenshots at desktop and phone widths. The identity run's page is screenshot whole: its
retrieval examples (green / red frames) and the monitored joint-loss curve are on it, and a
clicked thumbnail shows its image at full size over the page.

``MTL_SCREENSHOTS=DIR`` keeps the screenshots there, to look at.

Chromium comes from Debian's ``chromium`` package in CI (``apt-get install chromium``); set
``MTL_BROWSER`` to use another Chromium or Chrome binary. Without one the browser tests skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, TINY_FLAGS

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
TINY = [*TINY_FLAGS, "--batch-size", "32"]
DESKTOP = (1280, 1800)
PHONE = (390, 1800)


def find_browser() -> str | None:
    """A headless-capable Chromium / Chrome: ``$MTL_BROWSER``, else the first on ``PATH``."""
    explicit = os.environ.get("MTL_BROWSER")
    if explicit:
        return explicit if Path(explicit).is_file() or shutil.which(explicit) else None
    return next((found for found in map(shutil.which, BROWSERS) if found), None)


@pytest.fixture(scope="module")
def browser() -> str:
    found = find_browser()
    if not found:
        pytest.skip("no Chromium or Chrome found (CI installs Debian's chromium package; or set MTL_BROWSER)")
    return found


def run_browser(browser: str, profile: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """Headless Chromium with everything that would reach the network switched off."""
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}"
    return result


def page_state(browser: str, html: Path, profile: Path, width: int = 1280) -> dict[str, str]:
    """The ``data-*`` attributes the page's self-check sets on ``<html>`` once loaded
    (``#selftest`` also makes it sort every table column both ways and check the order)."""
    dom = run_browser(browser, profile, f"--window-size={width},900", "--dump-dom",
                      f"{html.resolve().as_uri()}#selftest").stdout
    tag = re.search(r"<html[^>]*>", dom)
    assert tag, dom[:500]
    return dict(re.findall(r'data-([a-z-]+)="([^"]*)"', tag.group(0)))


def screenshot(browser: str, html: Path, profile: Path, out: Path, size: tuple[int, int]) -> np.ndarray:
    run_browser(browser, profile, f"--window-size={size[0]},{size[1]}", f"--screenshot={out}", html.resolve().as_uri())
    from PIL import Image

    with Image.open(out) as im:
        return np.asarray(im.convert("RGB"))


def assert_loaded(state: dict[str, str], sections: set[str]) -> None:
    assert state.get("ready") == "1", state
    assert state["js-errors"] == "0", state
    assert int(state["images-total"]) > 0 and state["images-ok"] == state["images-total"], state
    assert sections <= set(state["sections"].split()), state
    assert int(state["sort-checked"]) > 0 and state["sort-errors"] == "0", state


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, synthetic_root):
    """A real (tiny) training run whose report train.py renders itself (``--report``)."""
    base = tmp_path_factory.mktemp("browser")
    run, report = base / "run", base / "report"
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--data", str(synthetic_root),
           "--tasks", "age,upcolor,gender,backpack", "--epochs", "2", "--out", str(run), "--report", str(report), *TINY]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return run, report / "index.html", result


@pytest.mark.slow
def test_train_report_flag_renders_the_report(cli_run):
    run, html, result = cli_run
    assert html.is_file() and f"report: {html}" in result.stdout
    text = html.read_text()
    for section in ("run", "glance", "curves", "attributes", "tasks"):
        assert f'<section id="{section}"' in text
    assert text.count('alt="age confusion matrix"') == 1 and text.count('alt="upcolor confusion matrix"') == 1
    assert "epoch kept (" in text and "parameters" in text
    assert re.search(r'src="https?:', text) is None


@pytest.mark.slow
def test_real_run_report_in_the_browser(browser, cli_run, tmp_path):
    _, html, _ = cli_run
    state = page_state(browser, html, tmp_path / "profile")
    assert_loaded(state, {"run", "glance", "curves", "attributes", "tasks"})
    # a narrow window (headless Chromium's smallest is 500 px, below the 600 px phone layout) has
    # no sideways scrolling: wide tables scroll inside their own box
    narrow = page_state(browser, html, tmp_path / "profile", width=PHONE[0])
    assert int(narrow["page-width"]) <= int(narrow["view-width"]), narrow
    desktop = screenshot(browser, html, tmp_path / "profile", tmp_path / "desktop.png", DESKTOP)
    phone = screenshot(browser, html, tmp_path / "profile", tmp_path / "phone.png", PHONE)
    assert desktop.shape[:2] == (DESKTOP[1], DESKTOP[0]) and phone.shape[:2] == (PHONE[1], PHONE[0])
    for shot in (desktop, phone):
        # not a blank page: text, figures and thumbnails give many distinct colours
        assert shot.std() > 20
        assert len(np.unique(shot.reshape(-1, 3)[::7], axis=0)) > 200


def test_reid_and_comparison_pages_in_the_browser(browser, tiny_reid_run, tiny_run, tmp_path):
    from mtl.report import render_comparison, render_report

    state = page_state(browser, render_report(tiny_reid_run, tmp_path / "a.html"), tmp_path / "profile")
    assert_loaded(state, {"run", "glance", "curves", "attributes", "tasks", "reid"})
    queries = json.loads((tiny_reid_run / "reid_examples.json").read_text())
    assert int(state["images-total"]) > len(queries) * 11  # the queries with their top 10, all decoded
    state = page_state(browser, render_comparison([tiny_reid_run, tiny_run], tmp_path / "ab.html"),
                       tmp_path / "profile")
    assert_loaded(state, {"runs", "settings", "tasks", "curves"})


def keep_screenshot(path: Path) -> None:
    """Copy a screenshot to ``$MTL_SCREENSHOTS`` when set (to look at it)."""
    folder = os.environ.get("MTL_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(folder) / path.name)


def colour_share(shot: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 30) -> float:
    """Share of the pixels within ``tolerance`` of ``rgb`` on every channel."""
    return float((np.abs(shot.astype(int) - np.asarray(rgb)).max(axis=-1) <= tolerance).mean())


def test_identity_run_report_shows_retrieval_examples_and_the_joint_loss(browser, tiny_reid_run, tmp_path):
    from mtl.report import render_report

    html = render_report(tiny_reid_run, tmp_path / "reid.html")
    queries = json.loads((tiny_reid_run / "reid_examples.json").read_text())
    dom = run_browser(browser, tmp_path / "profile", "--window-size=1280,900", "--dump-dom", html.resolve().as_uri()).stdout
    assert 'alt="training curve: all tasks · joint_loss (monitored)"' in dom
    assert dom.count('<div class="query">') == len(queries) > 0
    state = page_state(browser, html, tmp_path / "profile")
    assert_loaded(state, {"curves", "reid"})
    # the whole page: the retrieval examples are framed green (same person) and red (another)
    size = (1280, 9000)
    shot = screenshot(browser, html, tmp_path / "profile", tmp_path / "reid-run-report.png", size)
    keep_screenshot(tmp_path / "reid-run-report.png")
    hits = sum(g["match"] for q in queries for g in q["gallery"][:10])
    misses = sum(not g["match"] and not g["same_camera_removed"] for q in queries for g in q["gallery"][:10])
    assert hits and misses
    assert colour_share(shot, (0x1E, 0x8E, 0x3E), 20) > 1e-5 and colour_share(shot, (0xD9, 0x30, 0x25), 20) > 1e-5
    # a clicked thumbnail (its <details> open) covers the window with the image at full size
    opened = tmp_path / "zoomed.html"
    opened.write_text(html.read_text().replace('<details class="zoom">', '<details class="zoom" open>', 1))
    zoomed = screenshot(browser, opened, tmp_path / "profile", tmp_path / "reid-zoomed.png", DESKTOP)
    keep_screenshot(tmp_path / "reid-zoomed.png")
    dark = (zoomed.astype(int).sum(axis=-1) < 3 * 70).mean()
    assert dark > 0.5  # the dimmed page behind the enlarged image
