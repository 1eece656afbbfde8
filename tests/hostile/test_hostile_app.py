"""Bad input through the dashboard (Streamlit AppTest): a folder, scores or data a user picks.

Every row asserts: no exception (no traceback on the page), an st.error of one line naming the
problem, no job row, nothing written under the lab.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.hostile.lab import check_message, lab  # noqa: F401

MAIN = str(Path(__file__).resolve().parents[2] / "app" / "main.py")


def _model_page(folder: str):
    def act(at, lab):
        at.switch_page("pages/model.py").run()
        at.radio[0].set_value("local folder").run()
        at.text_input[0].input(folder.replace("{L}", str(lab.root))).run()
        next(b for b in at.button if b.label == "Use this folder").click().run()

    return act


def _importance_page(scores: str | None = None, calib: str | None = None):
    def act(at, lab):
        if scores is not None:
            at.session_state["scores_dir"] = scores.replace("{L}", str(lab.root))
        at.switch_page("pages/importance.py").run()
        if calib is not None:
            next(t for t in at.text_input if t.label == "calibration data").input(calib.replace("{L}", str(lab.root)))
            at.number_input[1].set_value(16)  # sequence length within the tiny model's 64 positions
            at.button(key="FormSubmitter:importance-Run importance").click().run()

    return act


def _planner(val_tokens: str):
    def act(at, lab):
        at.session_state["scores_dir"] = str(lab / "scores")
        at.switch_page("pages/planner.py").run()
        next(s for s in at.slider if s.label.startswith("Mamba heads")).set_value(6).run()
        next(t for t in at.text_input if t.label == "validation tokens file (.npy)").input(
            val_tokens.replace("{L}", str(lab.root))
        )
        next(n for n in at.number_input if n.label == "sequence length").set_value(16)
        at.button(key="FormSubmitter:prune-Prune and evaluate").click().run()

    return act


ROWS = [
    ("model-not-json", _model_page("{L}/bad_json"), r"config\.json is not valid JSON"),
    ("model-unknown-type", _model_page("{L}/unknown_type"), r"transformers cannot read"),
    ("model-llama", _model_page("{L}/llama"), r"cannot prune llama"),
    ("model-missing", _model_page("{L}/missing"), r"neither 'demo' nor an existing directory"),
    ("scores-other-widths", _importance_page(scores="{L}/scores_wide"), r"hidden_size 48, but this model has 32"),
    ("scores-damaged", _importance_page(scores="{L}/scores_broken"), r"cannot be read"),
    ("calib-above-vocab", _importance_page(calib="{L}/big_ids.npy"), r"token id 99\d.*vocabulary has 128"),
    ("calib-empty-text", _importance_page(calib="{L}/empty.txt"), r"empty\.txt is empty"),
    ("planner-val-floats", _planner("{L}/floats.npy"), r"floats\.npy holds float64 values"),
]


@pytest.mark.parametrize("name, act, pattern", [pytest.param(*row, id=row[0]) for row in ROWS])
def test_bad_input_in_the_dashboard_is_one_st_error(lab, monkeypatch, name, act, pattern):  # noqa: F811
    from streamlit.testing.v1 import AppTest

    from hybridlab import jobs

    monkeypatch.setenv("HYBRIDLAB_WORKSPACE", str(lab.ws))
    monkeypatch.setattr(jobs, "ensure_worker", lambda *a, **k: pytest.fail("a refused input started a worker"))
    at = AppTest.from_file(MAIN, default_timeout=120)
    at.session_state["model_ref"] = str(lab / "model")
    at.run()
    before, rows = lab.snapshot(), lab.rows()
    act(at, lab)
    assert not at.exception, at.exception
    errors = [e.value for e in at.error]
    assert errors, "no st.error shown"
    matching = [e for e in errors if re.search(pattern, e)]
    assert matching, errors
    check_message(matching[0], pattern)
    assert lab.snapshot() == before, "a refused input wrote or changed files"
    assert lab.rows() == rows, "a refused input changed the store"
