import dataclasses
import subprocess
import sys
import typing

import pytest

from seqpipe import ConfigError, PipelineConfig, SourceNotFoundError, load_config
from seqpipe import config as config_module
from tests.helpers import base_config

ISSUE_YAML = """
source:
  path: data/train.parquet
  layout: long
  id_column: patient_id
  time_column: t
inputs:
  vitals: {columns: [hr, bp, spo2]}
  demographics: {columns: [age, sex], level: sequence}
outputs:
  next_hr: {column: hr_next, level: timestep}
  mortality: {column: died, level: sequence}
padding:
  maxlen: 512
  side: post
  truncating: post
  value: 0.0
batching:
  batch_size: 64
  bucket_boundaries: [32, 64, 128, 256]
  drop_remainder: false
weights:
  mode: batch_mean
shuffle:
  buffer_size: 10000
  seed: 42
"""


def test_the_yaml_from_the_contract_loads(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(ISSUE_YAML)
    config = load_config(path)
    assert config.inputs["vitals"].columns == ("hr", "bp", "spo2")
    assert config.inputs["demographics"].level == "sequence"
    assert config.outputs["mortality"].column == "died"
    assert config.batching.bucket_boundaries == (32, 64, 128, 256)
    assert config.shuffle.seed == 42
    assert config.weight_mode("next_hr") == "batch_mean"


def test_config_is_frozen_and_round_trips():
    config = load_config(base_config("x.parquet"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.padding.maxlen = 3
    with pytest.raises(TypeError):
        config.inputs["new"] = None
    assert load_config(config.to_dict()) == config
    assert load_config(config) == config


def test_defaults_are_documented_and_sensible():
    config = load_config(base_config("x.parquet"))
    assert config.padding.side == "post" and config.padding.maxlen is None
    assert config.batching.bucket_boundaries is None
    assert config.weights.mode == "batch_mean"
    assert config.shuffle.buffer_size == 0
    sections = [t for t in typing.get_type_hints(PipelineConfig).values()
                if dataclasses.is_dataclass(t)]
    sections += [config_module.InputConfig, config_module.OutputConfig]
    assert len(sections) == 8
    assert not config.split.enabled  # no split unless asked for
    for section in sections:
        for field in dataclasses.fields(section):
            assert field.metadata["doc"], f"{section.__name__}.{field.name} has no doc"


def test_overrides_set_dotted_keys():
    config = load_config(base_config("x.parquet"), {"batching.batch_size": 128,
                                                     "padding.maxlen": 9,
                                                     "source.path": "y.parquet"})
    assert config.batching.batch_size == 128
    assert config.padding.maxlen == 9
    assert config.source.path == "y.parquet"


@pytest.mark.parametrize("override, message", [
    ({"padding.side": "left"}, r"^padding\.side must be 'pre' or 'post' or null; got 'left'$"),
    ({"padding.maxlen": 0}, r"padding\.maxlen must be a positive integer or null; got 0"),
    ({"padding.value": float("nan")}, r"padding\.value must be a finite number; got nan"),
    ({"batching.bucket_boundaries": [8, 4]},
     r"batching\.bucket_boundaries must be .*strictly increasing.*; got \[8, 4\]"),
    ({"batching.bucket_boundaries": "often"},
     r"batching\.bucket_boundaries must be a list of integers or 'auto' or null; got 'often'"),
    ({"batching.batch_size": "64"}, r"batching\.batch_size must be an integer; got '64'"),
    ({"batching.batch_size": -1}, r"batching\.batch_size must be a positive integer; got -1"),
    ({"batching.accumulation_steps": 0},
     r"batching\.accumulation_steps must be a positive integer; got 0"),
    ({"source.memory_mb": -1}, r"source\.memory_mb must be an integer >= 0; got -1"),
    ({"batching.drop_remainder": "yes"}, r"drop_remainder must be true or false; got 'yes'"),
    ({"weights.mode": "mean"}, r"weights\.mode must be 'binary' or 'batch_mean' or "
                               r"'global_mean' or 'sequence_mean'; got 'mean'"),
    ({"shuffle.seed": 1.5}, r"shuffle\.seed must be an integer or null; got 1\.5"),
    ({"source.layout": "wide"}, r"source\.layout must be 'long' or 'nested'; got 'wide'"),
    ({"inputs.steps.columns": "code"}, r"inputs\.steps\.columns must be a list of strings"),
    ({"inputs.steps.columns": []}, r"inputs\.steps\.columns must be a non-empty list of "
                                   r"distinct column names; got \[\]"),
    ({"inputs.steps.level": "step"}, r"inputs\.steps\.level must be 'timestep' or 'sequence'"),
    ({"outputs.y.fill_value": float("inf")}, r"outputs\.y\.fill_value must be a finite"),
    ({"inputs.steps.fill_value": {"nope": 1.0}},
     r"inputs\.steps\.fill_value names columns that are not in inputs\.steps\.columns: "
     r"\['nope'\]"),
])
def test_bad_values_name_key_path_and_value(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(base_config("x.parquet"), override)


@pytest.mark.parametrize("override, message", [
    ({"batching.batch_sise": 3}, r"unknown key 'batching\.batch_sise'\. Did you mean "
                                 r"'batch_size'\? Allowed keys in batching: batch_size, "
                                 r"bucket_boundaries, drop_remainder"),
    ({"paddings": {}}, r"unknown key 'paddings'\. Did you mean 'padding'\? Allowed keys in "
                       r"the config: inputs, outputs, source, padding, batching, weights, "
                       r"shuffle"),
    ({"inputs.steps.colums": ["a"]}, r"unknown key 'inputs\.steps\.colums'\. Did you mean "
                                     r"'columns'\?"),
])
def test_unknown_keys_list_the_allowed_ones(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(base_config("x.parquet"), override)


def test_long_layout_needs_an_id_column():
    with pytest.raises(ConfigError, match=r"source\.id_column is required when source\.layout "
                                          r"is 'long'.*Got none"):
        load_config(base_config("x.parquet"), {"source.id_column": None})


def test_missing_required_key():
    raw = base_config("x.parquet")
    del raw["inputs"]
    with pytest.raises(ConfigError, match=r"^inputs is required\."):
        load_config(raw)


def test_cross_field_rules():
    with pytest.raises(ConfigError, match=r"bucket_boundaries must not exceed padding\.maxlen "
                                          r"\(10\).*Received: \[4, 16\]"):
        load_config(base_config("x"), {"padding.maxlen": 10,
                                       "batching.bucket_boundaries": [4, 16]})
    with pytest.raises(ConfigError, match=r"at least one input must have level: timestep"):
        load_config(base_config("x"), {"inputs": {"s": {"columns": ["age"],
                                                        "level": "sequence"}}})
    with pytest.raises(ConfigError, match=r"column 'id', which is source\.id_column"):
        load_config(base_config("x"), {"inputs.steps.columns": ["id"]})


def test_yaml_file_errors(tmp_path):
    with pytest.raises(SourceNotFoundError, match=r"config file not found: '.*nope\.yaml'"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("inputs: [unclosed")
    with pytest.raises(ConfigError, match=r"is not valid YAML"):
        load_config(bad)
    bad.write_text("- a list")
    with pytest.raises(ConfigError, match=r"must hold a mapping of sections.*got list"):
        load_config(bad)


def test_a_key_given_twice_is_an_error_naming_both_lines(tmp_path):
    """PyYAML keeps the last of two equal keys: a whole section would vanish unseen."""
    path = tmp_path / "c.yaml"
    path.write_text("source: {layout: nested}\ninputs:\n  x: {columns: [a]}\n"
                    "batching:\n  batch_size: 3\nbatching:\n  batch_size: 5\n")
    with pytest.raises(ConfigError, match=r"^key 'batching' appears twice in one mapping of "
                                          r"config file '.*c\.yaml', on lines 4 and 6; YAML "
                                          r"would keep only the last"):
        load_config(path)
    path.write_text("inputs:\n  x: {columns: [a], columns: [b]}\n")
    with pytest.raises(ConfigError, match=r"key 'columns' appears twice .* lines 2 and 2"):
        load_config(path)


def test_a_config_that_is_not_utf8_text_or_is_parquet_is_one_clear_error(tmp_path):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("inputs:\n  caf\u00e9: {columns: [a]}\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"config file '.*latin\.yaml' is not UTF-8 text "
                                          r"\(byte 0xe9 on line 2\); save it as UTF-8"):
        load_config(latin)
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "data.parquet"
    pq.write_table(pa.table({"a": [1.0]}), data)
    with pytest.raises(ConfigError, match=r"config file '.*data\.parquet' is a Parquet file, "
                                          r"not a YAML config"):
        load_config(data)


@pytest.mark.parametrize("override, message", [
    ({"outputs.y.column": "x"},
     r"^outputs\.y\.column 'x' is also in inputs\.steps\.columns: the model would be fed "
     r"the label it has to predict \(a label leak\).*also_input: true"),
    ({"outputs.died.column": "age"}, r"^outputs\.died\.column 'age' is also in "
                                     r"inputs\.static\.columns"),
    ({"source.time_column": "id"},
     r"^source\.id_column and source\.time_column are both 'id'.*different columns"),
], ids=["timestep-label-leak", "sequence-label-leak", "id-is-time"])
def test_a_label_fed_as_input_and_an_id_used_as_time_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(base_config("x"), override)


def test_also_input_lets_a_label_column_feed_an_input():
    config = load_config(base_config("x"), {"outputs.y.column": "x",
                                            "outputs.y.also_input": True})
    assert config.outputs["y"].column == "x"


def test_importing_and_loading_a_config_does_not_import_tensorflow(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(ISSUE_YAML)
    code = ("import sys, seqpipe; seqpipe.load_config(sys.argv[1]); "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "False False"


@pytest.mark.parametrize("raw_update, message", [
    ({"inputs": {}}, r"inputs must name at least one model input; got none"),
    ({"inputs": ["steps"]}, r"inputs must be a mapping of name -> spec; got \['steps'\]"),
    ({"padding": 5}, r"padding must be a mapping of keys; got 5"),
    ({"outputs": {"steps": {"column": "y"}}},
     r"a name cannot be both an input and an output; got \['steps'\]"),
])
def test_bad_section_shapes(raw_update, message):
    raw = {**base_config("x.parquet"), **raw_update}
    with pytest.raises(ConfigError, match=message):
        load_config(raw)


def test_override_into_a_value_that_is_not_a_section():
    with pytest.raises(ConfigError, match=r"override 'padding\.maxlen\.deep': padding\.maxlen "
                                          r"is 5, not a section"):
        load_config({**base_config("x.parquet"), "padding": {"maxlen": 5}},
                    {"padding.maxlen.deep": 1})


def test_yaml_is_loaded_safely_a_python_tag_is_refused_not_run(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "c.yaml"
    path.write_text(f"inputs: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match=r"is not valid YAML: could not determine a "
                                          r"constructor for the tag 'tag:yaml\.org,2002:python/"
                                          r"object/apply:os\.system'"):
        load_config(path)
    assert not marker.exists()


@pytest.mark.parametrize("make, message", [
    (lambda: config_module.PaddingConfig(side="left"),
     r"^PaddingConfig\.side must be 'pre' or 'post' or null; got 'left'"),
    (lambda: config_module.BatchingConfig(batch_size=0),
     r"^BatchingConfig\.batch_size must be a positive integer; got 0"),
    (lambda: config_module.InputConfig(columns=[]),
     r"^InputConfig\.columns must be a non-empty list of distinct column names; got \[\]"),
    (lambda: config_module.OutputConfig(column="y", weights="mean"),
     r"^OutputConfig\.weights must be .*'batch_mean'.*; got 'mean'"),
    (lambda: PipelineConfig(inputs={"x": {"columns": ["a"]}}, padding={"side": "left"}),
     r"^PipelineConfig\.padding\.side must be 'pre' or 'post' or null; got 'left'"),
], ids=["padding-side", "batch-size", "no-columns", "weight-mode", "nested-mapping"])
def test_a_config_built_in_python_is_checked_like_one_loaded_from_yaml(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_a_config_built_in_python_equals_the_one_loaded_from_its_mapping():
    made = PipelineConfig(inputs={"x": config_module.InputConfig(columns=["a", "b"])},
                          source=config_module.SourceConfig(layout="nested"))
    assert made.inputs["x"].columns == ("a", "b")
    assert made == load_config(made.to_dict())
