"""``llmdbg run JOB``: a TOML or YAML job file gives the very records ``llmdbg.run`` gives in
Python; relative paths follow the job file; flags override it; bad files, keys and values are
answered with one line naming the key, and exit code 2."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import transformers as tf

from llmdbg import cli
from llmdbg.runs import open_run, run
from saved_models import LABELS, save_tiny
from tiny_models import one_thread  # noqa: F401  (autouse: tiny models run faster on one thread)

TASKS = ["stats", "embedding", "attention", "loss"]
TEXTS = [
    "the film was wonderful",
    "",
    "terrible acting and a dull plot",
    "it was fine i guess",
    "a masterpiece of quiet cinema",
    "i want my money back",
    "average at best",
    "loved every minute of it",
]


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project folder: jobs/model (a saved tiny classifier), jobs/data/reviews.jsonl."""
    root = tmp_path_factory.mktemp("project")
    jobs = root / "jobs"
    save_tiny("classifier", jobs / "model")
    (jobs / "data").mkdir()
    with open(jobs / "data" / "reviews.jsonl", "w", encoding="utf-8") as f:
        for i, text in enumerate(TEXTS):
            f.write(json.dumps({"review": text, "label": LABELS[i % 3]}) + "\n")
    return root


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def _toml(project, name="job.toml", out="runs/a", extra=""):
    return _write(
        project / "jobs" / name,
        f'model = "model"\ndata = "data/reviews.jsonl"\nout = "{out}"\ntasks = {json.dumps(TASKS)}\n'
        f'text_column = "review"\nbatch_size = 3\nshard_size = 3\n{extra}',
    )


def _assert_same_records(a, b):
    assert list(a.columns) == list(b.columns)
    assert len(a) == len(b)
    for column in a.columns:
        for x, y in zip(a[column], b[column]):
            if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
                np.testing.assert_array_equal(x, y, err_msg=column)
            else:
                assert (x == y) or (x != x and y != y) or (x is None and y is None), (column, x, y)


def test_toml_job_gives_the_records_of_llmdbg_run(project, tmp_path, monkeypatch):
    job = _toml(project)
    monkeypatch.chdir(tmp_path)  # relative paths in the file follow the file, not the cwd
    code, stdout, stderr = _run(["run", str(job), "--no-progress"])
    assert code == 0, stderr
    out = project / "jobs" / "runs" / "a"
    assert (out / "_manifest.json").exists() and not (tmp_path / "runs").exists()
    res = open_run(out)
    df = res.records()
    assert f"{len(TEXTS)} rows (7 ok, 1 skipped, 0 errors)" in stdout and str(out) in stdout

    # the same job in Python, on a model and tokenizer loaded here
    path = project / "jobs" / "model"
    model = tf.AutoModelForSequenceClassification.from_pretrained(path).eval()
    tok = tf.AutoTokenizer.from_pretrained(path)
    data = str(project / "jobs" / "data" / "reviews.jsonl")
    ref = run(
        model, tok, data, tasks=TASKS, out=tmp_path / "py", text_column="review", batch_size=3, shard_size=3,
        progress=False,
    )  # fmt: skip
    _assert_same_records(df, ref.records())
    assert res.manifest["job"] == ref.manifest["job"]
    assert df["status"].tolist().count("skipped") == 1 and df["correct"].notna().sum() == 7


def test_yaml_job_gives_the_same_records_as_toml(project):
    toml_job = _toml(project, "y_ref.toml", out="runs/y_ref")
    yaml_job = _write(
        project / "jobs" / "job.yml",
        "model: model\ndata: data/reviews.jsonl\nout: runs/y\n"
        f"tasks: [{', '.join(TASKS)}]\ntext_column: review\nbatch_size: 3\nshard_size: 3\n",
    )
    for job in (toml_job, yaml_job):
        code, _, stderr = _run(["run", str(job), "--no-progress"])
        assert code == 0, stderr
    a = open_run(project / "jobs" / "runs" / "y_ref")
    b = open_run(project / "jobs" / "runs" / "y")
    _assert_same_records(a.records(), b.records())
    assert a.manifest["job"] == b.manifest["job"]


def test_flags_override_the_file_and_a_rerun_resumes(project, tmp_path, monkeypatch):
    job = _toml(project, "flags.toml", out="runs/never", extra='top_k = 3\nengine = "ray"\n')
    out = tmp_path / "elsewhere"
    monkeypatch.chdir(tmp_path)  # --out is relative to the current directory, as flags are
    code, stdout, stderr = _run(["run", str(job), "--out", "elsewhere", "--engine", "local", "--no-progress"])
    assert code == 0, stderr
    assert not (project / "jobs" / "runs" / "never").exists()
    assert open_run(out).manifest["job"]["options"]["top_k"] == 3
    assert "3 of 3 shards computed now" in stdout
    local = ["--engine", "local", "--no-progress"]
    code, stdout, _ = _run(["run", str(job), "--out", str(out), *local])
    assert code == 0 and "0 of 3 shards computed now" in stdout
    code, stdout, _ = _run(["run", str(job), "--out", str(out), *local, "--no-resume"])
    assert code == 0 and "3 of 3 shards computed now" in stdout


def test_another_jobs_output_needs_force(project, tmp_path):
    out = tmp_path / "shared"
    first = _toml(project, "first.toml", out=str(out))
    second = _write(
        project / "jobs" / "second.yaml",
        f"model: model\ndata: data/reviews.jsonl\nout: {out}\ntasks: [stats]\ntext_column: review\n",
    )
    assert _run(["run", str(first), "--no-progress"])[0] == 0
    code, stdout, stderr = _run(["run", str(second), "--no-progress"])
    assert code == 2 and stdout == ""
    assert stderr.startswith("llmdbg run: error:") and "--force" in stderr and stderr.count("\n") == 1
    assert open_run(out).tasks == TASKS  # untouched
    code, _, stderr = _run(["run", str(second), "--no-progress", "--force"])
    assert code == 0, stderr
    assert open_run(out).tasks == ["stats"]


