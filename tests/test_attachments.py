"""A turn's images: stored losslessly once per session, returned exactly, checked before
anything is written, shown as labels where the turn is text, sent with the newest user turn."""

from __future__ import annotations

import base64
import io
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import make_history
from PIL import Image
from sqlalchemy import inspect, text

from optical_memory import (
    AgingPolicy,
    Attachment,
    AttachmentTooLarge,
    InvalidAttachment,
    MemoryManager,
    UnknownSession,
    get_target,
    migrations,
)
from optical_memory.adapters.openai import record_openai_messages, to_openai_messages
from optical_memory.attachments import MAX_TURN_ATTACHMENTS
from optical_memory.turn_text import page_text

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def image(size: tuple[int, int] = (640, 480), fmt: str = "PNG", seed: int = 1) -> bytes:
    """A noisy image (so its bytes are distinctive), encoded losslessly."""
    rnd = random.Random(seed)
    im = Image.new("RGB", size)
    im.putdata([(rnd.randrange(256), rnd.randrange(256), rnd.randrange(256))] * (size[0] * size[1]))
    for _ in range(200):
        im.putpixel((rnd.randrange(size[0]), rnd.randrange(size[1])), (rnd.randrange(256), 0, 9))
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def _attachment_rows(mm: MemoryManager) -> int:
    with mm.database.engine.connect() as conn:
        return int(conn.execute(text("SELECT COUNT(*) FROM om_attachments")).scalar_one())


def test_images_come_back_exactly_from_every_read(db_url: str) -> None:
    png, jpeg = image(), image((300, 200), "JPEG", seed=2)
    with MemoryManager(db_url) as mm:
        mm.add_turn("s", "user", "hello there")
        t = mm.add_turn("s", "user", "my platypus photos", attachments=[png, {"data": jpeg}])
        mm.add_turn("s", "assistant", "lovely")
        again = mm.add_turn("s", "user", "the first one again", attachments=[png])
        assert [(a.media_type, a.width, a.height) for a in t.attachments] == [
            ("image/png", 640, 480),
            ("image/jpeg", 300, 200),
        ]
        got = mm.turns("s")
        assert got[1] == t and got[3] == again
        assert [a.data for a in got[1].attachments] == [png, jpeg]
        assert got[0].attachments == () and got[2].attachments == ()
        assert mm.read("s", 2, 2)[0].attachments == t.attachments
        hit = mm.recall("s", "platypus")[0]
        assert hit.turn.attachments == t.attachments
        assert _attachment_rows(mm) == 2  # the same image twice in a session is stored once
        # per session: another session's copy is its own, and forgetting one keeps the other
        mm.add_turn("other", "user", "same picture", attachments=[png])
        assert _attachment_rows(mm) == 3
        mm.forget("s")
        assert _attachment_rows(mm) == 1
        assert mm.turns("other")[0].attachments[0].data == png
        # an Attachment read back can be added again as it is
        copy = mm.add_turn("third", "user", "copied", attachments=mm.turns("other")[0].attachments)
        assert copy.attachments[0].data == png


