"""The layers of tfx_gpt2, bottom to top: the architecture's source of truth.

A module may import from its own layer and from the layers below it, never from a layer above;
imports between tfx_gpt2's modules (at module level or inside a function) form no cycle; and
only `orchestration` imports an orchestrator (Airflow, KFP). `tests/test_architecture.py`
enforces all three; docs/architecture.md says what each layer is for.
"""

# (layer, the packages and modules in it), bottom first.
LAYERS = (
    ("base", ("tfx_gpt2", "tfx_gpt2.progress", "tfx_gpt2.quiet", "tfx_gpt2.uris", "tfx_gpt2.file_lock",
              "tfx_gpt2.layers")),
    ("text", ("tfx_gpt2.text",)),
    ("sources", ("tfx_gpt2.sources",)),
    ("config", ("tfx_gpt2.config",)),
    ("model", ("tfx_gpt2.model",)),
    ("training", ("tfx_gpt2.training",)),
    ("registry", ("tfx_gpt2.registry",)),
    ("feedback", ("tfx_gpt2.feedback",)),
    ("serving", ("tfx_gpt2.serving",)),
    ("components", ("tfx_gpt2.components",)),
    ("pipeline", ("tfx_gpt2.pipeline",)),
    ("orchestration", ("tfx_gpt2.orchestration",)),
    ("cli", ("tfx_gpt2.cli",)),
)

# Top-level packages that only `orchestration` may import.
ORCHESTRATORS = ("airflow", "kfp")
ORCHESTRATION = "orchestration"


def layer_of(module: str) -> int:
    """The index in `LAYERS` of a tfx_gpt2 module (the longest package or module that holds it).

    Raises:
        KeyError: no layer holds `module` (add it to `LAYERS`).
    """
    best, index = "", -1
    for i, (_, members) in enumerate(LAYERS):
        for member in members:
            if (module == member or module.startswith(member + ".")) and len(member) > len(best):
                best, index = member, i
    if index < 0:
        raise KeyError(f"{module} is in no layer of tfx_gpt2.layers.LAYERS; add it to the layer it belongs to.")
    return index
