"""The web console (/ui) in a real browser: Debian's Chromium driven by Playwright.

Each test logs in with the admin token, works a page the way a person would, and
fails on any console error or uncaught exception in the page. The main pages'
screenshots are taken by the tests that fill those pages: into a temporary folder,
or into docs/ (which the README shows) with ``EDGESIM_UPDATE_SCREENSHOTS=1``, so
that a test run leaves the checkout as it was. Skipped, with the reason, where Chromium or Playwright is missing;
CI (.ci/run) installs both.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from consolekit import start_admin_edge

pytestmark = pytest.mark.timeout(120)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if CHROMIUM is None:
    pytest.skip("no chromium on this machine (apt-get install chromium)", allow_module_level=True)

DOCS = Path(__file__).parents[2] / "docs"
UPDATE_DOCS = os.environ.get("EDGESIM_UPDATE_SCREENSHOTS") == "1"
WAIT_MS = 15_000
# The flags that work on this project's machines (see DESIGN.md): headless, no
# sandbox (containers run as root), and nothing that reaches out to the network.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class Console:
    """A logged-in page on an edge's console, with the page's errors collected."""

    def __init__(self, page: Any, edge: Any) -> None:
        self.page = page
        self.edge = edge
        self.errors: list[str] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def _on_console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def open(self) -> None:
        self.page.goto(self.edge.admin_url + "/ui")
        self.page.fill("#token", self.edge.admin_token)
        self.page.click("#login-form button")
        sync_api.expect(self.page.locator("#tabs")).to_be_visible(timeout=WAIT_MS)

    def tab(self, name: str) -> None:
        self.page.click(f"#tabs button[data-tab={name}]")
        sync_api.expect(self.page.locator(f"#{name}")).to_be_visible(timeout=WAIT_MS)

    def screenshot(self, name: str) -> None:
        folder = DOCS if UPDATE_DOCS else Path(tempfile.gettempdir()) / "edgesim-console-shots"
        folder.mkdir(exist_ok=True)
        path = folder / f"console-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 0

    def assert_no_errors(self, *expected_statuses: int) -> None:
        """No errors but the browser's own note of each refusal the test provoked on purpose."""
        expected = tuple(f"status of {status} " for status in expected_statuses)
        unexpected = [e for e in self.errors if not any(x in e for x in expected)]
        assert unexpected == [], unexpected


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        # launch() gives the browser a fresh temporary profile of its own (it refuses
        # --user-data-dir), so no state carries over between runs.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=60_000)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def console(browser: Any, edge: Any) -> Iterator[Console]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(WAIT_MS)
    try:
        page = Console(context.new_page(), edge)
        page.open()
        yield page
    finally:
        context.close()


def test_login_needs_the_token(browser: Any, edge: Any) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(edge.admin_url + "/ui")
        page.fill("#token", "not-the-token")
        page.click("#login-form button")
        sync_api.expect(page.locator("#login-error")).to_contain_text("not the admin token")
        assert page.locator("#tabs").is_hidden()
        # The refusal was recorded without the token.
        event = edge.wait_for_event(kind="admin.denied", timeout=5)
        assert "not-the-token" not in str(event)
    finally:
        context.close()


def test_every_page_loads_without_console_errors(console: Console) -> None:
    for tab in ("handshakes", "devices", "sets", "topics"):
        console.tab(tab)
    # Reloading keeps the session (sessionStorage) and lands on the same tab.
    console.page.reload()
    sync_api.expect(console.page.locator("#topics")).to_be_visible()
    console.assert_no_errors()


def test_a_refused_device_appears_live_with_its_reason(console: Console, device: Any) -> None:
    device("dev-ok", protocol="mqtt")
    console.tab("handshakes")
    sync_api.expect(console.page.locator("#hs-live")).to_have_text("live")
    result = device.run("dev-bad", fault="wrong-ca")
    assert result.outcome == "refused"
    row = console.page.locator("#hs-table tbody tr[data-outcome=refused]").first
    sync_api.expect(row.locator("td.alert")).to_have_text(result.reason)
    sync_api.expect(row).to_contain_text("dev-bad")  # the presented certificate's subject
    sync_api.expect(row.locator(".hint")).not_to_be_empty()
    # "Why was device X refused?": search by name, refused only.
    console.page.fill("#hs-search", "dev-bad")
    console.page.select_option("#hs-outcome", "refused")
    sync_api.expect(console.page.locator("#hs-table tbody tr")).to_have_count(1)
    console.page.fill("#hs-search", "")
    console.page.select_option("#hs-outcome", "")
    console.screenshot("handshakes")
    console.assert_no_errors()


