"""A run followed from its folder alone (started by the CLI, or by another dashboard) shows how far it is,
whatever its method: a walker by its metrics rows, a method whose rows come at its end by its checkpoints."""
import sys
import threading

from llpf_core import load_run, resolve_config, run_search
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "app"))  # as `streamlit run app/Home.py` does for the app's modules
from jobs import folder_progress  # noqa: E402


def test_a_bezier_run_stopped_mid_training_shows_its_sgd_steps(digits_modes, tmp_path):
    stop = threading.Event()
    cfg = resolve_config("mlp", "digits", "bezier", overrides=["curve.steps=400", "device=cpu"]).config
    run_search(*digits_modes, cfg, tmp_path / "bezier", stop_event=stop,
               on_tick=lambda e: stop.set() if e.tick >= 120 else None)
    run = load_run(tmp_path / "bezier")
    assert run.status == "stopped" and len(run.metrics) == 0  # no row before its curve is trained
    progress = folder_progress(run)
    assert progress.total == 400 and 120 <= progress.tick < 400
    assert run.checkpoint_progress == (progress.tick, 400)


def test_a_damaged_checkpoint_json_shows_no_progress_instead_of_failing(digits_modes, tmp_path):
    stop = threading.Event()
    cfg = resolve_config("mlp", "digits", "bezier", overrides=["curve.steps=400", "device=cpu"]).config
    run_search(*digits_modes, cfg, tmp_path / "bezier", stop_event=stop,
               on_tick=lambda e: stop.set() if e.tick >= 60 else None)
    (tmp_path / "bezier" / "checkpoint.json").write_text('{"tick": "sixty"')
    run = load_run(tmp_path / "bezier")
    assert run.checkpoint_progress is None
    assert folder_progress(run).tick == 0
