"""Drives tokenproxy's status page (the admin listener's GET /) in headless Chromium, as a person
would, and prints what it saw as one JSON object on the last line of stdout.

    python3 -B status_page.py SCENARIO --url http://127.0.0.1:ADMINPORT/ [options]

Scenarios (StatusPageTests.swift runs each; the checks are made there):
  live          the countdown moves; then "ready" is written to --signal-dir, and once the test
                has run `tokenproxy refresh` and written "refreshed" (the time it finished) there,
                how long the page took to show the new token, without a reload
  actions       "Refresh now" once, then the faults form (enabled, --percent)
  admin-token   an action asks for the admin token; --wrong is refused, --right works
  narrow        at --width CSS pixels: the document's width against the viewport's
  screenshot    a PNG of the whole page at --width into --out
  cross-origin  opens --url (a page on another origin) that tries to drive the admin API, and
                reports what each attempt got
Every wait is bounded; a scenario that cannot finish prints {"error": ...} and exits 1.
"""

import argparse
import os
import re
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import browser  # noqa: E402

COUNTDOWN = re.compile(r"^(?:(\d+):)?(\d{2}):(\d{2})$")


class Failed(Exception):
    pass


def wait_for(what, condition, timeout=15.0, every=0.05):
    """Polls condition() until it returns something truthy; that value, or Failed after timeout."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as error:  # the element is being replaced, the page is loading
            last_error = error
        time.sleep(every)
    raise Failed(f"timed out after {timeout} s waiting for {what}" + (f" ({last_error})" if last_error else ""))


def js(driver, script, *args):
    return driver.execute_script(script, *args)


def card(identity):
    return f'[data-identity="{identity}"]'


def seconds_of(text):
    match = COUNTDOWN.match(text or "")
    if not match:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds)


def open_page(driver, url, identity):
    driver.get(url)
    wait_for(f"the card of identity {identity} with a countdown", lambda: seconds_of(js(
        driver, "const c = document.querySelector(arguments[0] + ' .countdown'); return c && c.textContent;", card(identity))) is not None)
    js(driver, "window.__notReloaded = true;")


def identity_view(driver, identity):
    return js(driver, """
        const card = document.querySelector(arguments[0]);
        if (!card) return null;
        const items = Array.from(card.querySelectorAll('.refreshes li[data-result]'));
        return {
          countdown: card.querySelector('.countdown').textContent,
          expiresAt: card.dataset.expiresAt,
          expiresText: card.querySelector('.expires-at').textContent,
          state: card.querySelector('.state').dataset.state,
          stateText: card.querySelector('.state').textContent,
          refreshes: items.map((li) => ({result: li.dataset.result, trigger: li.dataset.trigger, text: li.textContent})),
          refreshCount: card.querySelector('.refreshes').dataset.count,
        };""", card(identity))


def events_shown(driver):
    return js(driver, "return Array.from(document.querySelectorAll('#event-log li[data-type]')).map((li) => li.dataset.type);")


def action_result(driver):
    return js(driver, """
        const box = document.getElementById('action-result');
        return {hidden: box.hidden, outcome: box.dataset.outcome || '', text: box.textContent};""")


def wait_for_outcome(driver, outcomes, timeout=15.0):
    return wait_for(f"#action-result to say {outcomes}", lambda: (lambda r: r if r["outcome"] in outcomes else None)(action_result(driver)), timeout)


ANY_OUTCOME = {"ok", "error", "refused", "auth-needed"}


def click_and_wait(driver, by, selector, outcomes=ANY_OUTCOME):
    """Clicks, then waits for #action-result to give that click's outcome (not an earlier one)."""
    js(driver, "document.getElementById('action-result').dataset.outcome = 'cleared-by-test';")
    driver.find_element(by, selector).click()
    return wait_for_outcome(driver, outcomes)


