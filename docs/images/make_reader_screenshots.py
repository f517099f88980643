"""Screenshots of the reader study's viewer in both arms (docs/images/reader_*.png).

  python docs/images/make_reader_screenshots.py --link http://127.0.0.1:8765/r/TOKEN/ --out docs/images

Drives a running `python -m ctjax.reader serve` as the reader of LINK, in headless Chromium
(Playwright with the system's chromium) at 1400 x 900 (a common laptop window): screenshots
the first case alone, answers every case of the alone arm (a fixed script: no finding,
confidence 2), then screenshots the first case of the assisted arm and checks that its page
and the report's frame fit the window (exit status 1 if either would scroll). The assisted arm
opens only after the study's washout, so this is for a demo study made with
`create --washout_days 0`, read by a reader made for the screenshots.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import sys


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--link", required=True, help="the reader's link, http://HOST:PORT/r/TOKEN/")
  ap.add_argument("--out", default="docs/images", help="folder for the PNGs")
  ap.add_argument("--slice_step", type=int, default=3, help="slices to step down before the shot")
  ap.add_argument("--width", type=int, default=1400, help="window width (CSS pixels)")
  ap.add_argument("--height", type=int, default=900, help="window height (CSS pixels)")
  args = ap.parse_args(argv)
  from playwright.sync_api import sync_playwright
  chromium = shutil.which("chromium") or shutil.which("chromium-browser")
  if chromium is None:
    print("error: chromium is not installed (apt-get install chromium)", file=sys.stderr)
    return 1
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  link = args.link.rstrip("/") + "/"
  with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": args.width, "height": args.height})
    page.goto(link)
    shot = {"alone": out / "reader_alone.png", "assisted": out / "reader_assisted.png"}
    taken, scrolls = set(), []
    while page.locator("#open-case").count():
      page.click("#open-case")
      page.wait_for_selector("#viewer[data-ready='1']", timeout=30000)
      arm = "assisted" if page.locator("#report").count() else "alone"
      if arm not in taken:
        for _ in range(args.slice_step):
          page.keyboard.press("ArrowDown")
        if arm == "assisted":
          page.frame_locator("#report").locator(".key-slice").first.wait_for(timeout=30000)
          page.frame_locator("#report").locator(".seq-row, .seq").first.wait_for()
        page.screenshot(path=str(shot[arm]))
        taken.add(arm)
        over = {"page": _overflow(page.main_frame)}
        if arm == "assisted":
          over["report frame"] = _overflow(page.locator("#report").element_handle().content_frame())
        print(f"{shot[arm]}: {arm} arm; " + ", ".join(
            f"{k} {'fits' if v <= 0 else f'needs {v} px of scrolling'}" for k, v in over.items()))
        scrolls.extend(k for k, v in over.items() if v > 0)
        if arm == "assisted":
          break
      page.click("#submit-answer")
      page.wait_for_selector("#confidence-form")
      page.check("input[name=confidence][value='2']")
      page.click("#submit-confidence")
      page.wait_for_selector("#home")
    browser.close()
  missing = [a for a in shot if a not in taken]
  if missing:
    print(f"error: no {', '.join(missing)} case reached (washout not over? reader finished?)",
          file=sys.stderr)
    return 1
  if scrolls:
    print(f"error: at {args.width} x {args.height} the {' and the '.join(scrolls)} would "
          "scroll", file=sys.stderr)
    return 1
  return 0


def _overflow(frame) -> int:
  """CSS pixels by which `frame`'s document is taller than its window (<= 0: no scrolling)."""
  return int(frame.evaluate("() => document.documentElement.scrollHeight - window.innerHeight"))


if __name__ == "__main__":
  sys.exit(main())