def test_a_device_is_disconnected_from_the_console(console: Console, device: Any) -> None:
    dev = device("dev-d", protocol="mqtt")
    assert dev.subscribe("devices/dev-d/#").ok
    console.tab("devices")
    sync_api.expect(console.page.locator("#dev-live")).to_have_text("live")
    # A device that connects while the page is open appears (the event stream says so).
    device("dev-e", protocol="wss")
    other = console.page.locator('#dev-table tr[data-identity="default/dev-e"]')
    sync_api.expect(other).to_contain_text("mqtt-ws 3.1.1")  # MQTT over WebSocket
    row = console.page.locator('#dev-table tr[data-identity="default/dev-d"]')
    sync_api.expect(row).to_contain_text("devices/dev-d/#")
    # Messages in and out: two published, their echoes delivered.
    for n in range(2):
        assert dev.publish(f"devices/dev-d/state{n}", b"on").ok
        assert dev.receive(timeout=5).payload == b"on"
    sync_api.expect(row.locator("td.messages-in")).to_have_text("2")
    sync_api.expect(row.locator("td.messages-out")).to_have_text("2")
    console.screenshot("devices")
    row.locator("button.disconnect").click()
    sync_api.expect(row).to_have_count(0)
    event = console.edge.wait_for_event(kind="admin.disconnected", identity="default/dev-d")
    assert event["reason"] == "disconnected by an administrator"
    console.edge.wait_for_event(kind="connection.closed", identity="default/dev-d")
    sync_api.expect(
        console.page.locator('#dev-table tr[data-identity="default/dev-e"]')
    ).to_have_count(1)
    console.assert_no_errors()


# A propagation delay long enough to see a change on its way before it is active.
@pytest.mark.edgesim(propagation_delay=2.0)
def test_uploads_show_findings_and_a_binding_propagates(
    console: Console, pki: Any, tmp_path: Path
) -> None:
    good = tmp_path / "chain.pem"
    good.write_bytes(pki.ca_chain_pem)
    console.tab("sets")
    page = console.page
    page.fill("#upload-set", "fleet-a")
    page.set_input_files("#upload-file", str(good))
    sync_api.expect(page.locator("#upload-result .ok")).to_contain_text("fleet-a v1")
    # A bad one, by drag and drop: a device certificate is not a CA.
    leaf = pki.device("dev-leaf").cert_pem.decode()
    transfer = page.evaluate_handle(
        """pem => { const dt = new DataTransfer();
                    dt.items.add(new File([pem], "leaf.pem", {type: "application/x-pem-file"}));
                    return dt; }""",
        leaf,
    )
    page.dispatch_event("#upload-drop", "drop", {"dataTransfer": transfer})
    sync_api.expect(page.locator("#upload-result .refused")).to_contain_text("leaf.pem refused")
    finding = page.locator('#upload-result tr[data-code="leaf-in-ca-set"]')
    sync_api.expect(finding).to_have_count(1)
    sync_api.expect(finding).to_contain_text("dev-leaf")
    # Bind, and watch the binding's propagation reach active.
    page.fill("#bind-host", "fleet-a.example.com")
    page.fill("#bind-set", "fleet-a")
    page.click("#bind-form button")
    state = page.locator('#bindings-table tr[data-host="fleet-a.example.com"] td.state')
    sync_api.expect(state).to_have_text(re.compile("^(pending|propagating)$"))
    sync_api.expect(state).to_have_text("active")
    sync_api.expect(page.locator("#prop-state")).to_have_text("active")
    # Would this device be accepted? A device of the same PKI is.
    page.click('#sets-table tr[data-set="fleet-a"] button')
    page.set_input_files("#check-file", str(pki.device("dev-check").cert_path))
    sync_api.expect(page.locator("#check-verdict")).to_have_text("accepted by fleet-a v1")
    console.screenshot("sets")
    console.assert_no_errors(422)  # the refused upload