def scenario_live(driver, args, result):
    open_page(driver, args.url, args.identity)
    first = identity_view(driver, args.identity)
    first_at = time.monotonic()
    time.sleep(2.5)
    second = identity_view(driver, args.identity)
    result["countdown"] = [first["countdown"], second["countdown"]]
    result["countdownSeconds"] = [seconds_of(first["countdown"]), seconds_of(second["countdown"])]
    result["countdownWatchedSeconds"] = round(time.monotonic() - first_at, 2)
    result["before"] = second

    # Another process refreshes now; the test says when it finished.
    ready = os.path.join(args.signal_dir, "ready")
    with open(ready + ".tmp", "w") as handle:
        handle.write(str(time.time()))
    os.rename(ready + ".tmp", ready)
    refreshed = os.path.join(args.signal_dir, "refreshed")
    wait_for("the test's refresh by another process", lambda: os.path.exists(refreshed), timeout=60, every=0.01)
    with open(refreshed) as handle:
        finished_at = float(handle.read().strip())
    before = second["expiresAt"]
    try:
        wait_for("the page to show the new token", lambda: identity_view(driver, args.identity)["expiresAt"] != before, timeout=args.within, every=0.02)
        result["shownAfterSeconds"] = round(time.time() - finished_at, 3)
    except Failed:
        result["shownAfterSeconds"] = None
    result["after"] = identity_view(driver, args.identity)
    result["reloaded"] = not js(driver, "return window.__notReloaded === true;")
    time.sleep(0.3)
    result["events"] = events_shown(driver)
    result["connection"] = js(driver, "return document.getElementById('connection').dataset.state;")
    return result


def scenario_actions(driver, args, result):
    open_page(driver, args.url, args.identity)
    before = identity_view(driver, args.identity)["expiresAt"]
    result["refresh"] = click_and_wait(driver, "css selector", card(args.identity) + " button.refresh")
    try:
        wait_for("the new expiry on the card", lambda: identity_view(driver, args.identity)["expiresAt"] != before, timeout=5)
    except Failed:
        pass
    result["identity"] = identity_view(driver, args.identity)
    result["expiresAtBefore"] = before

    checkbox = driver.find_element("id", "faults-enabled")
    if not checkbox.is_selected():
        checkbox.click()
    percent = driver.find_element("id", "faults-percent")
    percent.clear()
    percent.send_keys(str(args.percent))
    result["faults"] = click_and_wait(driver, "id", "faults-apply")
    wait_for("the faults shown as applied", lambda: "On" in js(driver, "return document.getElementById('faults-current').textContent;"), timeout=5)
    result["faultsShown"] = js(driver, "return document.getElementById('faults-current').textContent;")
    time.sleep(0.5)
    result["events"] = events_shown(driver)
    return result


def scenario_admin_token(driver, args, result):
    open_page(driver, args.url, args.identity)
    before = identity_view(driver, args.identity)["expiresAt"]
    result["asked"] = click_and_wait(driver, "css selector", card(args.identity) + " button.refresh")
    field = wait_for("the admin token field", lambda: (lambda e: e if e.is_displayed() else None)(driver.find_element("id", "admin-token")))
    result["fieldType"] = field.get_attribute("type")

    field.send_keys(args.wrong)
    result["wrong"] = click_and_wait(driver, "id", "admin-token-submit")
    result["askedAgain"] = driver.find_element("id", "admin-token").is_displayed()
    result["expiresAtAfterWrong"] = identity_view(driver, args.identity)["expiresAt"]

    field = driver.find_element("id", "admin-token")
    field.send_keys(args.right)
    result["right"] = click_and_wait(driver, "id", "admin-token-submit")
    try:
        wait_for("the new expiry on the card", lambda: identity_view(driver, args.identity)["expiresAt"] != before, timeout=5)
    except Failed:
        pass
    result["expiresAtBefore"] = before
    result["expiresAtAfter"] = identity_view(driver, args.identity)["expiresAt"]
    result["formHidden"] = not driver.find_element("id", "admin-token").is_displayed()

    # Asked once: the next action (the faults form) goes straight through with the token kept in memory.
    checkbox = driver.find_element("id", "faults-enabled")
    if not checkbox.is_selected():
        checkbox.click()
    percent = driver.find_element("id", "faults-percent")
    percent.clear()
    percent.send_keys(str(args.percent))
    result["second"] = click_and_wait(driver, "id", "faults-apply")
    result["secondAsked"] = driver.find_element("id", "admin-token").is_displayed()

    # Nowhere but in the page's memory.
    result["stored"] = js(driver, """
        const all = [];
        for (const store of [localStorage, sessionStorage]) for (let i = 0; i < store.length; i++) all.push(store.getItem(store.key(i)));
        return {local: localStorage.length, session: sessionStorage.length, cookie: document.cookie, values: all,
                inDocument: document.documentElement.outerHTML.includes(arguments[0])};""", args.right)
    return result


