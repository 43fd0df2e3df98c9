"""Page rendering: sizes, determinism, robustness, layout rules, capacity and footprint."""

from __future__ import annotations

import glob
import io
import os
from datetime import UTC, datetime, timedelta
from importlib import resources

import pytest
from PIL import Image

from benchmarks.ocr import full_page, synthetic_chat
from optical_memory.errors import InvalidInput, OpticalMemoryError
from optical_memory.glyphs import cmap_codepoints
from optical_memory.layout import Style, max_lines
from optical_memory.render import (
    FALLBACK_FONTS_ENV,
    PageRenderer,
    RenderedImage,
    RenderTurn,
)

LAYOUT = (1280, 1280)
TIERS = [(1280, 1280), (1024, 1024), (640, 640), (512, 512)]
T0 = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)


def turn(text: str, speaker: str = "Caroline", minutes: int = 0) -> RenderTurn:
    return RenderTurn(speaker, T0 + timedelta(minutes=minutes), text)


@pytest.fixture(scope="module")
def renderer() -> PageRenderer:
    return PageRenderer()


def decode(img: RenderedImage) -> Image.Image:
    return Image.open(io.BytesIO(img.png))


def line_fits(r: PageRenderer, lay, canvas) -> bool:
    m = r.metrics(lay.font_px)
    right = canvas[0] - lay.margin + 1.0  # the bold label may spill one pixel
    return all(
        run.x + m.width(run.style, run.text) <= right for line in lay.lines for run in line.runs
    )


# -- images -------------------------------------------------------------------------------------


def test_each_image_has_the_requested_size(renderer):
    turns = [turn("Hello there, how was the trip?"), turn("Great, thanks!", "Melanie", 3)]
    images = renderer.render(turns, LAYOUT, TIERS)
    assert len(images) == len(TIERS)
    for img, size in zip(images, TIERS, strict=True):
        pil = decode(img)
        assert pil.size == size == (img.width, img.height)
        assert pil.mode == "L"
        assert img.font_px == images[0].font_px


def test_odd_canvases_and_sizes(renderer):
    turns = [turn("Some words to draw on a canvas that is not square.")]
    images = renderer.render(turns, (800, 600), [(800, 600), (400, 300), (300, 300), (1000, 200)])
    assert [decode(i).size for i in images] == [(800, 600), (400, 300), (300, 300), (1000, 200)]
    with pytest.raises(ValueError):
        renderer.render(turns, (0, 100), [(10, 10)])


def test_bad_sizes_raise_library_errors(renderer):
    turns = [turn("Hi")]
    for canvas, sizes in [((0, 100), [(10, 10)]), ((100, 100), [(10, 0)])]:
        with pytest.raises(InvalidInput) as err:
            renderer.render(turns, canvas, sizes)
        assert isinstance(err.value, OpticalMemoryError) and isinstance(err.value, ValueError)
    with pytest.raises(InvalidInput):
        PageRenderer(min_font_px=0)


def test_layout_size_is_returned_as_drawn(renderer):
    turns = list(full_page(renderer, LAYOUT, seed=3))[:20]
    (img,) = renderer.render(turns, LAYOUT, [LAYOUT])
    lay = renderer.fit(turns, LAYOUT)
    assert img.png == renderer.to_png(renderer.draw(lay, LAYOUT))


def test_png_is_deterministic():
    turns = full_page(PageRenderer(), LAYOUT, seed=1)[:30] + [turn("中文 עברית العربية 😀 ❤️ é")]
    sizes = [LAYOUT, (512, 512)]
    a = PageRenderer().render(turns, LAYOUT, sizes)
    b = PageRenderer().render(turns, LAYOUT, sizes)
    r = PageRenderer()
    c = r.render(turns, LAYOUT, sizes)
    d = r.render(turns, LAYOUT, sizes)
    for images in (b, c, d):
        assert [i.png for i in images] == [i.png for i in a]


def test_page_has_ink_and_white_background(renderer):
    (img,) = renderer.render([turn("Ink on paper.")], (256, 256), [(256, 256)])
    pil = decode(img)
    lo, hi = pil.getextrema()
    assert hi == 255 and lo < 64
    assert pil.getpixel((255, 255)) == 255


