"""Validate before allocating (issue 28 item 4): a mode file's metadata (model, kwargs, plugin) is checked
against its tensors' shapes and a parameter budget before any model is built. Each bad value is one line,
and no load allocates more than the file's own tensors justify: the fuzz test runs in a fresh process and
measures its peak resident memory."""
import json
import subprocess
import sys
import textwrap

import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from llpf_core import UserError, load_mode
from llpf_core.modecheck import MAX_LIST, max_parameters
from tests.conftest import REPO, run_cli


@pytest.fixture(scope="module")
def base(digits_modes):
    """A real digits MLP mode: its tensors and metadata."""
    path = digits_modes[0].path
    with safe_open(str(path), "pt") as f:
        return load_file(path), f.metadata()


def write_mode(path, base, **metadata) -> str:
    tensors, meta = base
    save_file(tensors, str(path), {**meta, **metadata})
    return str(path)


ISSUE_CASES = [  # (metadata, what the one line says): the probe's files, and their neighbours
    ({"llpf.model_kwargs": json.dumps({"hidden": [20000, 20000]})}, "more than the limit"),
    ({"llpf.model_kwargs": json.dumps({"hidden": [100000, 100000]})}, "more than the limit"),
    ({"llpf.model_kwargs": json.dumps({"hidden": [8] * 20000})}, f"lists 20000 values (at most {MAX_LIST})"),
    ({"llpf.model_kwargs": json.dumps({"hidden": [64, 64, 64]})}, "tensors do not match model 'mlp'"),
    ({"llpf.model_kwargs": json.dumps({"hidden": [-5]})}, "cannot be built"),
    ({"llpf.model_kwargs": json.dumps({"num_classes": [10, 10]})}, "bad arguments for model 'mlp'"),
    ({"llpf.model_kwargs": json.dumps({"hidden": 64})}, "bad arguments for model 'mlp'"),
    ({"llpf.model_kwargs": json.dumps({"image_size": 2 ** 40})}, "out of range"),
    ({"llpf.model_kwargs": json.dumps({"hidden": {"a": 1}})}, "is a dict"),
    ({"llpf.model_kwargs": "[1, 2]"}, "llpf.model_kwargs is a JSON list, not an object"),
    ({"llpf.model_kwargs": "{not json"}, "llpf.model_kwargs is not valid JSON"),
    ({"llpf.model": "nope", "llpf.plugin": "{bad json"}, "llpf.plugin is not valid JSON"),
    ({"llpf.model": "nope", "llpf.plugin": "[]"}, "llpf.plugin is a JSON list"),
    ({"llpf.model": "nope", "llpf.plugin": json.dumps({"path": 5, "sha256": "x"})}, "llpf.plugin lacks its path"),
    ({"llpf.model": "nope", "llpf.plugin": json.dumps({"path": "p.py", "sha256": "ab"})}, "--plugin p.py"),
    ({"llpf.model": "nope"}, "unknown model 'nope'"),
    ({"llpf.seed": "1e9"}, "llpf.seed is '1e9', not a whole number"),
    ({"llpf.metrics": "3"}, "llpf.metrics is a JSON int"),
]


@pytest.mark.parametrize("metadata, says", ISSUE_CASES)
def test_each_bad_metadata_value_is_one_line(base, tmp_path, metadata, says):
    path = write_mode(tmp_path / "bad.safetensors", base, **metadata)
    with pytest.raises(UserError) as e:
        load_mode(path)
    message = str(e.value)
    assert "\n" not in message and path in message and says in message, message


def test_the_budget_is_the_default_or_the_operators(monkeypatch):
    assert max_parameters() == 100_000_000
    monkeypatch.setenv("LLPF_MAX_PARAMETERS", "5000")
    assert max_parameters() == 5000
    monkeypatch.setenv("LLPF_MAX_PARAMETERS", "lots")
    with pytest.raises(UserError, match="LLPF_MAX_PARAMETERS='lots' is not a positive whole number"):
        max_parameters()


def test_a_model_over_an_operators_budget_is_refused_even_when_the_file_fits(base, tmp_path, monkeypatch):
    path = write_mode(tmp_path / "mode.safetensors", base)
    assert load_mode(path).meta.model == "mlp"
    monkeypatch.setenv("LLPF_MAX_PARAMETERS", "1000")
    with pytest.raises(UserError, match=r"has 8,970 parameters and buffers, more than the limit of 1,000"):
        load_mode(path)