def scenario_narrow(driver, args, result):
    browser.viewport(driver, args.width, 900)
    open_page(driver, args.url, args.identity)
    if args.route:
        wait_for(f"route {args.route}", lambda: js(driver, "return !!document.querySelector(arguments[0]);", f'[data-route="{args.route}"]'))
    time.sleep(args.settle)
    result = js(driver, """
        const root = document.documentElement;
        const wide = [];
        for (const node of document.querySelectorAll('body *')) {
          const box = node.getBoundingClientRect();
          if (box.width > 0 && box.right > window.innerWidth + 0.5) wide.push(node.tagName.toLowerCase() + '.' + node.className + ' right=' + Math.round(box.right));
        }
        return {scrollWidth: root.scrollWidth, innerWidth: window.innerWidth, clientWidth: root.clientWidth,
                bodyScrollWidth: document.body.scrollWidth, overflowing: wide.slice(0, 10),
                identities: document.querySelectorAll('[data-identity]').length, routes: document.querySelectorAll('[data-route]').length,
                fontSize: parseFloat(getComputedStyle(document.querySelector('[data-identity] .countdown')).fontSize)};""")
    if args.out:
        full_page_png(driver, args.width, args.out)
        result["screenshot"] = args.out
    return result


def full_page_png(driver, width, path):
    height = js(driver, "return Math.ceil(document.documentElement.scrollHeight);")
    browser.viewport(driver, width, max(600, min(int(height), 4000)))
    time.sleep(0.4)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not driver.save_screenshot(path):
        raise Failed(f"could not write {path}")


def scenario_screenshot(driver, args, result):
    browser.viewport(driver, args.width, 900)
    open_page(driver, args.url, args.identity)
    time.sleep(args.settle)
    full_page_png(driver, args.width, args.out)
    return {"screenshot": args.out, "events": events_shown(driver)}


def scenario_cross_origin(driver, args, result):
    driver.get(args.url)
    wait_for("the other origin's page to finish its attempts", lambda: js(driver, "return document.body && document.body.dataset.done === '1';"), timeout=30, every=0.1)
    result = js(driver, "return JSON.parse(document.getElementById('results').textContent);")
    # Last, a top-level form POST: the whole tab navigates to the admin listener.
    js(driver, "window.topLevelPost();")
    try:
        wait_for("the top-level POST's answer", lambda: driver.current_url.startswith(args.admin), timeout=10, every=0.1)
        time.sleep(0.3)
        result["topLevel"] = {"url": driver.current_url, "body": js(driver, "return document.body ? document.body.innerText : '';")[:500]}
    except Failed as error:
        result["topLevel"] = {"url": driver.current_url, "error": str(error)}
    return result


SCENARIOS = {
    "live": scenario_live, "actions": scenario_actions, "admin-token": scenario_admin_token,
    "narrow": scenario_narrow, "screenshot": scenario_screenshot, "cross-origin": scenario_cross_origin,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--url", required=True, help="the admin listener's page, or the other origin's page")
    parser.add_argument("--admin", help="cross-origin: the admin listener's address (http://127.0.0.1:PORT)")
    parser.add_argument("--identity", default="default")
    parser.add_argument("--signal-dir", help="live: where ready and refreshed are written")
    parser.add_argument("--within", type=float, default=10.0, help="live: longest wait for the page to change")
    parser.add_argument("--percent", type=float, default=25)
    parser.add_argument("--wrong", default="not-the-admin-token")
    parser.add_argument("--right")
    parser.add_argument("--width", type=int, default=1100)
    parser.add_argument("--route", help="narrow: a route the page must show first")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds to let the page settle before measuring")
    parser.add_argument("--out", help="a PNG to write")
    args = parser.parse_args()

    started = time.monotonic()
    driver = None
    result = {"scenario": args.scenario}
    status = 0
    try:
        driver = browser.chrome(width=args.width if args.scenario in ("narrow", "screenshot") else 1100)
        # A scenario fills `result` as it goes, so that a failure still shows what came before.
        returned = SCENARIOS[args.scenario](driver, args, result)
        if returned is not None and returned is not result:
            result.update(returned)
    except Exception as error:
        result["error"] = f"{type(error).__name__}: {error}"
        status = 1
    finally:
        if driver is not None:
            try:
                result["console"] = browser.console(driver)
                result["userAgent"] = driver.execute_script("return navigator.userAgent;")
            except Exception:
                pass
            try:
                driver.quit()
            except Exception:
                pass
    result["seconds"] = round(time.monotonic() - started, 2)
    browser.finish(result, status)


if __name__ == "__main__":
    main()