# -- robustness ---------------------------------------------------------------------------------

NASTY = [
    "",
    "   ",
    "\n\n\n",
    "中文字符测试：你好，世界！これは日本語です。한국어 텍스트",
    "שלום עולם, זה טקסט בעברית",
    "مرحبا بالعالم، هذا نص عربي",
    "emoji 😀🎉👍🏽 👨‍👩‍👧 ❤️ 🇫🇷",
    "controls \x00\x01\x07\x08\x1b[31mred\x1b[0m \x7f \r\n crlf \r cr \x0b vt \x0c ff \x85 nel",
    "format \u200b\u200c\u200d\u200e\u200f\u202e\ufeff\u00ad chars",
    "lone surrogate \ud800 and private use \ue000 and unassigned \U000e0fff",
    "combining e\u0301 a\u0308 and stacked a\u0301\u0302\u0303\u0304",
    "tabs\tin\ttext\n\tindented\twith\ttabs",
    "x" * 50_000,
    "https://example.org/" + "very-long-path/" * 40 + "?q=1",
    "\u2028line separator\u2029paragraph separator",
]


@pytest.mark.parametrize("text", NASTY, ids=range(len(NASTY)))
def test_nasty_text_does_not_crash(renderer, text):
    turns = [turn("before"), turn(text, "Zoë\x00\n🤖" * 3, 1), turn("after", minutes=2)]
    images = renderer.render(turns, (512, 512), [(512, 512), (256, 256)])
    assert [decode(i).size for i in images] == [(512, 512), (256, 256)]
    lay = renderer.layout(turns, (512, 512), images[0].font_px, truncate=True)
    assert line_fits(renderer, lay, (512, 512))
    for line in lay.text_lines:
        assert not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in line)
        assert "\u200d" not in line and "\ufeff" not in line and "\ud800" not in line


def test_huge_word_is_broken_and_page_truncated(renderer):
    t = turn("y" * 50_000)
    (img,) = renderer.render([t], (512, 512), [(512, 512)])
    assert img.font_px == renderer.floor_font_px
    lay = renderer.fit([t], (512, 512))
    assert lay.truncated
    assert lay.text_lines[-1].endswith("…")
    assert line_fits(renderer, lay, (512, 512))
    assert len(lay.lines) > 10


def test_long_url_is_broken_at_line_width(renderer):
    url = "https://example.org/" + "a" * 300
    lay = renderer.layout([turn(f"see {url} ok")], (400, 400), 12)
    assert lay is not None and not lay.truncated
    assert line_fits(renderer, lay, (400, 400))
    assert "".join(lay.text_lines).replace(" ", "").count("a") >= 300


def test_control_and_format_characters_are_dropped(renderer):
    lay = renderer.layout([turn("a\x00b\x1bc\u200dd\ufeffe")], (512, 512), 12)
    assert lay.text_lines == ["Caroline 8 May 2023 13:56: abcde"]


def test_line_break_characters_break_lines(renderer):
    lay = renderer.layout([turn("one\r\ntwo\rthree\u2028four")], (512, 512), 12)
    assert lay.text_lines == ["Caroline 8 May 2023 13:56: one", "two", "three", "four"]


# -- layout rules -------------------------------------------------------------------------------


def test_running_text_with_labels_and_separators(renderer):
    turns = [
        turn("Hi!"),
        turn("Hello.", "Melanie", 1),
        turn("Next day.", "Caroline", 60 * 24),
    ]
    lay = renderer.layout(turns, LAYOUT, 12)
    assert lay.text_lines == [
        "Caroline 8 May 2023 13:56: Hi! | Melanie 13:57: Hello. | Caroline 9 May 2023 13:56: Next day."
    ]


