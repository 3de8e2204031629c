import json

import pytest

from tfx_gpt2.settings import PipelineSettings, SettingsError, from_env


def test_defaults_env_and_file(tmp_path):
    assert from_env({}) == PipelineSettings()
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": "124M", "max_steps": 50, "mongo_collections": ["a.b"]}))
    s = from_env({"TFX_GPT2_CONFIG": str(path), "TFX_GPT2_MAX_STEPS": "70", "MLFLOW_TRACKING_URI": "http://m:5000",
                  "TFX_GPT2_MONGO_COLLECTIONS": "db.one,db.two", "TFX_GPT2_SCHEDULE": "none"})
    assert (s.model, s.max_steps, s.mongo_collections) == ("124M", 70, ("db.one", "db.two"))
    assert s.tracking_uri == "http://m:5000" and s.schedule == ""
    assert from_env({"TFX_GPT2_OUTPUT_DIR": "/o"}).tracking_uri == "sqlite:////o/mlflow/mlflow.db"


def test_bad_values_name_the_variable(tmp_path):
    with pytest.raises(SettingsError, match=r"TFX_GPT2_MAX_STEPS = 'many' is not a valid max_steps"):
        from_env({"TFX_GPT2_MAX_STEPS": "many"})
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"modle": "124M"}))
    with pytest.raises(SettingsError, match=r"unknown setting\(s\) \['modle'\]"):
        from_env({"TFX_GPT2_CONFIG": str(path)})
