"""`tfx-gpt2 serve`: MLflow's scoring server for a registered model, plus Seldon's request format.

`mlflow models serve -m models:/<name>@champion --env-manager local` serves a pushed model as it
is. This server exists for one thing MLflow's cannot express: Seldon Core's body
`{"data": {"ndarray": ["prompt", ...]}}` (MLflow's server answers it with 400, as it accepts only
`inputs`, `instances`, `dataframe_records` and `dataframe_split`). Everything else is MLflow's
own code, so both servers answer the same requests the same way:

    POST /invocations            MLflow's formats, e.g. {"inputs": ["Hello"], "params": {"temperature": 0.7}},
                                 and the Seldon body; returns {"predictions": [text, ...]}
    POST /api/v1.0/predictions   Seldon Core's path: {"data": {"ndarray": [...]}, "parameters": {...}}
                                 returns {"data": {"names": ["generated_text"], "ndarray": [text, ...]}, "meta": {}}
    GET  /ping, /health, /version

Bad sampling settings (a negative temperature, top_p outside (0, 1], more new tokens than the
context holds, an unknown setting) get HTTP 400 with the reason.
"""


import json
from typing import Any, Dict, List, Tuple, Union

from tfx_gpt2.serving.mlflow_pyfunc import check_setting_names

SELDON_PATH = "/api/v1.0/predictions"


class RequestError(ValueError):
    """A request body that is not a Seldon request; the message says what is expected."""


def parse_seldon(body: Dict[str, Any]) -> Tuple[List[str], Dict[str, Any]]:
    """Prompts and sampling settings of a Seldon body (`data.ndarray`, or `strData`)."""
    if "strData" in body:
        prompts = [body["strData"]]
    else:
        data = body.get("data")
        if not isinstance(data, dict) or "ndarray" not in data:
            raise RequestError('send {"data": {"ndarray": ["a prompt", ...]}} (Seldon) with optional '
                               '"parameters": {"temperature": 0.8, ...}')
        rows = data["ndarray"]
        if not isinstance(rows, list):
            rows = [rows]
        prompts = [r[0] if isinstance(r, list) and len(r) == 1 else r for r in rows]
    if not all(isinstance(p, str) for p in prompts):
        raise RequestError(f"data.ndarray must hold strings (prompts); got {prompts!r:.200}")
    params = body.get("parameters", body.get("params")) or {}
    if not isinstance(params, dict):
        raise RequestError(f"parameters must be an object of sampling settings; got {params!r:.200}")
    # MLflow drops parameters its signature does not name, with a warning; a typo here is an error.
    try:
        check_setting_names(params)
    except ValueError as e:
        raise RequestError(str(e)) from None
    return prompts, params


def predict_seldon(model, body) -> Tuple[int, Union[List[str], str]]:
    """(200, texts) for a Seldon body, or (HTTP status, reason)."""
    from mlflow.exceptions import MlflowException

    try:
        prompts, params = parse_seldon(body)
        return 200, list(model.predict(prompts, params=params))
    except RequestError as e:
        return 400, str(e)
    except MlflowException as e:
        return e.get_http_status_code(), e.message


def _json_or_none(data: bytes):
    try:
        return json.loads(data)
    except ValueError:
        return None


def _seldon_answer(status: int, result):
    from fastapi.responses import JSONResponse

    if status != 200:
        return JSONResponse({"status": {"code": status, "info": result, "status": "FAILURE"}}, status_code=status)
    return JSONResponse({"data": {"names": ["generated_text"], "ndarray": result}, "meta": {}})


def _mlflow_answer(model, input_schema, data: bytes, content_type: str):
    """MLflow's own scoring of an `/invocations` body, or Seldon's body sent there."""
    from fastapi.responses import JSONResponse, Response
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    body = _json_or_none(data) if content_type.startswith("application/json") else None
    if isinstance(body, dict) and ("data" in body or "strData" in body):
        status, result = predict_seldon(model, body)
        if status != 200:
            return JSONResponse({"error_code": "BAD_REQUEST", "message": result}, status_code=status)
        return JSONResponse({"predictions": result})
    try:
        result = scoring_server.invocations(data, content_type, model, input_schema)
    except MlflowException as e:
        return Response(content=e.serialize_as_json(), status_code=e.get_http_status_code(),
                        media_type="application/json")
    return Response(content=result.response, status_code=result.status, media_type=result.mimetype)


def create_app(model):
    """The FastAPI app serving `model` (an MLflow `PyFuncModel` of a tfx-gpt2 model).

    (No `from __future__ import annotations` in this module: FastAPI reads the `Request`
    annotations of the handlers at run time.)
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import Response

    app = FastAPI(title="tfx-gpt2")
    input_schema = model.metadata.get_input_schema()

    @app.get("/ping")
    @app.get("/health")
    async def ping():
        return Response(content="\n", status_code=200, media_type="application/json")

    @app.get("/version")
    async def version():
        import mlflow

        return Response(content=mlflow.__version__, status_code=200, media_type="application/json")

    @app.post(SELDON_PATH)
    async def seldon(request: Request):
        body = _json_or_none(await request.body())
        if body is None:
            return _seldon_answer(400, "the body is not JSON")
        return _seldon_answer(*predict_seldon(model, body if isinstance(body, dict) else {}))

    @app.post("/invocations")
    async def invocations(request: Request):
        return _mlflow_answer(model, input_schema, await request.body(), request.headers.get("content-type", ""))

    return app


def serve(model_uri: str, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Loads `model_uri` (e.g. `models:/tfx-gpt2-local@champion`) and serves it until stopped."""
    import mlflow.pyfunc
    import uvicorn

    model = mlflow.pyfunc.load_model(model_uri)
    uvicorn.run(create_app(model), host=host, port=port, log_level="info")
