"""Where versions registered before 2026-12 find their pyfunc class (MLflow pickles it by its
module path): the flavour lives in `tfx_gpt2.registry.pyfunc`."""

from tfx_gpt2.registry.pyfunc import GPT2PyFunc  # noqa: F401
