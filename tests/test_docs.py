"""The docs site as a reader meets it: it builds with `mkdocs build --strict`, its pages open in
headless Chromium with every picture, and every command it shows is one the code accepts."""

import functools
import http.server
import os
import re
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import ROOT

PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                           capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert built.returncode == 0, built.stderr[-3000:]
    return out


def test_the_site_builds_strict_and_its_pages_open_in_chromium_with_every_picture(site, ui_page, page_errors):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for path, heading, least in (("/", "filterviz", 1), ("/reference/", "API reference", 0),
                                     ("/atlas/", "The atlas", 2), ("/quickstart/", "quick start", 1)):
            ui_page.goto(base + path, wait_until="load")
            assert heading in ui_page.locator("article h1").first.inner_text(), path
            pictures = ui_page.eval_on_selector_all(
                "article img", "imgs => imgs.map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])")
            assert len(pictures) >= least and all(ok for _, ok in pictures), (path, pictures)
        # the reference is generated from the code: render's signature and docstring are there
        ui_page.goto(base + "/reference/", wait_until="load")
        heading = ui_page.locator("[id='filterviz.api.render']")
        assert heading.count() == 1 and "tracking" in heading.locator("xpath=..").inner_text()
    finally:
        server.shutdown()
    assert page_errors == []


# --------------------------------------------------------------------------------- the commands


def shown_commands():
    """(page, command) for every command line the docs show: in bash blocks (continued lines
    joined, comments dropped) and in inline code that starts with `python`."""
    for page in PAGES:
        text = page.read_text()
        for block in re.findall(r"```bash\n(.*?)```", text, re.S):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                if words:
                    yield page.name, words
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        for code in re.findall(r"`(python -m filterviz[^`]*|python experiments/[^`]*)`", prose):
            yield page.name, shlex.split(code.replace("\n", " "))


# commands that need what their page makes first; each is run by the test named
RUN_ELSEWHERE = {("extending.md", "python -m filterviz param=colour param.std=1"): "test_extending.py"}


def argparse_options(script: Path) -> set:
    return set(re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", script.read_text()))


def test_every_command_in_the_docs_is_one_the_code_accepts():
    """`python -m filterviz[.atlas|.exemplars]` lines are composed against the config schema (a
    wrong key or value fails as the command would); compare, reproduce and the experiments'
    scripts take only the options their parsers define; `pip install` only extras that exist."""
    from filterviz.api import compose
    from filterviz.atlas.__main__ import atlas_argv
    from filterviz.errors import ConfigError
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.plugins import Plugins
    from hydra_plugins.filterviz_atlas.atlas_sweeper import AtlasSweeper

    Plugins.instance().register(AtlasSweeper)
    parser = OverridesParser.create()
    extras = set(re.findall(r"^([\w-]+) = \[", (ROOT / "pyproject.toml").read_text().split(
        "[project.optional-dependencies]")[1].split("\n[")[0], re.M))
    checked, wrong = 0, []
    for page, words in shown_commands():
        if (page, shlex.join(words)) in RUN_ELSEWHERE:
            checked += 1
            continue
        while words and re.match(r"^[A-Z_]+=", words[0]):  # VAR=value before the command
            words = words[1:]
        if words[:2] == ["python", "-m"] and words[2].startswith("filterviz"):
            module, args = words[2], [w for w in words[3:] if w not in ("-m", "--multirun", "...", "…")]
            if module in ("filterviz.compare", "filterviz.reproduce"):
                script = ROOT / "filterviz" / f"{module.split('.')[1]}.py"
                unknown = {w.split("=")[0] for w in args if w.startswith("--")} - argparse_options(script)
                wrong += [(page, shlex.join(words), f"no option {o}") for o in unknown]
                checked += 1
                continue
            # Hydra's own flags, and the value of those that take one (--cfg job)
            takes_value = {"--cfg", "-c", "--package", "-p", "--config-dir", "-cd", "--config-name", "-cn"}
            args = [w for i, w in enumerate(args) if not w.startswith("-") and (i == 0 or args[i - 1] not in takes_value)]
            overrides = []
            for override in parser.parse_overrides(args):  # a sweep is checked at its first value
                value = next(iter(override.sweep_string_iterator())) if override.is_sweep_override() else None
                overrides.append(override.input_line if value is None else f"{override.get_key_element()}={value}")
            if module == "filterviz.atlas":
                overrides = [a for a in atlas_argv(overrides) if a != "--multirun"]
            try:
                compose(overrides, "exemplars" if module == "filterviz.exemplars" else "config")
            except ConfigError as e:
                wrong.append((page, shlex.join(words), str(e)))
            checked += 1
        elif words[0] == "python" and words[1].startswith("experiments/"):
            script = ROOT / words[1]
            unknown = {w.split("=")[0] for w in words[2:] if w.startswith("--")} - argparse_options(script) \
                if script.is_file() else {"(no such script)"}
            wrong += [(page, shlex.join(words), f"no option {o}") for o in unknown]
            checked += 1
        elif words[:4] == ["python", "-m", "pip", "install"]:
            for spec in words[4:]:
                asked = re.match(r"^(?:-e )?\.\[([\w,-]+)\]$", spec)
                if asked:
                    wrong += [(page, shlex.join(words), f"no extra {e}") for e in asked[1].split(",") if e not in extras]
            checked += 1
    assert checked > 60 and wrong == []