def test_bad_attachments_are_typed_errors_and_write_nothing(sqlite_url: str) -> None:
    png = image()
    truncated = png[: len(png) // 2]
    with MemoryManager(sqlite_url, max_attachment_bytes=len(png) + 10) as mm:
        cases: list[tuple[object, type[Exception], str]] = [
            ([b"not an image at all"], InvalidAttachment, "not an image Pillow can decode"),
            ([truncated], InvalidAttachment, "not an image Pillow can decode"),
            (["data:image/png;base64,xyz"], InvalidAttachment, "pass the image's bytes"),
            (png, InvalidAttachment, "must be a list"),
            ([{"data": png, "media_type": "image/jpeg"}], InvalidAttachment, "bytes are image/png"),
            ([image((800, 800), seed=3)], AttachmentTooLarge, "raise max_attachment_bytes"),
            ([png] * (MAX_TURN_ATTACHMENTS + 1), AttachmentTooLarge, "at most"),
        ]
        for attachments, error, words in cases:
            with pytest.raises(error, match=words):
                mm.add_turn("s", "user", "look", attachments=attachments)  # type: ignore[arg-type]
        with pytest.raises(UnknownSession):
            mm.turns("s")  # nothing was written, not even the session
        mm.add_turn("s", "user", "first")
        with pytest.raises(InvalidAttachment, match=r"turns\[1\]"):  # all or nothing
            mm.add_turns(
                "s",
                [
                    {"role": "user", "content": "ok", "attachments": [png]},
                    {"role": "user", "content": "bad", "attachments": [truncated]},
                ],
            )
        assert [t.content for t in mm.turns("s")] == ["first"]
        assert _attachment_rows(mm) == 0
        assert issubclass(InvalidAttachment, ValueError)


def test_images_are_labels_in_text_and_on_pages(sqlite_url: str) -> None:
    png = image((640, 480))
    policy = AgingPolicy(keep_last_turns=4, min_fill=0)
    with MemoryManager(sqlite_url, policy=policy) as mm:
        photo = mm.add_turn("s", "user", "here is the harbour map", T0, attachments=[png])
        mm.add_turns(
            "s", make_history(40, lambda i: f"turn {i} " + "tide talk " * 30, T0, roles=["user"])
        )
        label = "[image 640×480 png]"
        assert page_text("user", photo.content, {}, photo.attachments).endswith(label)
        # its tokens count the label, as every text form shows it
        plain = mm.add_turn("t", "user", "here is the harbour map")
        assert photo.tokens > plain.tokens
        assert not mm.age(now=T0 + timedelta(days=40)).errors
        pages = mm.pages("s")
        assert pages and pages[0].first_seq == 1
        assert pages[0].text_tokens >= photo.tokens
        assert mm.turns("s")[0] == photo  # the archive keeps the image exactly
        # recalled from a faint page: the block names the image, the Turn carries it
        ctx = mm.assemble("s", 900, now=T0 + timedelta(days=40), cue="harbour map")
        assert ctx.recalled is not None and label in ctx.recalled.text
        assert ctx.recalled.turns[0].attachments[0].data == png


def test_only_the_newest_user_turns_images_are_sent_and_they_are_counted(
    sqlite_url: str,
) -> None:
    png = image((600, 400))
    target = get_target("anthropic")
    with MemoryManager(sqlite_url, target="anthropic") as mm:
        mm.add_turn("s", "user", "what is this?", attachments=[png])
        ctx = mm.assemble("s", 4000)
        (seg,) = ctx.texts
        assert seg.shows_images and seg.image_tokens == target.image_cost(600, 400)
        assert ctx.tokens == seg.turn.tokens + seg.image_tokens
        assert mm.assemble("s", 4000, newest_images=False).tokens == seg.turn.tokens
        mm.add_turn("s", "assistant", "a chart")
        mm.add_turn("s", "user", "thanks")
        later = mm.assemble("s", 4000)
        assert not any(s.shows_images for s in later.texts)
        assert later.tokens == sum(t.tokens for t in mm.turns("s"))


def _data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def test_openai_adapter_sends_the_users_image_and_archives_it(sqlite_url: str) -> None:
    png = image((512, 512))
    url = _data_url(png)
    convo: list[dict] = [  # type: ignore[type-arg]
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is in this image?"},
                {"type": "image_url", "image_url": {"url": url}},
            ],
        },
    ]
    with MemoryManager(sqlite_url, target="openai") as mm:
        stored = record_openai_messages(mm, "c", convo)
        assert [len(t.attachments) for t in stored] == [0, 0, 1]
        assert stored[-1].attachments[0].data == png and "omitted_blocks" not in stored[-1].metadata
        assert record_openai_messages(mm, "c", convo) == []  # sent again: nothing stored twice
        ctx = mm.assemble("c", 3000)
        sent = to_openai_messages(ctx, system_prompt="You are helpful.")
        assert sent[-1] == {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is in this image?"},
                {"type": "image_url", "image_url": {"url": url}},  # the same URL, byte-exact
            ],
        }
        assert ctx.tokens >= get_target("openai").image_cost(512, 512) + stored[-1].tokens
        convo += [
            {"role": "assistant", "content": "a test card"},
            {"role": "user", "content": "ok"},
        ]
        assert len(record_openai_messages(mm, "c", convo)) == 2
        later = to_openai_messages(mm.assemble("c", 3000))
        assert all(isinstance(m["content"], str) for m in later)
        assert any(m["content"] == "what is in this image? [image 512×512 png]" for m in later)
        assert mm.turns("c")[2].attachments[0].data == png


def test_a_0010_database_upgrades_with_everything_kept(db_url: str) -> None:
    later = T0 + timedelta(days=3)
    with MemoryManager(db_url, policy=AgingPolicy(min_fill=0)) as mm:
        mm.add_turns("s", make_history(80, lambda i: f"turn {i} " + "words " * 40, T0))
        assert not mm.age(now=later).errors
        engine = mm.database.engine
        migrations.downgrade(engine, "0010")  # the store as 0010 had it: no images anywhere
        insp = inspect(engine)
        assert "attachments" not in {c["name"] for c in insp.get_columns("om_turns")}
        assert "om_attachments" not in insp.get_table_names()
        assert migrations.current_revision(engine) == "0010"
    with MemoryManager(db_url, policy=AgingPolicy(min_fill=0)) as mm:  # upgrades on open
        assert migrations.current_revision(mm.database.engine) == migrations.head_revision()
        turns, pages = mm.turns("s"), mm.pages("s")
        assert len(turns) == 80 and all(t.attachments == () for t in turns)
        assert turns[5].content.startswith("turn 5 ") and pages
        assert mm.verify(repair=False).ok
        png = image()
        t = mm.add_turn("s", "user", "now with a picture", attachments=[png])
        assert mm.turns("s", since=80) == [t] and t.attachments[0].data == png
        assert isinstance(t.attachments[0], Attachment)


def test_the_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("### Images in turns") :]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "images.db").exists()


def test_the_anthropic_format_sends_the_newest_users_image(sqlite_url: str) -> None:
    from optical_memory.adapters.service.formats import to_anthropic_messages

    png = image((320, 240))
    with MemoryManager(sqlite_url, target="anthropic") as mm:
        mm.add_turn("s", "user", "and this one?", attachments=[png])
        body = to_anthropic_messages(mm.assemble("s", 3000))
        blocks = body["messages"][-1]["content"]
        assert blocks[0] == {"type": "text", "text": "and this one?"}
        assert blocks[1]["source"]["media_type"] == "image/png"
        assert base64.b64decode(blocks[1]["source"]["data"]) == png
