import keras
import mlflow.pyfunc
import pandas as pd
import pytest

from tfx_gpt2.config.model import GPT2Config
from tfx_gpt2.model.gpt2 import GPT2
from tfx_gpt2.model.io import save_model_dir
from tfx_gpt2.registry.champion import MODEL_DIR_ARTIFACT
from tfx_gpt2.registry.pyfunc import SIGNATURE, GPT2PyFunc


@pytest.fixture(scope="module")
def pyfunc_model(tmp_path_factory):
    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("pyfunc")
    model_dir = save_model_dir(GPT2(GPT2Config(n_ctx=16, n_embd=16, n_layer=1, n_head=2)), str(root / "m"))
    mlflow.pyfunc.save_model(str(root / "mlflow"), python_model=GPT2PyFunc(),
                             artifacts={MODEL_DIR_ARTIFACT: model_dir}, signature=SIGNATURE)
    return mlflow.pyfunc.load_model(str(root / "mlflow"))


def test_list_and_dataframe_inputs(pyfunc_model):
    settings = {"max_new_tokens": 4, "temperature": 0.0}
    from_list = pyfunc_model.predict(["Hello", "The"], params=settings)
    from_frame = pyfunc_model.predict(pd.DataFrame({"prompt": ["Hello", "The"]}), params=settings)
    assert len(from_list) == 2 and all(isinstance(t, str) for t in from_list)
    assert list(from_frame) == list(from_list)


def test_seed_makes_sampling_reproducible(pyfunc_model):
    settings = {"max_new_tokens": 6, "temperature": 1.0, "top_k": 50, "seed": 7}
    assert pyfunc_model.predict(["A"], params=settings) == pyfunc_model.predict(["A"], params=settings)


def test_bad_setting_is_named(pyfunc_model):
    with pytest.raises(Exception, match="temperature = -1.0"):
        pyfunc_model.predict(["A"], params={"temperature": -1.0})
