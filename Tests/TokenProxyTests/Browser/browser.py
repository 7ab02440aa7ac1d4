"""Headless Chromium for the status page tests: Debian's chromium and chromium-driver, driven by
Selenium, with nothing downloaded (both paths are given, so Selenium Manager is never asked)."""

import json
import os
import sys

CHROMIUM = os.environ.get("TOKENPROXY_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("TOKENPROXY_CHROMEDRIVER", "/usr/bin/chromedriver")


def chrome(width=1100, height=900):
    """A fresh headless Chromium (its own throwaway profile) with the console log kept."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        f"--window-size={width},{height}", "--no-proxy-server", "--no-first-run",
        "--disable-extensions", "--disable-background-networking", "--disable-sync",
        "--disable-component-update", "--disable-default-apps", "--mute-audio",
        "--password-store=basic", "--hide-scrollbars",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=os.devnull)
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(20)
    driver.set_script_timeout(20)
    viewport(driver, width, height)
    return driver


def viewport(driver, width, height):
    """Makes the page's viewport exactly width x height CSS pixels (the window's frame aside)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False,
    })


def console(driver):
    """The browser console since the last call: every message, and those that are CSP refusals."""
    try:
        entries = driver.get_log("browser")
    except Exception as error:  # a driver without the log endpoint
        return {"messages": [f"(no console log: {error})"], "csp": []}
    messages = [f"{entry.get('level')}: {entry.get('message')}" for entry in entries]
    csp = [m for m in messages if "Content Security Policy" in m or "Content-Security-Policy" in m]
    return {"messages": messages, "csp": csp}


def finish(result, status=0):
    """Prints the result as one JSON line (the last line of stdout) and exits."""
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    sys.stdout.flush()
    sys.exit(status)
