"""tfrecsys-score explains itself: ``--help`` lists every flag, and the commands of docs/batch-scoring.md use
real flags — tfrecsys-score's before the bare `--` (as ``--help`` lists them), apache-beam 2.77's pipeline
options after it — so a user can paste them."""

import os
import re
import shlex

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

DOC = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "batch-scoring.md")
FLAGS = ("input", "input_format", "model_base_path", "model_version", "model_name", "model", "signature_name",
         "mode", "top_k", "key_feature", "output", "output_format", "num_output_shards", "dead_letter_output",
         "batch_size", "max_rejected_fraction", "runner")


@pytest.fixture(scope="module")
def help_text(binary_help) -> str:
    completed = binary_help["tfrecsys-score"]
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def documented_flags(help_text: str) -> dict[str, list[str]]:
    """``--help``'s flags: name -> allowed values (enums), or [] for any value."""
    return {name: choices.split("|") if choices else []
            for name, choices in re.findall(r"^  --(\w+):(?: <([\w|]+)>:)?", help_text, flags=re.M)}


def commands() -> list[list[str]]:
    """Every ``tfrecsys-score`` command of the doc's bash blocks, as arguments."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", open(DOC).read(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith("tfrecsys-score"):
                found.append(shlex.split(line)[1:])
    return found


def runner_of(args: list[str]) -> str:
    return next((arg.split("=", 1)[1] for arg in args if arg.startswith("--runner=")), "DirectRunner")


def test_help_exits_zero_and_explains_every_flag(help_text):
    assert sorted(documented_flags(help_text)) == sorted(FLAGS)
    assert documented_flags(help_text)["output_format"] == ["jsonl", "parquet", "tfrecord"]
    assert "after a bare `--`" in help_text


def test_the_doc_has_a_command_for_every_cluster_runner():
    assert {"FlinkRunner", "SparkRunner", "DataflowRunner", "DirectRunner"} <= {runner_of(c) for c in commands()}


@pytest.mark.parametrize("args", commands(), ids=lambda args: f"{runner_of(args)}-{args[0][:30]}")
def test_commands_use_existing_flags_and_pipeline_options(args, help_text):
    ours, beams = (args[:args.index("--")], args[args.index("--") + 1:]) if "--" in args else (args, [])
    known_flags = documented_flags(help_text)
    for arg in ours:
        name, _, value = arg[2:].partition("=")
        assert name in known_flags, f"tfrecsys-score has no flag --{name}"
        allowed = known_flags[name]
        assert not allowed or value in allowed, f"--{name}={value} is not one of {allowed}"
    known_options = set(PipelineOptions([]).get_all_options())
    given = PipelineOptions(beams).get_all_options(retain_unknown_options=True)
    assert sorted(set(given) - known_options) == [], f"not pipeline options of apache-beam 2.77: {beams}"
