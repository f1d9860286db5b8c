"""An MCP client for Weir's tests, on the official Python SDK (PyPI `mcp`).

    python3 mcp_client.py http URL TOKEN
    python3 mcp_client.py stdio WEIR_BINARY CONFIG TOKEN     (WEIR_TOKEN=TOKEN weir mcp --config CONFIG)

Reads one request per line on stdin, as JSON: {"tool": NAME, "args": {...}} or {"list": true}.
Writes one answer per line on stdout, as JSON: {"is_error", "text", "structured"} for a tool
call, {"tools": [{"name", "annotations"}]} for a listing, {"exception": TEXT} when the call
itself failed. A new MCP session is opened for every request over HTTP (the transport is
stateless), and one is kept for the whole run over stdio.
"""

import asyncio
import json
import os
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client


async def answer(session, request):
    if request.get("list"):
        listed = await session.list_tools()
        return {
            "tools": [
                {
                    "name": t.name,
                    "annotations": t.annotations.model_dump(by_alias=True, exclude_none=True)
                    if t.annotations
                    else None,
                }
                for t in listed.tools
            ]
        }
    r = await session.call_tool(request["tool"], request.get("args", {}))
    text = "".join(c.text for c in r.content if getattr(c, "type", None) == "text")
    return {"is_error": bool(r.is_error), "text": text, "structured": r.structured_content}


def emit(value):
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


async def http(url, token):
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        try:
            client = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
            async with client:
                async with streamable_http_client(url, http_client=client) as streams:
                    async with ClientSession(streams[0], streams[1]) as session:
                        await session.initialize()
                        emit(await answer(session, request))
        except BaseException as e:  # noqa: BLE001 - the test reads what failed
            emit({"exception": repr(e)})


async def stdio(weir, config, token):
    env = {**os.environ, "WEIR_TOKEN": token}
    params = StdioServerParameters(command=weir, args=["mcp", "--config", config], env=env)
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            loop = asyncio.get_running_loop()
            while True:
                line = await loop.run_in_executor(None, sys.stdin.readline)
                if not line:
                    break
                if not line.strip():
                    continue
                try:
                    emit(await answer(session, json.loads(line)))
                except Exception as e:  # noqa: BLE001
                    emit({"exception": repr(e)})


def main():
    mode = sys.argv[1]
    if mode == "http":
        asyncio.run(http(sys.argv[2], sys.argv[3]))
    elif mode == "stdio":
        asyncio.run(stdio(sys.argv[2], sys.argv[3], sys.argv[4]))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
