"""LangChain against `vist2 serve`: `ChatOpenAI.with_structured_output(PydanticModel)` in its
three methods (json_schema, function_calling, json_mode) and `bind_tools` (a required call, a
named one, auto, and the agent loop's second turn with the tool's result). Prints what each
returned; exits 1 if any check fails. langchain-openai is too heavy for the test extra (13
packages), so this script is run by hand and its output kept in docs/langchain_check.txt:

    pip install langchain-openai
    PYTHONPATH=src python scripts/langchain_check.py --preset tiny --mode gcc
    PYTHONPATH=src python scripts/langchain_check.py --preset smollm2-135m --mode text
"""

import argparse
import json
import subprocess
import sys
import time

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from vist2.serve.health import free_port, wait_healthy

parser = argparse.ArgumentParser(description="LangChain's structured output and tools against vist2 serve")
parser.add_argument("--preset", default="tiny")
parser.add_argument("--mode", default="gcc", choices=["text", "pcc", "gcc"])
parser.add_argument("--max-tokens", type=int, default=120)
args = parser.parse_args()


class City(BaseModel):
    """A city and the country it lies in."""

    name: str = Field(max_length=20, description="the city's name")
    country: str = Field(max_length=20, description="its country")
    population_millions: int = Field(ge=0, le=40)


@tool
def get_weather(city: str, unit: str = "celsius") -> str:
    """The current weather in a city; unit is celsius or fahrenheit."""
    return f"18 degrees {unit}, sunny in {city}"


@tool
def get_time(zone: str) -> str:
    """The current time in a time zone such as Europe/Paris."""
    return f"12:00 in {zone}"


def main() -> int:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "vist2", "serve", "--preset", args.preset, "--port", str(port),
                               "--mode", args.mode, "--threads", "1"], stdout=subprocess.DEVNULL)
    failures = 0
    try:
        wait_healthy(f"http://127.0.0.1:{port}", 240, server)
        llm = ChatOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", model=args.preset,
                         max_tokens=args.max_tokens, temperature=0, max_retries=0)
        print(f"vist2 serve --preset {args.preset} --mode {args.mode}; langchain-openai, greedy, "
              f"max_tokens {args.max_tokens}\n")

        def check(title: str, run, ok) -> None:
            nonlocal failures
            started = time.perf_counter()
            try:
                result = run()
                passed = bool(ok(result))
            except Exception as error:  # a failure is reported, the other checks still run
                result, passed = f"{type(error).__name__}: {error}", False
            failures += not passed
            if isinstance(result, AIMessage):  # the fields that matter, not the whole metadata
                result = {"content": result.content, "tool_calls": result.tool_calls,
                          "finish_reason": result.response_metadata.get("finish_reason")}
            elif isinstance(result, dict) and "raw" in result:
                result = {"raw content": result["raw"].content, "parsing_error": repr(result["parsing_error"])}
            print(f"[{'ok' if passed else 'FAIL'}] {title} ({time.perf_counter() - started:.1f} s)\n    {result!r}\n")

        question = [HumanMessage("Which city is the capital of France? Answer with its name, country and population.")]
        for method in ("json_schema", "function_calling"):
            structured = llm.with_structured_output(City, method=method)
            check(f"with_structured_output(City, method={method!r})", lambda: structured.invoke(question),
                  lambda city: isinstance(city, City))
        # json_mode sends only {"type": "json_object"}: the server promises a JSON object, and the
        # schema reaches the model only if the prompt describes it (LangChain's documented contract).
        raw = llm.with_structured_output(City, method="json_mode", include_raw=True)
        check("with_structured_output(City, method='json_mode', include_raw=True): a JSON object",
              lambda: raw.invoke(question), lambda out: isinstance(json.loads(out["raw"].content), dict))
        ask = [HumanMessage("What is the weather in Paris?")]
        tools = [get_weather, get_time]
        for choice in ("required", "get_weather", "auto"):
            bound = llm.bind_tools(tools, tool_choice=choice)
            check(f"bind_tools(tool_choice={choice!r})", lambda: bound.invoke(ask),
                  lambda message: (message.tool_calls and all(c["name"] in ("get_weather", "get_time")
                                                              for c in message.tool_calls)
                                   and (choice != "get_weather" or message.tool_calls[0]["name"] == "get_weather"))
                  or (choice == "auto" and isinstance(message.content, str)))
        first = llm.bind_tools(tools, tool_choice="get_weather").invoke(ask)
        call = first.tool_calls[0] if first.tool_calls else None
        if call is not None:
            answer = ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])
            check("agent loop: the tool's result sent back, tool_choice='none'",
                  lambda: llm.bind_tools(tools, tool_choice="none").invoke(ask + [first, answer]),
                  lambda message: isinstance(message.content, str) and not message.tool_calls)
        else:
            failures += 1
            print("[FAIL] agent loop: no call to answer\n")
        print(json.dumps({"failures": failures}))
    finally:
        server.terminate()
        server.wait(timeout=60)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
