"""Scenario 3's comparison point: what the seed did to reach Trio code from FastAPI.

Every call starts a fresh ``trio.run`` in a worker thread (Starlette's thread
pool), runs the same hashing work inside it, and returns.  Served by uvicorn
with the same options as the gateway, so only the approach differs.

    python -m bench.seed_style_app PORT

"The seed" is the plan this project comes from: ipfs_datasets_py's MCP server (its tools in
``tools/<category>/<tool>.py``) gaining P2P capabilities. Its users' tools, tool names, arguments and REST paths are
the surface this project stays compatible with.
"""

from __future__ import annotations

import sys
from typing import Any

import anyio.to_thread
import trio
import uvicorn
from fastapi import Body, FastAPI
from fastapi.responses import Response

from shared_schema.content import hash_payload

app = FastAPI()


async def _trio_hash(data: str) -> dict[str, Any]:
    await trio.lowlevel.checkpoint()
    return hash_payload(data)


@app.post("/tools/execute/{tool_name}")
async def execute(tool_name: str, parameters: dict[str, Any] = Body(default_factory=dict)) -> dict[str, Any]:
    result = await anyio.to_thread.run_sync(trio.run, _trio_hash, parameters["data"])
    return {"tool": tool_name, "status": "success", "result": result}


@app.post("/noop")
async def noop() -> Response:
    """The cheapest FastAPI POST under these uvicorn options: a ceiling for any handler, ours included."""
    return Response(b"{}", media_type="application/json")


@app.get("/health/ready")
async def ready() -> dict[str, bool]:
    return {"ready": True}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
