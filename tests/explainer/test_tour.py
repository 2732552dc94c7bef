"""examples/tour.py runs from start to end (the test suite's quick run): every step prints, every picture is drawn,
and the numbers that carry the tour's claims hold."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

TOUR = pathlib.Path(__file__).resolve().parents[2] / "examples" / "tour.py"


def test_the_tour_runs_and_its_claims_hold(tmp_path):
    pytest.importorskip("matplotlib")
    r = subprocess.run([sys.executable, str(TOUR), "--quick", "--out", str(tmp_path)], capture_output=True,
                       text=True, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    for n in range(1, 16):
        assert f"## {n}. " in out
    diff = float(re.search(r"by hand vs fused kernel: (\S+)", out).group(1))
    assert diff < 1e-5
    assert "[[1.    0.    0.    0.   ]" in out  # the causal mask's first row
    assert "held-out exact match: 1.0" in out or float(re.search(r"held-out exact match: (\S+)", out).group(1)) > 0.9
    assert (tmp_path / "tour" / "positions.png").exists() and (tmp_path / "tour" / "dates_cross_attention.png").exists()
    if "strongest it -> animal" in out:  # (MiniLM installed)
        assert "its largest weight goes to 'animal'" in out
        assert (tmp_path / "tour" / "animal_heads.png").exists()
    if "T=0.5:" in out:  # (SmolLM2 installed): lower temperature, sharper distribution
        p = [float(re.search(rf"T={t}: '[^']*' (\S+)", out).group(1).rstrip(",")) for t in ("0.5", "1.0", "2.0")]
        assert p[0] > p[1] > p[2]
