"""The web view in a real headless Chromium (Debian's ``/usr/bin/chromium`` driven through
``/usr/bin/chromedriver`` by selenium) against a real ``optical-memory serve``: sign in with a
key, see the sessions, a session's pages fading through their tiers, a page's turns beside its
image, and the prompt ``assemble`` builds at a chosen budget. Screenshots are taken and checked."""

from __future__ import annotations

import io
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
selenium = pytest.importorskip("selenium")

from PIL import Image  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service as ChromeService  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from benchmarks.service import ServiceProcess  # noqa: E402
from optical_memory import AgingPolicy, MemoryManager  # noqa: E402
from optical_memory.adapters.service import create_key  # noqa: E402

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("needs Debian's chromium and chromium-driver packages")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,1400",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=ChromeService(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _seed(db: str) -> str:
    """An owner with a session whose old pages have faded to several tiers."""
    start = datetime.now(UTC) - timedelta(days=40)
    with MemoryManager(db, policy=AgingPolicy(keep_last_turns=4)) as mm:
        key, _ = create_key(mm, "alice")
        alice = mm.scoped("alice")
        for day, now in ((0, 0.0), (30, 1.0), (39, 1.5)):
            turns = [
                (
                    "user" if i % 2 == 0 else "assistant",
                    f"day {day}, note {i}: the ferry to Ilha {i} leaves pier {i % 5} at {i % 12 + 1} pm. "
                    * 5,
                    start + timedelta(days=day, minutes=i),
                )
                for i in range(30)
            ]
            alice.add_turns("voyage", turns)
            alice.age(now=start + timedelta(days=day + now))
        alice.age()
        mm.scoped("bob").add_turn("bobs-session", "user", "bob's private words")
    return key


def _shot(driver: webdriver.Chrome, path: Path) -> Image.Image:
    driver.save_screenshot(str(path))
    image = Image.open(io.BytesIO(path.read_bytes()))
    assert image.size[0] >= 1000 and image.getextrema() != ((255, 255),) * len(image.getbands())
    return image


def _navigate_by(driver: webdriver.Chrome, element: WebElement) -> None:
    """Click ``element`` and wait until the browser shows a new, fully loaded document: a click
    returns before the next page has loaded, so reading right after it can find the old page or
    nothing. The old document is marked with a token the new one lacks; while the browser is
    between documents it answers with errors of several kinds (a stale element, a node that
    "does not belong to the document", a destroyed execution context), all read as "not yet"."""
    token = uuid.uuid4().hex
    driver.execute_script("window.__omNavigationToken = arguments[0]", token)
    element.click()
    WebDriverWait(driver, 30, ignored_exceptions=(WebDriverException,)).until(
        lambda d: (
            d.execute_script(
                "return window.__omNavigationToken === undefined && document.readyState"
            )
            == "complete"
        )
    )


def _images_loaded(driver: webdriver.Chrome, css: str) -> list[int]:
    """The natural widths of the images ``css`` selects, once all have loaded (0: broken)."""
    script = (
        f"return [...document.querySelectorAll({css!r})].map(i => i.complete ? i.naturalWidth : -1)"
    )
    WebDriverWait(driver, 30).until(lambda d: all(w >= 0 for w in d.execute_script(script)))
    return driver.execute_script(script)


def test_a_signed_in_owner_sees_sessions_fading_pages_turns_and_the_prompt(
    browser: webdriver.Chrome, tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'web.db'}"
    key = _seed(db)
    with ServiceProcess(db, "--age-every", "0") as svc:
        browser.get(svc.url + "/web")
        assert browser.find_element(By.ID, "sign-in")  # not signed in: the form
        browser.find_element(By.ID, "key").send_keys(key)
        _navigate_by(browser, browser.find_element(By.ID, "sign-in"))

        assert browser.find_element(By.ID, "owner").text == "alice"
        sessions = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#sessions a.session")]
        assert sessions == ["voyage"]  # bob's session is not listed
        assert "bob's private words" not in browser.page_source
        _shot(browser, tmp_path / "sessions.png")

        _navigate_by(browser, browser.find_element(By.LINK_TEXT, "voyage"))
        pages = browser.find_elements(By.CSS_SELECTOR, ".page[data-page-id]")
        tiers = {p.get_attribute("data-tier") for p in pages}
        assert len(tiers - {"text"}) >= 2, tiers  # pages at several tiers: the fading, visible
        widths = _images_loaded(browser, "img.tier-img")
        assert widths and all(w > 0 for w in widths), widths  # every tier image loaded
        shown = {
            i.get_attribute("data-tier")
            for i in browser.find_elements(By.CSS_SELECTOR, "img.tier-img")
        }
        assert {"small", "tiny"} & shown
        _shot(browser, tmp_path / "session.png")

        first = pages[0].get_attribute("data-page-id")
        _navigate_by(browser, browser.find_element(By.LINK_TEXT, f"page {first}"))
        text = browser.find_element(By.ID, "page-turns").text
        assert "day 0, note 0: the ferry to Ilha 0" in text
        assert _images_loaded(browser, "#page-image")[0] > 0
        _shot(browser, tmp_path / "page.png")

        browser.get(svc.url + "/web/sessions/voyage")
        budget = browser.find_element(By.NAME, "budget")
        budget.clear()
        budget.send_keys("1500")
        _navigate_by(browser, browser.find_element(By.CSS_SELECTOR, "#assemble button"))
        summary = browser.find_element(By.ID, "prompt-summary").text
        used = int(summary.split(" of ")[0])
        assert 0 < used <= 1500 and "1500 tokens" in summary
        assert browser.find_elements(By.CSS_SELECTOR, "#prompt .page-segment img")
        assert browser.find_elements(By.CSS_SELECTOR, "#prompt .text-segment")
        _shot(browser, tmp_path / "prompt.png")

        browser.get(svc.url + "/web/sessions/bobs-session")  # another owner's: not found
        assert "Not found" in browser.find_element(By.TAG_NAME, "h1").text
        browser.get(svc.url + "/web/logout")
        assert browser.find_element(By.ID, "sign-in")
