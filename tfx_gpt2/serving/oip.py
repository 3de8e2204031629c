"""The Open Inference Protocol (KServe v2, what Triton and Seldon MLServer speak) over HTTP:
request parsing and response building for the server's `/v2` routes.

    GET  /v2                                       server metadata
    GET  /v2/health/live, /v2/health/ready         200 when live / ready, 503 otherwise
    GET  /v2/models/{name}[/versions/{v}]          model metadata: a BYTES input, a BYTES output
    GET  /v2/models/{name}[/versions/{v}]/ready    200 when this model is served and ready
    POST /v2/models/{name}[/versions/{v}]/infer    prompts in, texts out

`infer` takes one BYTES tensor of prompts (`INPUT_NAME`, shape `[N]` or `[N, 1]`, UTF-8), and the
sampling settings as the request's `parameters` (MLflow's names: `max_new_tokens`, `temperature`,
`top_k`, `top_p`, `repetition_penalty`, `seed`, `stop`); it answers one BYTES tensor of texts
(`OUTPUT_NAME`, shape `[N]`). Tensors travel as JSON, or in the binary data extension that
`tritonclient` uses by default: the body is a JSON header of `Inference-Header-Content-Length`
bytes followed by the tensors' bytes (each BYTES element a 4-byte little-endian length and its
bytes), `parameters.binary_data_size` giving each input's share.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Dict, List, Optional, Tuple

from tfx_gpt2.serving.protocol import BadRequest, Job, _mlflow_params, _prompts, _unknown, read_json

INPUT_NAME, OUTPUT_NAME = "text_input", "text_output"
HEADER = "inference-header-content-length"


def model_metadata(name: str, version: str, n_ctx: int) -> Dict[str, Any]:
    return {"name": name, "versions": [version], "platform": "tfx-gpt2",
            "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": OUTPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
            "parameters": {"context_length": n_ctx}}


def error(status: int, message: str, field=None) -> Dict[str, Any]:
    """The protocol's error body."""
    return {"error": message}


def parse_infer(data: bytes, header_length: Optional[str], n_vocab: int) -> Tuple[Job, Dict[str, Any]]:
    """The job of an `infer` body, and what the answer needs (`id`, whether the output goes binary)."""
    body, binary = _split(data, header_length)
    if not isinstance(body, dict):
        raise BadRequest('send {"inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES", '
                         '"data": ["a prompt"]}], "parameters": {...}}')
    _unknown(body, {"id", "inputs", "outputs", "parameters"}, "the inference request")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest(f"inputs must hold one tensor, {INPUT_NAME!r} (BYTES, the prompts)", "inputs")
    prompts = _prompts(_bytes_tensor(inputs[0], binary), f"inputs[0] ({INPUT_NAME})")
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest("parameters must be an object of sampling settings", "parameters")
    params = {k: v for k, v in params.items() if k != "binary_data_output"}
    answer = {"id": body.get("id"), "binary": _binary_output(body)}
    return Job(prompts, _mlflow_params(params, n_vocab)), answer


def _split(data: bytes, header_length: Optional[str]) -> Tuple[Any, bytes]:
    """(JSON header, binary rest) of a body."""
    if header_length is None:
        return read_json(data), b""
    if not header_length.isdigit() or int(header_length) > len(data):
        raise BadRequest(f"Inference-Header-Content-Length = {header_length[:20]!r} is not a length within the "
                         f"body's {len(data)} bytes")
    n = int(header_length)
    return read_json(data[:n]), data[n:]


def _bytes_tensor(tensor: Dict[str, Any], binary: bytes) -> List[str]:
    """The strings of a BYTES input tensor (JSON data, or its binary part)."""
    _unknown(tensor, {"name", "shape", "datatype", "data", "parameters"}, "inputs[0]")
    if tensor.get("name") != INPUT_NAME:
        raise BadRequest(f"inputs[0].name = {tensor.get('name')!r:.60}; this model's input is {INPUT_NAME!r}",
                         "inputs")
    if tensor.get("datatype") != "BYTES":
        raise BadRequest(f"inputs[0].datatype = {tensor.get('datatype')!r:.40}; send BYTES (UTF-8 prompts)",
                         "inputs")
    shape = tensor.get("shape")
    if not (isinstance(shape, list) and len(shape) in (1, 2) and all(isinstance(d, int) for d in shape)
            and (len(shape) == 1 or shape[1] == 1)):
        raise BadRequest(f"inputs[0].shape = {shape!r:.60}; send [N] or [N, 1] for N prompts", "inputs")
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size != len(binary):
            raise BadRequest(f"inputs[0].parameters.binary_data_size = {size!r:.20} but {len(binary)} bytes follow "
                             "the JSON header", "inputs")
        values = _unpack(binary)
    else:
        values = tensor.get("data")
        if isinstance(values, list) and values and all(isinstance(v, list) for v in values):
            values = [v[0] if len(v) == 1 else v for v in values]  # [[p], [q]] for shape [N, 1]
    if not isinstance(values, list) or len(values) != shape[0]:
        raise BadRequest(f"inputs[0] holds {len(values) if isinstance(values, list) else 'no list of'} values "
                         f"for shape {shape}", "inputs")
    return values


def _unpack(binary: bytes) -> List[str]:
    """BYTES elements of the binary extension: each a 4-byte little-endian length, then its bytes."""
    out, at = [], 0
    while at < len(binary):
        if at + 4 > len(binary):
            raise BadRequest("the binary tensor data ends inside an element's length", "inputs")
        (n,) = struct.unpack_from("<I", binary, at)
        if at + 4 + n > len(binary):
            raise BadRequest(f"a binary BYTES element says {n} bytes but {len(binary) - at - 4} remain", "inputs")
        try:
            out.append(binary[at + 4:at + 4 + n].decode("utf-8"))
        except UnicodeDecodeError as e:
            raise BadRequest(f"a prompt in the binary tensor data is not UTF-8 ({e.reason})", "inputs") from None
        at += 4 + n
    return out


def _binary_output(body: Dict[str, Any]) -> bool:
    outputs = body.get("outputs") or []
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise BadRequest(f"outputs must be a list of {{'name': {OUTPUT_NAME!r}}}", "outputs")
    for o in outputs:
        if o.get("name") != OUTPUT_NAME:
            raise BadRequest(f"outputs names {o.get('name')!r:.60}; this model's output is {OUTPUT_NAME!r}",
                             "outputs")
    binary = [bool((o.get("parameters") or {}).get("binary_data")) for o in outputs]
    return any(binary) or bool((body.get("parameters") or {}).get("binary_data_output"))


def infer_response(name: str, version: str, request_id, texts: List[str], binary: bool) -> Tuple[bytes, Dict[str, str]]:
    """(body, headers) of an `infer` answer: the texts as a BYTES tensor, in JSON or binary."""
    tensor = {"name": OUTPUT_NAME, "datatype": "BYTES", "shape": [len(texts)]}
    head = {"model_name": name, "model_version": version, "outputs": [tensor]}
    if request_id is not None:
        head["id"] = request_id
    if not binary:
        tensor["data"] = texts
        return json.dumps(head).encode(), {"content-type": "application/json"}
    data = b"".join(struct.pack("<I", len(t)) + t for t in (t.encode("utf-8") for t in texts))
    tensor["parameters"] = {"binary_data_size": len(data)}
    header = json.dumps(head).encode()
    return header + data, {"content-type": "application/octet-stream", HEADER: str(len(header))}
