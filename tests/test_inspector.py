"""`rlkd inspect`: the terminal view, the HTML page, and the page in a real headless browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rlkd.inspector import gate_position, load_pairs, render_html, render_text, select

RLKD = str(Path(sys.executable).with_name("rlkd"))
TEACHER = "[Meta-reasoning 1]: need x\n[Sub-problem 1]: x?\n[Answer 1]: 2\n[Meta-reasoning 2]: then y\n[Sub-problem 2]: y?\n[Answer 2]: 5"
STUDENT = "[Meta-reasoning 1]: need x\n[Sub-problem 1]: what is x\n[Answer 1]: 2\n[Meta-reasoning 2]: guess z\n[Sub-problem 2]: z?\n[Answer 2]: 9"


@pytest.fixture()
def scored(tmp_path) -> Path:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"id": "p1", "teacher": TEACHER, "student": STUDENT}) + "\n"
                     + json.dumps({"id": "p2", "teacher": TEACHER, "student": TEACHER}) + "\n")
    out = tmp_path / "scored.jsonl"
    subprocess.run([RLKD, "score", "--pairs", str(pairs), "--output", str(out), "--judge", "text"],
                   check=True, capture_output=True, timeout=120)
    return out


def test_terminal_view_shows_verdicts_gate_and_reward(scored):
    (pair,) = select(load_pairs(str(scored)), ids=["p1"])
    text = render_text(pair, width=100)
    assert "== p1  reward 0.5 (paper)" in text
    assert "gate closed at step 2" in text
    lines = text.splitlines()
    assert any(line.startswith("+ meta") and "need x" in line for line in lines)
    assert any(line.startswith("x sub") and "what is x" in line for line in lines)
    assert any(line.startswith("+ ans") for line in lines)
    assert any(line.startswith("x meta") and "guess z" in line for line in lines)
    assert any(line.startswith(". sub") and "z?" in line for line in lines)  # gated off, not judged


def test_cli_selection_by_reward_and_id(scored):
    p = subprocess.run([RLKD, "inspect", "--pairs", str(scored), "--min-reward", "1", "--width", "90"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "== p2  reward 2" in p.stdout and "== p1" not in p.stdout
    p = subprocess.run([RLKD, "inspect", "--pairs", str(scored), "--id", "nope"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and "no pair matches" in p.stderr


def test_unscored_records_are_scored_on_the_fly(tmp_path):
    raw = tmp_path / "raw.jsonl"
    raw.write_text(json.dumps({"id": 7, "teacher": TEACHER, "student": STUDENT}) + "\n")
    (pair,) = load_pairs(str(raw), judge_name="text")
    assert pair.result.reward == 0.5 and gate_position(pair.result) == 2


def test_html_page_is_self_contained_with_verdicts(scored):
    page = render_html(load_pairs(str(scored)))
    assert "reward 0.5 (paper)" in page and "gate closed at step 2" in page
    assert "<svg" in page and "matched prefix length" in page
    # p1: meta 1 and answer 1 match, sub-problem 1 and meta 2 do not; p2: all six fields match
    assert page.count("class='v ok'") == 2 + 6
    assert page.count("class='v no'") == 2
    assert not re.search(r"(src|href)=['\"]https?:", page)  # nothing fetched at view time


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_html_in_headless_chromium_filters_by_reward(scored, tmp_path):
    html_path = tmp_path / "view.html"
    subprocess.run([RLKD, "inspect", "--pairs", str(scored), "--html", str(html_path)], check=True, timeout=120)
    dom = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", html_path.as_uri() + "#lo=1"],
        capture_output=True, text=True, timeout=120,
    ).stdout
    assert "reward 0.5 (paper)" in dom
    # the script ran in the browser: p1 (reward 0.5) is hidden by the filter, p2 (reward 2) is shown
    assert re.search(r"id=\"pair-p1\"[^>]*style=\"display: none;\"|style=\"display: none;\"[^>]*id=\"pair-p1\"", dom)
    assert '<span id="shown">1</span>' in dom