def test_code_keeps_line_breaks_and_indentation(renderer):
    code = "Try this:\n```python\ndef f(x):\n    if x:\n\treturn x * 2\n    return None\n```\nDone."
    turns = [turn(code), turn("Thanks", "Melanie", 1)]
    lay = renderer.layout(turns, LAYOUT, 12)
    assert lay.text_lines == [
        "Caroline 8 May 2023 13:56: Try this:",
        "```python",
        "def f(x):",
        "    if x:",
        "    return x * 2",
        "    return None",
        "```",
        "Done. | Melanie 13:57: Thanks",
    ]
    # code lines are set in the mono font and indented on the canvas
    styles = {run.style for line in lay.lines[1:7] for run in line.runs}
    assert styles == {Style.MONO}
    indented = lay.lines[3].runs[0]
    plain = lay.lines[2].runs[0]
    assert indented.x > plain.x


def test_indented_lines_outside_fences_are_mono(renderer):
    lay = renderer.layout([turn("Output:\n  a = 1\n    b = 2\nend")], LAYOUT, 12)
    assert lay.text_lines[1:] == ["  a = 1", "    b = 2", "end"]
    assert lay.lines[1].runs[0].style == Style.MONO
    assert lay.lines[3].runs[0].style == Style.SANS


def test_blank_prose_lines_collapse(renderer):
    lay = renderer.layout([turn("para one\n\n\npara two")], LAYOUT, 12)
    assert lay.text_lines == ["Caroline 8 May 2023 13:56: para one", "para two"]


def test_words_wrap_within_the_canvas(renderer):
    turns = full_page(renderer, (640, 640), seed=5)
    lay = renderer.fit(turns, (640, 640))
    assert line_fits(renderer, lay, (640, 640))
    assert len(lay.lines) > 20
    words = " ".join(t.text for t in turns).split()
    drawn = " ".join(lay.text_lines).split()
    assert all(w in drawn for w in words[:50])


# -- capacity, footprint, font choice -----------------------------------------------------------


def test_capacity_grows_with_canvas_area(renderer):
    caps = [renderer.capacity((s, s)) for s in (256, 512, 640, 1024, 1280)]
    assert caps == sorted(caps) and len(set(caps)) == len(caps)
    assert renderer.capacity((1280, 640)) < renderer.capacity(LAYOUT)
    assert renderer.capacity((1, 1)) >= 1


def test_footprint_grows_with_text(renderer):
    sizes = [renderer.footprint(turn("word " * n), LAYOUT) for n in (0, 1, 10, 100, 1000)]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    plain = renderer.footprint(turn("a b c d e f"), LAYOUT)
    broken = renderer.footprint(turn("a\nb\nc\nd\ne\nf"), LAYOUT)
    assert broken > plain
    assert renderer.footprint(turn("中文" * 10), LAYOUT) > renderer.footprint(
        turn("ab" * 10), LAYOUT
    )


@pytest.mark.parametrize("canvas", [LAYOUT, (1024, 1024), (640, 640), (512, 512), (1280, 720)])
def test_a_page_filled_to_capacity_fits_at_min_font(renderer, canvas):
    for seed in range(3):
        turns = full_page(renderer, canvas, seed=seed)
        total = sum(renderer.footprint(t, canvas) for t in turns)
        assert total <= renderer.capacity(canvas)
        lay = renderer.fit(turns, canvas)
        assert lay.font_px == renderer.min_font_px
        assert not lay.truncated
        # and the page is really full: most of its lines are used
        assert len(lay.lines) >= 0.8 * max_lines(renderer.metrics(lay.font_px), canvas)


def test_short_page_gets_a_larger_font(renderer):
    full = renderer.render(full_page(renderer, LAYOUT), LAYOUT, [LAYOUT])[0]
    short = renderer.render([turn("Just a short note.")], LAYOUT, [LAYOUT])[0]
    half = renderer.render(full_page(renderer, LAYOUT)[:30], LAYOUT, [LAYOUT])[0]
    assert full.font_px == renderer.min_font_px
    assert short.font_px == renderer.max_font_px
    assert full.font_px < half.font_px < short.font_px


