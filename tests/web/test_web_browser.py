"""The console in a real browser: Debian's chromium driven by Playwright, against a real
``lanalyze serve`` with stored test flows (and test mail).

One module, one server, one browser; screenshots go to ``test-artifacts/console/``.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ARTIFACTS, free_port, lanalyze_cmd, require_tool
from tests.web.helpers import ALICE_HASH, PASSWORD
from tests.web.sample_flows import TOP_TALKER, write_exporters_file, write_sample

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = ARTIFACTS / "console"


def _write_config(tmp: Path, data_dir: Path, port: int) -> Path:
    config = tmp / "lanalyze.toml"
    config.write_text(
        f"""
[general]
data_dir = "{data_dir}"
hostname = "mx.test.example"

[flows]
enabled = false

[mail]
enabled = false

[web]
listen = "127.0.0.1:{port}"

[[web.users]]
name = "alice"
password_hash = "{ALICE_HASH}"
"""
    )
    return config


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("console")
    data_dir = tmp / "data"
    data_dir.mkdir()
    write_sample(data_dir)
    write_exporters_file(data_dir)
    seed_mail = getattr(_mail_seed(), "seed", None)
    if seed_mail is not None:
        seed_mail(data_dir)
    port = free_port()
    config = _write_config(tmp, data_dir, port)
    proc = subprocess.Popen(
        [*lanalyze_cmd(), "--config", str(config), "serve"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=1) as response:
                if response.status == 200:
                    break
        except OSError as exc:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"serve did not start: {proc.communicate()[1]}") from exc
            time.sleep(0.1)
    try:
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def _mail_seed() -> Any:
    try:
        from tests.web import sample_mail
    except ImportError:
        return None
    return sample_mail


@pytest.fixture(scope="module")
def page(server: str) -> Iterator[Any]:
    chromium = require_tool("chromium")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        context = browser.new_context(
            base_url=server, accept_downloads=True, viewport={"width": 1400, "height": 1000}
        )
        context.set_default_timeout(10_000)
        tab = context.new_page()
        problems: list[str] = []
        tab.on(
            "console",
            lambda message: problems.append(message.text) if message.type == "error" else None,
        )
        tab.on("pageerror", lambda error: problems.append(str(error)))
        tab.problems = problems  # type: ignore[attr-defined]
        try:
            yield tab
        finally:
            context.close()
            browser.close()


def test_console_in_a_browser(page: Any, server: str) -> None:
    from playwright.sync_api import expect

    # Log in: the dashboard redirects to the login form and back.
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login\?next=%2F$"))
    page.get_by_label("User name").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name=re.compile("^Flows"))).to_be_visible()

    # Dashboard: a chart drawn by our script, the top talker first.
    expect(page.locator("#traffic svg path").first).to_be_attached()
    _every_control_is_labelled(page)
    talkers = page.locator("#talkers tbody tr")
    expect(talkers.first.locator("td").first).to_have_text(TOP_TALKER)
    page.screenshot(path=str(SHOTS / "dashboard.png"), full_page=True)

    # Change the range: the select submits the form, the URL keeps the choice.
    page.get_by_label("Time range").select_option("6h")
    expect(page).to_have_url(re.compile(r"range=6h"))
    expect(page.get_by_role("heading", name=re.compile("Last 6 hours"))).to_be_visible()

    # A filter: only TCP applications are left.
    page.get_by_label(re.compile("^Filter")).fill("proto tcp")
    page.get_by_label(re.compile("^Filter")).press("Enter")
    expect(page).to_have_url(re.compile(r"filter=proto\+tcp"))
    apps = page.locator("#applications tbody td:first-child")
    expect(apps.first).to_contain_text("tcp/")
    assert all(text.startswith("tcp/") for text in apps.all_inner_texts())

    # Sort a table by packets with the keyboard.
    page.locator("#talkers th button", has_text="Packets").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#talkers th").nth(2)).to_have_attribute("aria-sort", "descending")

    # A malformed filter: the error shows the caret under the mistake.
    page.get_by_label(re.compile("^Filter")).fill("proto tcp and host 10.0.0.300")
    page.get_by_label(re.compile("^Filter")).press("Enter")
    error = page.locator("#filter-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("host 10.0.0.300")
    lines = error.inner_text().splitlines()
    caret = lines[-1].index("^")
    assert lines[-2][caret:].startswith("10.0.0.300"), lines
    page.screenshot(path=str(SHOTS / "filter-error.png"))

    # Back to a good filter, drill into the top talker: range and filter stay in the URL.
    page.get_by_label(re.compile("^Filter")).fill("proto tcp")
    page.get_by_label(re.compile("^Filter")).press("Enter")
    page.locator("#talkers tbody a", has_text=TOP_TALKER).first.click()
    expect(page).to_have_url(re.compile(rf"/flows/host/{re.escape(TOP_TALKER)}\?range=6h"))
    assert "filter=proto+tcp" in page.url
    expect(
        page.get_by_role("heading", name=re.compile(f"Host {re.escape(TOP_TALKER)}"))
    ).to_be_visible()
    expect(page.locator("#flows tbody tr").first).to_be_visible()
    expect(page.locator("#traffic svg path").first).to_be_attached()
    page.screenshot(path=str(SHOTS / "host.png"), full_page=True)

    # Export a table as CSV and the chart as SVG (downloads made by our script).
    with page.expect_download() as info:
        page.get_by_role("button", name="Export Peers as CSV").click()
    download = info.value
    assert download.suggested_filename == "peers.csv"
    csv_text = Path(download.path()).read_text()
    header, first = csv_text.splitlines()[:2]
    assert header == "Peer address,bytes,packets,flows,bits_per_second,share_percent"
    assert re.match(r"^[0-9a-f.:]+,\d+,\d+,\d+,", first), first
    with page.expect_download() as info:
        page.locator("button[data-export-chart='traffic'][data-format='svg']").click()
    svg = Path(info.value.path()).read_text()
    assert svg.startswith("<svg") and "</svg>" in svg
    with page.expect_download() as info:
        page.locator("button[data-export-chart='traffic'][data-format='png']").click()
    assert Path(info.value.path()).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Over a day, top conversations (raw flows only) load after the page, in place.
    page.goto("/?range=24h")
    expect(page.locator("#conversations tbody tr").first).to_be_visible()
    expect(page.locator("#panel-conversations")).not_to_have_attribute("aria-busy", "true")

    # Exporters page.
    page.get_by_role("link", name="Exporters").click()
    expect(page.get_by_role("heading", level=1, name=re.compile("^Exporters"))).to_be_visible()
    row = page.locator("#exporters tbody tr", has_text="192.168.1.1")
    expect(row).to_contain_text("36,000")
    expect(page.locator("#exporters tbody tr", has_text="192.168.1.2")).to_contain_text("silent")
    page.screenshot(path=str(SHOTS / "exporters.png"), full_page=True)

    _mail_checks(page)

    # Log out: the session is gone, pages ask for a login again.
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/login$"))
    page.goto("/exporters")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fexporters$"))

    # The malformed filter's page is a 400 on purpose, and the forged mail's tracking pixel
    # and its script must have been blocked; nothing else may fail.
    expected = ("status of 400", "tracker.example", "Blocked script execution in 'about:srcdoc'")
    others = [p for p in page.problems if not any(e in p for e in expected)]
    assert not others, others


def _mail_checks(page: Any) -> None:
    from playwright.sync_api import expect

    seed = _mail_seed()
    if seed is None:
        return
    page.get_by_role("link", name="Mail", exact=True).click()
    expect(page.get_by_role("heading", name=re.compile("^Mail"))).to_be_visible()
    page.screenshot(path=str(SHOTS / "mail-list.png"), full_page=True)
    page.get_by_role("link", name=seed.FORGED_SUBJECT).click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("probably forged")
    expect(page.locator(".compare .mismatch").first).to_be_visible()
    expect(page.locator(".explain")).to_contain_text("The From: line is probably forged")
    # The HTML part renders in the sandbox, its remote image blocked by the CSP.
    frame = page.frame_locator("iframe.mailhtml")
    expect(frame.locator("p")).to_contain_text("Restore access")
    page.wait_for_timeout(200)
    assert any("tracker.example" in p for p in page.problems), page.problems
    assert any("Blocked script execution" in p for p in page.problems), page.problems
    page.screenshot(path=str(SHOTS / "mail-forged.png"), full_page=True)

    # The queue: retry the deferred message (a POST carrying the CSRF token).
    page.get_by_role("link", name="Queue").click()
    row = page.locator("#queue tbody tr", has_text=seed.DEFERRED_ID)
    expect(row).to_contain_text("deferred")
    page.screenshot(path=str(SHOTS / "mail-queue.png"), full_page=True)
    row.get_by_role("button", name="Retry now").click()
    expect(page.get_by_role("status")).to_contain_text("done")
    expect(page.locator("#queue tbody tr", has_text=seed.DEFERRED_ID)).to_contain_text("queued")

    # Rejections: linked from the mail pages, searched by client address.
    page.get_by_role("link", name="Rejected").click()
    client = page.get_by_role("searchbox", name=re.compile("^Client"))
    client.fill(seed.REJECTED_CLIENT)
    client.press("Enter")
    expect(page.locator("#rejections tbody tr")).to_have_count(2)
    expect(page.locator("#rejections")).to_contain_text(seed.REJECTED_RECIPIENT)
    page.screenshot(path=str(SHOTS / "mail-rejected.png"), full_page=True)


def _every_control_is_labelled(page: Any) -> None:
    controls = page.locator("main input:not([type=hidden]), main select")
    assert controls.count() >= 5
    for index in range(controls.count()):
        control_id = controls.nth(index).get_attribute("id")
        assert control_id, controls.nth(index).evaluate("e => e.outerHTML")
        assert page.locator(f"label[for='{control_id}']").count() == 1, control_id


# Pages whose last columns were cut off on narrower screens: (path, table id, column).
NARROW_PAGES = [
    ("/?range=24h", "talkers", "Share"),
    ("/mail?range=all", "messages", "Status"),
]


@pytest.mark.parametrize("width", [1024, 1400])
def test_tables_fit_at_common_widths(page: Any, width: int) -> None:
    """Every column of the dashboard's and the mail list's tables is on screen, and no cell's
    text spills out of its cell, at 1024 and 1400 px (screenshots for a person to look at)."""
    page.set_viewport_size({"width": width, "height": 900})
    try:
        for path, table_id, column in NARROW_PAGES:
            page.goto(path)
            if "/login" in page.url:  # run alone, or after the main test logged out
                page.get_by_label("User name").fill("alice")
                page.get_by_label("Password").fill(PASSWORD)
                page.get_by_role("button", name="Log in").click()
                page.wait_for_url(re.compile(r"^(?!.*/login)"))
            table = page.locator(f"table#{table_id}")
            table.wait_for()
            name = path.strip("/?").split("?")[0] or "dashboard"
            page.screenshot(path=str(SHOTS / f"width-{width}-{name}.png"), full_page=True)
            found = page.evaluate(
                """([id, column]) => {
                  const table = document.getElementById(id);
                  const wrap = table.closest('.table-wrap') || table.parentElement;
                  const heads = [...table.querySelectorAll('thead th')];
                  const index = heads.findIndex(th => th.textContent.trim().startsWith(column));
                  const box = wrap.getBoundingClientRect();
                  const problems = [];
                  if (index < 0) problems.push('no column ' + column);
                  const last = heads[heads.length - 1].getBoundingClientRect();
                  if (last.right > box.right + 1 || wrap.scrollWidth > wrap.clientWidth + 1)
                    problems.push('table wider than its box: ' + wrap.scrollWidth
                                  + ' > ' + wrap.clientWidth);
                  if (last.right > document.documentElement.clientWidth + 1)
                    problems.push('last column off screen at ' + last.right);
                  for (const row of table.querySelectorAll('tbody tr')) {
                    const cell = row.children[index];
                    if (!cell) continue;
                    const inner = cell.getBoundingClientRect();
                    for (const child of cell.querySelectorAll('*')) {
                      const r = child.getBoundingClientRect();
                      if (r.right > inner.right + 1 || r.bottom > inner.bottom + 1)
                        problems.push(column + ' cell content spills: ' + cell.textContent.trim());
                    }
                    if (cell.scrollWidth > cell.clientWidth + 1)
                      problems.push(column + ' cell clipped: ' + cell.textContent.trim());
                  }
                  return problems;
                }""",
                [table_id, column],
            )
            assert found == [], (width, path, found)
    finally:
        page.set_viewport_size({"width": 1400, "height": 1000})
