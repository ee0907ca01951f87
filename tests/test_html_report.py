"""--html: one self-contained page per command, drawn from the JSON report.

The last tests load the pages in a real headless Chromium (Debian's package; `.ci/run` installs
it) and check that every chart was laid out with visible marks and that the screenshot is not
blank.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onnxprune.cli import cli
from onnxprune.htmlreport import KINDS, render
from onnxprune.htmlreport.svg import _nice, bar_chart, line_chart

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "models" / "digits"


def run_cli(*args) -> None:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, Path]:
    """prune, quantize, check and compress on the sample model, each with --html and its JSON."""
    out = tmp_path_factory.mktemp("html")
    model, calib, evald = DIGITS / "digits.onnx", DIGITS / "calib.npz", DIGITS / "eval.npz"
    run_cli("prune", model, "-o", out / "p.onnx", "--target-macs", "0.6", "--calib", calib,
            "--report", out / "prune.json", "--html", out / "prune.html")
    run_cli("quantize", model, "-o", out / "q.onnx", "--calib", calib, "--no-latency",
            "--report", out / "quantize.json", "--html", out / "quantize.html")
    run_cli("check", model, out / "q.onnx", "--data", evald, "--labels", "labels", "--layerwise",
            "--json", out / "check.json", "--html", out / "check.html")
    run_cli("compress", model, "-o", out / "c.onnx", "--calib", calib, "--eval", evald, "--labels", "labels",
            "--target-macs", "0.7", "--report", out / "compress.json", "--html", out / "compress.html")
    return {kind: out / f"{kind}.html" for kind in ("prune", "quantize", "check", "compress")}


def charts(page: str) -> int:
    return page.count('<svg class="chart"')


def test_every_command_writes_a_page_with_its_plots(pages):
    expected = {  # the plots each page must carry, by their titles
        "prune": ["Channels per group", "Relative output error of each refit layer", "What is left"],
        "quantize": ["Calibrated range per tensor"],
        "check": ["SQNR per tensor", "Cosine similarity per tensor"],
        "compress": ["Share of the original after each stage", "Channels per group", "Calibrated range per tensor"],
    }
    for kind, titles in expected.items():
        page = pages[kind].read_text()
        for title in titles:
            assert f"<title>{title}" in page, (kind, title)
        assert charts(page) >= len(titles)
    assert "<h2>Parity</h2>" in pages["compress"].read_text()  # the final check, with its metrics


def test_pages_are_self_contained(pages):
    for page in (p.read_text() for p in pages.values()):
        assert not re.search(r'\b(src|href)\s*=', page)  # no external file, script or style sheet
        assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert "https://" not in page


def test_pruned_groups_and_check_results_are_in_the_tables(pages):
    prune = json.loads((pages["prune"].parent / "prune.json").read_text())
    page = pages["prune"].read_text()
    for group in prune["groups"]:
        assert f"<td>{group['name']}</td>" in page
        if group["removed"]:  # the removed channel indices, as the report lists them
            assert "<td>" + ", ".join(map(str, group["removed"])) + "</td>" in page
    assert any(group["removed"] for group in prune["groups"])
    check = json.loads((pages["check"].parent / "check.json").read_text())
    page = pages["check"].read_text()
    accuracy = check["comparisons"][0]["outputs"]["logits"]["accuracy_candidate"]
    assert f"{accuracy:.4g}" in page
    assert "parity holds" in page


def test_quantize_report_carries_the_calibrated_ranges(pages):
    report = json.loads((pages["quantize"].parent / "quantize.json").read_text())
    assert report["ranges"] and all(lo <= hi for lo, hi in report["ranges"].values())
    page = pages["quantize"].read_text()
    assert all(f"<td>{name}</td>" in page for name in report["ranges"])


def test_names_are_escaped():
    hostile = "<script>alert(1)</script>"
    page = render({"groups": [{"id": 0, "name": hostile, "channels": 4, "kept": 2, "status": "pruned"}]}, "prune")
    assert hostile not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<script>") == 1  # only the page's own layout probe


def test_unknown_kind_and_empty_report():
    with pytest.raises(ValueError, match="unknown report kind"):
        render({}, "optimize-everything")
    for kind in KINDS:
        assert "nothing to plot" in render({}, kind)


def test_sensitivity_curves_are_drawn(tmp_path):
    out = tmp_path / "sens.html"
    run_cli("sensitivity", DIGITS / "digits.onnx", "--calib", DIGITS / "calib.npz", "--ratios", "0.25,0.5",
            "--limit", "64", "-o", tmp_path / "sens.json", "--html", out)
    report = json.loads((tmp_path / "sens.json").read_text())
    groups = {u["name"] for u in report["units"] if u["kind"] == "prune"}
    page = out.read_text()
    assert groups and charts(page) == 1 and page.count("<polyline") == len(groups)  # one curve per group
    assert all(f"<td>{name}</td>" in page for name in groups)


def test_axes_are_rounded_to_nice_ticks():
    lo, hi, ticks = _nice(0.03, 0.97)
    assert (lo, hi) == (0.0, 1.0) and ticks[0] == 0.0 and abs(ticks[-1] - 1.0) < 1e-12
    lo, hi, ticks = _nice(-3.0, 41.0)
    assert lo <= -3.0 and hi >= 41.0 and len(ticks) <= 7
    svg = bar_chart("t", ["a", "b"], {"s": [1.0, float("nan")]})
    assert svg.count('class="mark"') == 1  # a missing value draws no bar
    svg = line_chart("t", {"s": ([0, 1, 2], [1.0, float("inf"), 3.0])})
    assert svg.count("<circle") == 2


# -- a real browser ---------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
needs_browser = pytest.mark.skipif(CHROMIUM is None,
                                   reason="Chromium not installed (apt-get install chromium; .ci/run does)")


@needs_browser
@pytest.mark.parametrize("kind", ["compress", "check"])
def test_a_browser_renders_every_chart(pages, kind, tmp_path):
    page = pages[kind]
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    rendered = re.search(r'data-charts-rendered="(\d+)"', dom)
    assert rendered, "the page's load handler did not run"
    assert int(rendered.group(1)) == charts(page.read_text()) > 0


@needs_browser
def test_the_screenshot_shows_the_plots(pages, tmp_path):
    from PIL import Image

    shot = tmp_path / "page.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,1400",
                    f"--screenshot={shot}", pages["prune"].as_uri()], capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    blue = (np.abs(pixels - np.array([0x42, 0x69, 0xD0])).sum(axis=2) < 30).sum()  # the first series' colour
    assert blue > 2000, "no bars visible in the screenshot"
