"""Known harmless messages are dropped, exactly: other messages of the same loggers still show."""

import logging
import warnings

import tfx_gpt2  # noqa: F401 -- installs the filters


def test_known_log_messages_are_dropped_and_others_kept(caplog):
    with caplog.at_level(logging.WARNING):
        logging.getLogger("absl").warning("ArtifactQuery.property_predicate is not supported.")
        logging.getLogger("absl").warning("Something real happened.")
        logging.getLogger("mlflow.pyfunc").warning("Passing a Python object as `python_model` causes it to be "
                                                   "serialized using CloudPickle, ...")
        logging.getLogger("mlflow.pyfunc").warning("The model signature is missing.")
    assert [r.getMessage() for r in caplog.records] == ["Something real happened.", "The model signature is missing."]


def test_known_python_warnings_are_ignored_and_others_kept():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        import tfx_gpt2.quiet as quiet

        quiet.install()  # after simplefilter, as at import time in a fresh process
        warnings.warn("Support for google-cloud-storage < 3.0.0 will be removed in a future version",
                      FutureWarning, stacklevel=1)
        warnings.warn("Add a real problem", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["Add a real problem"]