def test_constructor_validates_sizes():
    with pytest.raises(ValueError):
        PageRenderer(min_font_px=20, max_font_px=10)
    r = PageRenderer(min_font_px=6, max_font_px=6)
    assert r.floor_font_px == 6
    assert PageRenderer(min_font_px=5).min_effective_px == 5  # the default never exceeds it
    with pytest.raises(ValueError, match="min_effective_px"):
        PageRenderer(min_effective_px=12)


# -- fonts ---------------------------------------------------------------------------------------


def _bundled(name: str):
    return resources.files("optical_memory.fonts").joinpath(name)


def test_bundled_font_coverage():
    sans = cmap_codepoints(_bundled("DejaVuSans.ttf").read_bytes())
    assert {ord("A"), ord("é"), 0x5D0, 0x627, ord("□"), ord("…")} <= sans
    assert ord("中") not in sans


def test_missing_glyphs_become_boxes_without_fallback(renderer):
    m = renderer.metrics(12)
    assert m.widths[Style.SANS]["中"] == m.widths[Style.SANS]["□"]
    assert m.face_of[Style.SANS]["中"] == -1
    assert m.face_of[Style.SANS]["A"] == 0


def test_fallback_fonts_from_argument_and_environment(monkeypatch, tmp_path):
    with pytest.raises(OSError):
        PageRenderer(fallback_fonts=[tmp_path / "missing.ttf"])
    with resources.as_file(_bundled("DejaVuSansMono.ttf")) as path:
        monkeypatch.setenv(
            FALLBACK_FONTS_ENV, os.pathsep.join([str(tmp_path / "nope.ttf"), str(path)])
        )
        with pytest.warns(UserWarning, match="nope.ttf"):
            r = PageRenderer(fallback_fonts=[path])
        assert len(r.fallback_fonts) == 2
        r.render([turn("中 and 😀")], (128, 128), [(64, 64)])


def _system_fallback():
    """A font on this machine with a glyph the bundled fonts lack, and that code point."""
    primary = cmap_codepoints(_bundled("DejaVuSans.ttf").read_bytes()) | cmap_codepoints(
        _bundled("DejaVuSansMono.ttf").read_bytes()
    )
    patterns = ["/usr/share/fonts/**/*.ttf", "/usr/share/fonts/**/*.otf", "/Library/Fonts/*.ttf"]
    for pattern in patterns:
        for path in sorted(glob.glob(pattern, recursive=True))[:200]:
            try:
                with open(path, "rb") as fh:
                    cover = cmap_codepoints(fh.read())
            except Exception:
                continue
            extra = sorted(cp for cp in cover - primary if chr(cp).isprintable() and cp > 0x20)
            if extra:
                return path, chr(extra[0])
    return None


def test_fallback_font_draws_what_the_primary_lacks():
    found = _system_fallback()
    if found is None:
        pytest.skip("no system font with glyphs beyond DejaVu")
    path, ch = found
    r = PageRenderer(fallback_fonts=[path])
    m = r.metrics(20)
    m.widths[Style.SANS][ch]
    assert m.face_of[Style.SANS][ch] == 2
    with_fb = r.render([turn(ch * 5)], (200, 60), [(200, 60)])[0].png
    without = PageRenderer().render([turn(ch * 5)], (200, 60), [(200, 60)])[0].png
    assert with_fb != without


def test_synthetic_chat_is_deterministic():
    a = [t.text for _, t in zip(range(20), synthetic_chat(7), strict=False)]
    b = [t.text for _, t in zip(range(20), synthetic_chat(7), strict=False)]
    assert a == b and len(set(a)) > 10


def test_no_turns_gives_blank_pages(renderer):
    images = renderer.render([], (256, 256), [(256, 256), (128, 128)])
    assert [decode(i).getextrema() for i in images] == [(255, 255), (255, 255)]


def test_deep_indent_does_not_leave_blank_lines(renderer):
    word = "w" * 35  # fits a line, but not behind the indent
    lay = renderer.layout([turn("code:\n" + " " * 40 + word)], (400, 400), 12)
    assert lay.text_lines == ["Caroline 8 May 2023 13:56: code:", word]
    assert line_fits(renderer, lay, (400, 400))


# -- faint tiers: abridged, never below min_effective_px -------------------------------------------