def test_inspect_and_import_refuse_a_huge_model_with_one_line(base, tmp_path):
    huge = {"llpf.model_kwargs": json.dumps({"hidden": [20000, 20000]})}
    mode = write_mode(tmp_path / "huge.safetensors", base, **huge)
    proc = run_cli("inspect", mode)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "more than the limit" in proc.stderr
    state = tmp_path / "state.safetensors"
    save_file(base[0], str(state))
    proc = run_cli("import", state, "--model", "mlp", "--dataset", "digits", "--out", tmp_path / "out.safetensors",
                   "--model-kwargs", json.dumps({"hidden": [100000, 100000]}))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "more than the limit" in proc.stderr
    assert not (tmp_path / "out.safetensors").exists()


# --- the fuzz test, in a fresh process so that its peak memory is its own -----------------------------

FUZZ = textwrap.dedent('''
    import json, resource, sys, tempfile
    from pathlib import Path

    from hypothesis import example, given, settings, strategies as st
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from llpf_core import UserError, load_mode

    base = sys.argv[1]
    tensors = load_file(base)
    with safe_open(base, "pt") as f:
        meta = f.metadata()
    kwargs0 = json.loads(meta["llpf.model_kwargs"])
    load_mode(base)  # imports and one real load before the baseline
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcomes = {"loaded": 0, "refused": 0}

    WIDTH = st.integers(-10, 10 ** 6) | st.sampled_from([0, 64, 20000, 100000, 2 ** 31, -2 ** 40])
    VALUE = (WIDTH | st.floats() | st.text(max_size=6) | st.booleans() | st.none()
             | st.lists(WIDTH, max_size=4) | st.lists(st.sampled_from([8, 64]), min_size=1000, max_size=1100)
             | st.lists(st.text(max_size=3) | st.floats(), max_size=3)
             | st.dictionaries(st.text(max_size=3), WIDTH, max_size=2))
    KWARGS = st.dictionaries(st.sampled_from(["hidden", "num_classes", "in_channels", "image_size", "width", "x"]),
                             VALUE, max_size=3)
    PLUGIN = st.none() | st.text(max_size=12) | st.builds(
        json.dumps, st.dictionaries(st.sampled_from(["path", "sha256"]), st.text(max_size=8) | WIDTH, max_size=2))

    @settings(max_examples=int(sys.argv[2]), deadline=None, database=None)
    @given(model=st.sampled_from(["mlp", "mlp", "cnn", "lenet5", "vgg11", "nope", ""]), kwargs=KWARGS,
           merge=st.booleans(), raw=st.none() | st.text(max_size=10), plugin=PLUGIN)
    @example(model="mlp", kwargs={"hidden": [20000, 20000]}, merge=True, raw=None, plugin=None)
    @example(model="mlp", kwargs={"hidden": [100000, 100000]}, merge=True, raw=None, plugin=None)
    @example(model="mlp", kwargs={"hidden": [8] * 20000}, merge=True, raw=None, plugin=None)
    @example(model="mlp", kwargs={"hidden": [-5, 64]}, merge=True, raw=None, plugin=None)
    @example(model="vgg11", kwargs={"num_classes": 100000}, merge=True, raw=None, plugin=None)
    @example(model="mlp", kwargs={}, merge=True, raw=None, plugin=None)  # the file as it is: a clean load
    def fuzz(model, kwargs, merge, raw, plugin):
        metadata = {**meta, "llpf.model": model,
                    "llpf.model_kwargs": raw if raw is not None else json.dumps({**kwargs0, **kwargs} if merge else kwargs)}
        if plugin is not None:
            metadata["llpf.plugin"] = plugin
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "mode.safetensors"
            save_file(tensors, str(path), metadata)
            try:
                load_mode(path)
                outcomes["loaded"] += 1
            except UserError as e:
                assert str(e) and "\\n" not in str(e), str(e)
                outcomes["refused"] += 1

    fuzz()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({**outcomes, "peak_growth_mb": (rss1 - rss0) / 1024}))
''')


def test_fuzzed_metadata_is_one_line_or_a_clean_load_and_never_allocates_beyond_the_file(digits_modes):
    proc = subprocess.run([sys.executable, "-c", FUZZ, str(digits_modes[0].path), "150"], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["loaded"] >= 1 and result["refused"] >= 6, result
    # The file's tensors are 36 KB; before the check, {"hidden": [20000, 20000]} alone took 1.6 GB more.
    assert result["peak_growth_mb"] < 100, result


def test_a_dashboard_upload_of_a_huge_model_is_one_line_and_leaves_the_folder_empty(base, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "app"))  # as `streamlit run app/Home.py` does for the app's modules
    from uploads import save_upload
    huge = tmp_path / "huge.safetensors"
    write_mode(huge, base, **{"llpf.model_kwargs": json.dumps({"hidden": [100000, 100000]})})
    modes = tmp_path / "modes"
    with pytest.raises(UserError) as e:
        save_upload(huge.read_bytes(), "huge.safetensors", modes)
    message = str(e.value)
    assert "\n" not in message and "more than the limit" in message and "huge.safetensors" in message, message
    assert list(modes.iterdir()) == []
