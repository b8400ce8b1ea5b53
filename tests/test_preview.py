"""`python -m ssm_lra.preview`: the data a run would train on, as a picture or as text."""

from __future__ import annotations

from ssm_lra.preview import listops_text, main
from tests.test_plots import assert_valid_png
from tests.trained_run import shared_smoke_run


def test_pathfinder_grid_from_the_training_data(tmp_path_factory, tmp_path, capsys):
    _, cache_dir = shared_smoke_run(tmp_path_factory)  # its tiny Pathfinder set is in this cache
    out = tmp_path / "grid.png"
    args = ["task=pathfinder", "data.generate=true", "data.tiny=true", f"data.cache_dir={cache_dir}", "num=6", f"out={out}"]
    assert main(args) == 0, capsys.readouterr().err
    assert "train 160, validation 20, test 20" in capsys.readouterr().out
    assert_valid_png(out)


def test_listops_tokens_read_back_as_the_release_text():
    from ssm_lra.data.listops import encode

    source = "( ( ( [MAX 2 ) 9 ) ] )"
    assert listops_text(encode(source)) == "[MAX 2 9 ]"


def test_missing_data_is_the_training_error(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SSM_LRA_DATA", raising=False)
    assert main(["task=pathfinder", f"data.cache_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No pathfinder data given") and "data.generate=true" in err
    assert main(["task=nope"]) == 2
    assert "Could not find 'task/nope'" in capsys.readouterr().err
