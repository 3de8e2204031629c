"""Silences messages that are known to be harmless and that a user cannot act on, each matched
exactly, so that a real warning still shows. Installed by `import tfx_gpt2`.

    absl (TFX)     "ArtifactQuery.property_predicate is not supported." -- TFX's input resolver
                   logs it for every channel that names its producer's output key; our
                   components have one output per artifact type, so the ignored predicate
                   changes nothing.
    Beam           "Couldn't find python-snappy ..." -- only a slower CRC of TFRecords.
    MLflow         "Passing a Python object as `python_model` ... CloudPickle" -- our own
                   class, loaded by our own code; artifact download progress bars.
    google-cloud   "Support for google-cloud-storage < 3.0.0 will be removed" -- pinned by TFX.
    TensorFlow     C++ INFO and WARNING lines (CUDA and TensorRT not found on a CPU machine, ...),
                   unless TF_CPP_MIN_LOG_LEVEL is set; errors still show.
"""

import logging
import os
import warnings

KNOWN_LOG_MESSAGES = {
    "absl": ("ArtifactQuery.property_predicate is not supported.",
             "ContextQuery.property_predicate is not supported."),
    "apache_beam.io.tfrecordio": ("Couldn't find python-snappy",),
    "mlflow.pyfunc": ("Passing a Python object as `python_model` causes it to be serialized using CloudPickle",),
}
KNOWN_WARNINGS = (
    (FutureWarning, r"Support for google-cloud-storage < 3\.0\.0 will be removed"),
    (FutureWarning, r".*non-supported Python version"),  # google-api-core, once per module: TFX 1.16 needs 3.10
)


class _DropKnown(logging.Filter):
    def __init__(self, prefixes):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(message.startswith(p) for p in self.prefixes)


def install() -> None:
    """Adds the filters (once per logger; safe to call again)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for category, message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, prefixes in KNOWN_LOG_MESSAGES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnown) for f in logger.filters):
            logger.addFilter(_DropKnown(prefixes))
