"""WCAG 2 contrast of the text a page renders, measured in the browser (Playwright).

Every visible element with text of its own is checked: its computed colour against the first
opaque background colour of it or an ancestor (white when none), composited where the colour
is translucent. AA asks 4.5:1, or 3:1 for large text (24px, or 18.66px bold).
"""

from __future__ import annotations

from typing import Any

_JS = """
() => {
  const parse = (c) => { const m = c.match(/rgba?\\(([^)]+)\\)/); if (!m) return null;
    const p = m[1].split(/[ ,\\/]+/).filter(Boolean).map(Number);
    return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1]; };
  const lin = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
  const lum = (c) => 0.2126 * lin(c[0]) + 0.7152 * lin(c[1]) + 0.0722 * lin(c[2]);
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c[3] > 0) return c;
    }
    return [255, 255, 255, 1];
  };
  const out = [];
  for (const el of document.querySelectorAll("body *")) {
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own) continue;
    const style = getComputedStyle(el);
    const box = el.getBoundingClientRect();
    const shown = style.visibility !== "hidden" && style.display !== "none";
    if (!shown || box.width === 0 || box.height === 0) continue;
    let fg = parse(style.color);
    const bg = background(el);
    fg = [0, 1, 2].map((i) => fg[3] * fg[i] + (1 - fg[3]) * bg[i]);
    const a = lum(fg), b = lum(bg);
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const size = parseFloat(style.fontSize), bold = Number(style.fontWeight) >= 700;
    const large = size >= 24 || (bold && size >= 18.66);
    out.push({ text: el.textContent.trim().slice(0, 40), tag: el.tagName, ratio, need: large ? 3 : 4.5,
               color: style.color, bg: `rgb(${bg.slice(0, 3).join(",")})` });
  }
  return out;
}
"""


def text_contrast(page: Any) -> list[dict[str, Any]]:
    """Each text element's contrast ratio (``ratio``) and what AA needs of it (``need``)."""
    return list(page.evaluate(_JS))


def below_aa(page: Any) -> list[dict[str, Any]]:
    """The text elements under WCAG AA contrast (empty: the page passes)."""
    return [e for e in text_contrast(page) if e["ratio"] < e["need"]]
