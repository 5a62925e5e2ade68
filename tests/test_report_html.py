"""The study as a page: report.html from a small real sweep opens offline (every image and link a file that exists) and
renders in headless Chromium (a non-blank screenshot, kept beside the report)."""
from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import nbformat
import numpy as np
import pytest
from matplotlib import image as mpimg
from test_sweep import PROBE, PROBE_BODY, PROBE_PARAMS, client, probe_spec  # noqa: F401 - client: the Dask fixture

from xattn_utils.runs.study import write_report_html
from xattn_utils.runs.sweep import run_sweep

# the probe notebook of test_sweep, plus a figure where the study's notebooks put theirs (figures/*.png)
FIGURE_CELL = '''import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(4, 3))
ax.imshow([[a, 0], [0, a]], cmap="viridis")
ax.set_title(f"probe a={a}")
(run_dir / "figures").mkdir(exist_ok=True)
fig.savefig(run_dir / "figures" / "03_layer_head_grid.png", dpi=60)'''


class _Targets(HTMLParser):
    """Every ``<img src>`` and ``<a href>`` of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src") or "")
        elif tag == "a" and "href" in attrs:
            self.links.append(attrs["href"] or "")


def broken_targets(page: Path) -> tuple[_Targets, list[str]]:
    """The page's images and links, and those that are not a relative path to an existing file (offline)."""
    found = _Targets()
    found.feed(page.read_text())
    broken = []
    for target in found.images + found.links:
        if target.startswith("#"):
            continue
        url = urlparse(target)
        if url.scheme or url.netloc or target.startswith("/") or not target:
            broken.append(f"{target} (not a relative path: the page must open offline)")
        elif not (page.parent / unquote(url.path)).is_file():
            broken.append(f"{target} (missing)")
    return found, broken


@pytest.fixture(scope="module")
def study_page(tmp_path_factory, client):  # noqa: F811 - the fixture imported above
    """A real two-run sweep of the probe notebook (tables, a figure each, executed notebooks exported to HTML) and
    the report.html written from its report.md."""
    folder = tmp_path_factory.mktemp("probe_fig")
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(PROBE_PARAMS, metadata={"tags": ["parameters"]}),
               nbformat.v4.new_code_cell(PROBE_BODY), nbformat.v4.new_code_cell(FIGURE_CELL)],
        metadata={"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                  "language_info": {"name": "python"}})
    nbformat.write(nb, folder / PROBE)
    out = tmp_path_factory.mktemp("study")
    result = run_sweep(probe_spec(folder, {"a": [1, 2]}), out=out, client=client, verbose=False)
    assert result.summary() == "runs: 2 done, 0 skipped, 0 failed", [r.error for r in result.failed]
    return write_report_html(Path(result.report))


def test_report_html_links_and_images_all_resolve(study_page):
    found, broken = broken_targets(study_page)
    assert not broken, broken
    runs = sorted(p.name for p in study_page.parent.iterdir() if p.is_dir() and (p / "status").exists())
    assert len(runs) == 2
    # each run's figure shown (not only linked) and each executed notebook linked as its HTML export
    assert sorted(found.images) == sorted(f"{r}/figures/03_layer_head_grid.png" for r in runs)
    assert {f"{r}/{PROBE.replace('.ipynb', '.html')}" for r in runs} <= set(found.links)
    text = study_page.read_text()
    assert "<table>" in text and "Headline per run" in text and "## " not in text  # markdown rendered, not shown


def test_a_broken_image_is_caught(study_page, tmp_path):
    page = tmp_path / "report.html"
    page.write_text(study_page.read_text().replace("figures/03_layer_head_grid.png", "figures/gone.png", 1)
                    + '<a href="https://example.org/x">x</a>')
    shutil.copytree(study_page.parent, tmp_path, dirs_exist_ok=True, ignore=shutil.ignore_patterns("report.html"))
    _, broken = broken_targets(page)
    assert len(broken) == 2 and any("gone.png (missing)" in b for b in broken), broken


def test_report_html_renders_in_headless_chromium(study_page):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed: run 'apt-get install -y chromium' (make sysdeps does as root)")
    shot = study_page.parent / "report.png"  # kept with the report (pytest keeps the last runs' tmp folders)
    profile = study_page.parent / ".chromium-profile"
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             f"--user-data-dir={profile}", "--window-size=1200,1600", "--allow-file-access-from-files"]
    render = subprocess.run([*flags, f"--screenshot={shot}", study_page.as_uri()], capture_output=True, text=True,
                            timeout=180)
    assert render.returncode == 0 and shot.is_file(), render.stderr[-2000:]
    pixels = mpimg.imread(shot)[..., :3]
    assert pixels.shape[:2] == (1600, 1200)
    ink = (pixels < 0.9).any(axis=-1).mean()  # share of pixels that are not (near) white
    assert ink > 0.01, f"blank screenshot {shot}: {ink:.4f} of the pixels are not white"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # text and a colour figure, not a flat page
    dom = subprocess.run([*flags, "--dump-dom", study_page.as_uri()], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0 and "Headline per run" in dom.stdout and dom.stdout.count("<img") == 2
    print(f"screenshot: {shot}")


def test_a_sweep_result_prints_readably():
    from xattn_utils.runs.report import SweepResult
    from xattn_utils.runs.worker import RunResult

    result = SweepResult("probe", Path("/runs/probe"), done=[RunResult("a=1", "done", "", 2.0, "/runs/probe/a=1", {})],
                         failed=[RunResult("a=2", "failed", "probe.ipynb: RuntimeError: boom", 1.0, "/runs/probe/a=2",
                                           {})], report=Path("/runs/probe/report.md"))
    assert str(result).splitlines() == ["sweep probe under /runs/probe: runs: 1 done, 0 skipped, 1 failed",
                                        "  failed a=2: probe.ipynb: RuntimeError: boom",
                                        "  report: /runs/probe/report.md"]