def test_publish_and_watch_a_topic(console: Console, device: Any) -> None:
    dev = device("dev-t", protocol="mqtt")
    assert dev.subscribe("devices/dev-t/#").ok
    console.tab("topics")
    page = console.page
    page.fill("#sub-filter", "devices/#")
    page.click("#subscribe-form button[type=submit]")
    sync_api.expect(page.locator("#sub-state")).to_have_text("subscribed to devices/#")
    page.fill("#pub-topic", "devices/dev-t/cmd")
    page.fill("#pub-payload", "<b>reboot</b>")
    page.click("#publish-form button[type=submit]")
    sync_api.expect(page.locator("#pub-result")).to_have_text(
        "published, delivered to 2 subscriber(s)"
    )
    assert dev.receive(timeout=5).payload == b"<b>reboot</b>"
    # What a device publishes shows up too, as text: markup in payloads is not markup.
    dev.publish("devices/dev-t/state", b"on")
    sync_api.expect(page.locator("#messages-table td.payload").first).to_have_text("on")
    sync_api.expect(page.locator("#messages-table td.payload").nth(1)).to_have_text("<b>reboot</b>")
    assert page.locator("#messages-table b").count() == 0
    console.screenshot("topics")
    console.assert_no_errors()


def test_login_with_an_admin_client_certificate(browser: Any, tmp_path: Path) -> None:
    """No token: Chromium presents the admin certificate (Playwright's client_certificates)."""
    edge = start_admin_edge(tmp_path)
    admin = edge.ca.issue_device("admin-web")
    (tmp_path / "admin-web.pem").write_bytes(admin.cert_pem)
    (tmp_path / "admin-web.key").write_bytes(admin.key_pem())
    # A browser of its own, closed before the edge stops: a browser keeps
    # connections open after its pages close, and the edge's loop must not end
    # under them (the module's browser lives until the module ends).
    browser = browser.browser_type.launch(executable_path=CHROMIUM, args=ARGS, timeout=60_000)
    try:
        # The listener's certificate comes from a test CA Chromium does not know.
        with_cert = browser.new_context(
            ignore_https_errors=True,
            client_certificates=[
                {
                    "origin": edge.base,
                    "certPath": str(tmp_path / "admin-web.pem"),
                    "keyPath": str(tmp_path / "admin-web.key"),
                }
            ],
        )
        with_cert.set_default_timeout(WAIT_MS)
        try:
            console = Console(with_cert.new_page(), edge)
            page = console.page
            page.goto(edge.base + "/ui")
            # Logged in at once, as the certificate's subject, with no token anywhere.
            sync_api.expect(page.locator("#edge-state")).to_have_text(
                "logged in (certificate CN=admin-web)"
            )
            assert page.evaluate("sessionStorage.getItem('edgesim.token')") is None
            for tab in ("handshakes", "devices", "sets", "topics"):
                console.tab(tab)
            # A state-changing call from the console passes the cross-site check.
            page.fill("#pub-topic", "devices/x/cmd")
            page.fill("#pub-payload", "hello")
            page.click("#publish-form button[type=submit]")
            sync_api.expect(page.locator("#pub-result")).to_have_text(
                "published, delivered to 0 subscriber(s)"
            )
            console.assert_no_errors()
        finally:
            with_cert.close()
        # Without the certificate: the login form, offering both ways; the token works.
        without = browser.new_context(ignore_https_errors=True)
        without.set_default_timeout(WAIT_MS)
        try:
            console = Console(without.new_page(), edge)
            page = console.page
            page.goto(edge.base + "/ui")
            sync_api.expect(page.locator("#cert-login-row")).to_be_visible()
            page.click("#cert-login")
            sync_api.expect(page.locator("#login-error")).to_have_text(
                "This browser presented no admin client certificate."
            )
            page.fill("#token", edge.token)
            page.click("#login-form button")
            sync_api.expect(page.locator("#edge-state")).to_have_text("logged in (token)")
            console.assert_no_errors(401)  # the certificate probes, refused
        finally:
            without.close()
    finally:
        browser.close()
        edge.handle.stop()