def test_a_faint_tier_is_abridged_rather_than_shrunk_below_legibility(renderer):
    turns = full_page(renderer, LAYOUT)
    large, tiny = renderer.render(turns, LAYOUT, [LAYOUT, (512, 512)])
    assert not large.abridged and tiny.abridged
    plan = renderer.plan(turns, LAYOUT, (512, 512))
    assert plan.abridged and plan.layout.font_px == renderer.min_font_px
    # downsampling that canvas to 512 px keeps the text at min_effective_px
    assert plan.layout.font_px * 512 / plan.canvas[0] >= renderer.min_effective_px - 0.01
    assert tiny.png == renderer.to_png(
        renderer.downsample(renderer.draw(plan.layout, plan.canvas), (512, 512))
    )
    # every turn is still there: short ones whole, long ones cut to their opening
    assert len(plan.turns) == len(turns)
    cut = [p for p, t in zip(plan.turns, turns, strict=True) if p.text != t.text]
    assert cut and len(cut) < len(turns)
    for shown, full in zip(plan.turns, turns, strict=True):
        assert (shown.speaker, shown.at) == (full.speaker, full.at)
        if shown.text != full.text:
            assert shown.text.endswith("…") and full.text.startswith(shown.text[:-1].rstrip())
    longest_whole = max(len(p.text) for p in plan.turns if p in turns)
    assert all(
        len(t.text) > longest_whole for t, p in zip(turns, plan.turns, strict=True) if p is not t
    )
    shown_chars = sum(map(len, plan.text_lines))
    assert (
        0.3 * 20_000 < shown_chars < sum(map(len, renderer.plan(turns, LAYOUT, LAYOUT).text_lines))
    )


def test_a_short_page_at_a_faint_tier_is_reflowed_not_cut(renderer):
    turns = full_page(renderer, LAYOUT)[:12]
    plan = renderer.plan(turns, LAYOUT, (512, 512))
    assert not plan.abridged and plan.turns == tuple(turns)
    (tiny,) = renderer.render(turns, LAYOUT, [(512, 512)])
    assert not tiny.abridged


def test_sharp_tiers_are_plain_downsamples(renderer):
    turns = full_page(renderer, LAYOUT)
    plan = renderer.plan(turns, LAYOUT, (1024, 1024))
    assert plan.canvas == LAYOUT and not plan.abridged and plan.turns == tuple(turns)


def test_min_effective_px_zero_always_downsamples():
    r = PageRenderer(min_effective_px=0)
    turns = full_page(r, LAYOUT)
    (tiny,) = r.render(turns, LAYOUT, [(512, 512)])
    assert not tiny.abridged and r.plan(turns, LAYOUT, (512, 512)).canvas == LAYOUT


def test_abridged_rendering_is_deterministic(renderer):
    turns = full_page(renderer, LAYOUT, seed=3)
    a = renderer.render(turns, LAYOUT, [(512, 512), (640, 640)])
    b = PageRenderer().render(turns, LAYOUT, [(512, 512), (640, 640)])
    assert [i.png for i in a] == [i.png for i in b]


def test_remembered_widths_are_the_character_sums_and_bounded(renderer):
    """Layouts read word and line widths from tables that remember them: each must equal
    the sum of its characters' advances (else a page would flow differently with the table
    warm), and a table empties itself at its limit instead of growing without end."""
    m = renderer.metrics(13)
    words = ["Lisbon", "naïve", "数据库", "e-mail:", "x" * 300, ""]
    for style in (Style.SANS, Style.MONO, Style.LABEL):
        for word in words:
            assert m.word_widths[style][word] == m.width(style, word)
            assert m.line_widths[style][f"{word} {word}"] == m.width(style, f"{word} {word}")
    table = m.line_widths[Style.MONO]
    for i in range(table.limit + 5):
        table[f"line {i}"]
    assert len(table) <= table.limit
    assert table["line 3"] == m.width(Style.MONO, "line 3")
    huge = "y" * 5_000  # measured, never kept
    assert table[huge] == m.width(Style.MONO, huge) and huge not in table