@pytest.mark.parametrize(
    ("name", "text", "needles"),
    [
        ("typo.toml", 'model = "m"\ndata = "d.txt"\nout = "o"\nbatchsize = 4\n', ["'batchsize'", "'batch_size'"]),
        ("type.toml", 'model = "m"\ndata = "d.txt"\nout = "o"\nbatch_size = "4"\n', ["batch_size must be", "'4'"]),
        ("tasks.yaml", "model: m\ndata: d.txt\nout: o\ntasks: stats\n", ["tasks must be a non-empty list"]),
        ("bool.yaml", "model: m\ndata: d.txt\nout: o\nshard_size: true\n", ["shard_size must be", "True"]),
        ("gpus.yaml", "model: m\ndata: d.txt\nout: o\nnum_gpus: one\n", ["num_gpus must be"]),
        ("nomodel.toml", 'data = "d.txt"\nout = "o"\n', ["required key(s) model"]),
        ("noout.toml", 'model = "m"\ndata = "d.txt"\n', ["required key(s) out", "--out"]),
        ("list.yaml", "- model\n- data\n", ["must hold a table"]),
        ("broken.toml", "model = \n", ["not valid TOML"]),
        ("broken.yaml", "model: [unclosed\n", ["not valid YAML"]),
        ("job.json", '{"model": "m"}', ["expected a .toml, .yaml or .yml file"]),
        ("task.toml", 'model = "m"\ndata = "d.txt"\nout = "o"\ntasks = ["stat"]\n', ["unknown task(s) ['stat']"]),
        ("pool.toml", 'model = "m"\ndata = "d.txt"\nout = "o"\npooling = "max"\n', ["pooling must be one of"]),
    ],
)
def test_bad_job_files_exit_2_naming_the_problem(tmp_path, name, text, needles):
    job = _write(tmp_path / name, text)
    (tmp_path / "d.txt").write_text("hello\n", encoding="utf-8")
    code, stdout, stderr = _run(["run", str(job), "--no-progress"])
    assert code == 2 and stdout == ""
    assert stderr.startswith("llmdbg run: error:") and stderr.count("\n") == 1, stderr
    for needle in needles:
        assert needle in stderr, (needle, stderr)
    assert not (tmp_path / "o").exists()  # nothing written before the job was checked


def test_unknown_key_lists_every_known_key(tmp_path):
    from llmdbg.report.job_file import JOB_KEYS

    job = _write(tmp_path / "j.toml", 'model = "m"\ndata = "d.txt"\nout = "o"\nflavour = 1\n')
    _, _, stderr = _run(["run", str(job)])
    assert "'flavour'" in stderr and all(k in stderr for k in JOB_KEYS)


def test_missing_job_file_and_bad_engine(tmp_path):
    code, _, stderr = _run(["run", str(tmp_path / "nope.toml")])
    assert code == 2 and "does not exist" in stderr
    job = _write(tmp_path / "j.toml", 'model = "m"\ndata = "d.txt"\nout = "o"\nengine = "spark"\n')
    (tmp_path / "d.txt").write_text("hello\n", encoding="utf-8")
    code, _, stderr = _run(["run", str(job)])
    assert code == 2 and "engine must be one of" in stderr
    code, _, stderr = _run(["run", str(job), "--engine", "spark"])
    assert code == 2 and "invalid choice" in stderr


def test_read_job_file_resolves_paths_and_types(tmp_path):
    from llmdbg.report.job_file import job_arguments, read_job_file

    (tmp_path / "sub" / "model").mkdir(parents=True)
    job = read_job_file(
        _write(
            tmp_path / "sub" / "j.yaml",
            "model: model\ntokenizer: bert-base-uncased\ndata: ../d.jsonl\nout: /abs/out\nlabel_column: null\n"
            "activation_modules: [blocks, mlp]\ntarget: 2\nnum_gpus: 0.5\n",
        )
    )
    assert job["model"] == str(tmp_path / "sub" / "model")  # exists next to the file
    assert job["tokenizer"] == "bert-base-uncased"  # a hub name stays as given
    assert job["data"] == str(tmp_path / "sub" / ".." / "d.jsonl") and job["out"] == "/abs/out"
    assert job["label_column"] is None and job["activation_modules"] == ("blocks", "mlp")
    args = job_arguments(job, out="/x", engine=None)
    assert args["out"] == "/x" and "engine" not in args and args["target"] == 2


def test_help_lists_run(capsys):
    code, out, _ = _run(["run", "--help"])
    assert code == 0
    for flag in ("--out", "--engine", "--force", "--no-resume", "--no-progress", "JOB", "label_column"):
        assert flag in out
    assert "run" in _run(["--help"])[1]


@pytest.mark.parametrize(
    ("name", "modules", "needle"),
    [("j.toml", ("tomllib", "tomli"), "pip install tomli"), ("j.yaml", ("yaml",), "pip install pyyaml")],
)
def test_missing_parser_names_the_package(tmp_path, monkeypatch, name, modules, needle):
    for module in modules:
        monkeypatch.setitem(__import__("sys").modules, module, None)  # import raises ImportError
    job = _write(tmp_path / name, "model = 1\n")
    code, _, stderr = _run(["run", str(job)])
    assert code == 2 and needle in stderr and stderr.count("\n") == 1
