"""Build the HTML review report for the built-in sample and the real recordings in shared/data.

Writes, under ``--out`` (default ``benchmarks/results/report``): ``summary.json`` (the numbers
each report shows), ``screenshot.png`` (the sample's report, top of the page, in headless
Chromium) and ``<name>.png`` for each movie. The HTML pages themselves (several MB each) go
to ``--html-dir`` (default: a temporary folder) unless ``--keep-html`` puts them beside.

Run: ``.venv/bin/python benchmarks/report_demo.py [--time-budget 120] [--keep-html]``.
Needs Chromium (``apt-get install chromium``) and ``pip install playwright`` for screenshots;
without them the reports and the summary are still written.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import calmdown
from calmdown.report import make_report

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
CHROMIUM = os.environ.get("CALMDOWN_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def screenshot(html: Path, png: Path, *, height: int = 1500) -> dict:
    """Screenshot the top of a report; return console errors and image widths."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return {"skipped": "playwright not installed"}
    if not Path(CHROMIUM).exists():
        return {"skipped": f"no Chromium at {CHROMIUM}"}
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": height})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(html.resolve().as_uri())
            page.wait_for_load_state("load")
            page.wait_for_timeout(1500)  # let the movie advance a little
            widths = page.evaluate("Array.from(document.images).map(i => i.naturalWidth)")
            page.screenshot(path=str(png))
        finally:
            browser.close()
    return {"console_errors": errors, "image_widths": widths}


def movies() -> list[tuple[str, object, str | None]]:
    """(name, movie, key) of every movie the demo reports on."""
    out: list[tuple[str, object, str | None]] = [("sample", calmdown.sample_movie().raw, None)]
    tif = DATA / "optinist-mouse2p-top-2000x64x128.tif"
    h5 = DATA / "allen-registered-100x100x100.h5"
    if tif.exists():
        out.append(("optinist", tif, None))
    if h5.exists():
        out.append(("allen", h5, "data"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "report")
    parser.add_argument("--html-dir", type=Path, default=None)
    parser.add_argument("--keep-html", action="store_true")
    parser.add_argument("--time-budget", type=float, default=120.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", nargs="*", default=None, help="names: sample optinist allen")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    html_dir = args.out if args.keep_html else (args.html_dir or Path(tempfile.mkdtemp()))
    html_dir.mkdir(parents=True, exist_ok=True)
    summary_path = args.out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    for name, movie, key in movies():
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        report = make_report(
            movie,
            key=key,
            time_budget_s=args.time_budget,
            threads=args.threads,
            title=f"calmdown report: {name}",
        )
        html = html_dir / f"{name}.html"
        html.write_text(report.html, encoding="utf-8")
        entry = dict(report.summary)
        entry["seconds_total"] = time.perf_counter() - t0
        entry["html"] = str(html)
        entry["browser"] = screenshot(html, args.out / f"{name}.png")
        if name == "sample" and (args.out / f"{name}.png").exists():
            shutil.copyfile(args.out / f"{name}.png", args.out / "screenshot.png")
        summary[name] = entry
        summary_path.write_text(json.dumps(summary, indent=2, default=str))
        h = entry["hallucination"]
        print(
            f"{name}: {entry['html_bytes'] / 1e6:.1f} MB, hallucination {h['verdict']} "
            f"(H {h['ratio']:.3f}, quiet {h['quiet_fraction']:.2f}), wobble {entry['wobble']:.3f}, "
            f"coverage {entry['heldout']['coverage']:.3f}, "
            f"{entry['surprise']['n_regions']} surprise regions, "
            f"{entry['seconds_total']:.0f} s -> {html}"
        )


if __name__ == "__main__":
    main()
