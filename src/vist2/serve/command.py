"""`vist2 serve`: flags, checks, model loading and uvicorn (imported only when it runs)."""

from __future__ import annotations

import argparse
import math
import os

from vist2.errors import Vist2Error
from vist2.inputs import check_device, integer

PREFILL_CHUNK_TOKENS = 32  # measured on smollm2-135m: benchmarks/serve.md, "A long prompt joining running streams"


def number(low: float, high: float):
    """An argparse type: a number in [low, high] (NaN and infinities refused)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not low <= value <= high:  # NaN fails too
            raise argparse.ArgumentTypeError(f"must be a number in [{low:g}, {high:g}], got {text!r}")
        return value
    return parse


def _names(text: str) -> list[str]:
    """An argparse type: comma-separated names."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def add_serve(commands) -> None:
    from vist2.flags import add_chunk_flags, add_model_source

    parser = commands.add_parser("serve", help="serve the model over an OpenAI-compatible HTTP API, with a live page at /")
    add_model_source(parser)
    add_chunk_flags(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=integer(1, 65535), default=8000, help="TCP port (default 8000)")
    parser.add_argument("--mode", default="gcc", help="mode of requests that name none: gcc, pcc or text (default gcc)")
    parser.add_argument("--served-model-name", help="model name clients use (default: the preset or folder name)")
    parser.add_argument("--max-batch", type=integer(1), default=16, help="most requests decoded together (default 16)")
    parser.add_argument("--prefill-chunk-tokens", type=integer(0), default=PREFILL_CHUNK_TOKENS,
                        help="prompt positions prefilled per engine step, in the same forward as the running "
                             "streams' tokens, so a long prompt does not stall them; 0 = each prompt whole "
                             f"(default {PREFILL_CHUNK_TOKENS})")
    parser.add_argument("--max-queue", type=integer(0), default=64,
                        help="most requests waiting for a row; beyond it 429 with Retry-After (default 64)")
    parser.add_argument("--max-prompt-tokens", type=integer(1),
                        help="longest prompt in tokens (default: the backbone's context, max_position_embeddings)")
    parser.add_argument("--max-tokens", type=integer(1),
                        help="most tokens a request may ask for (default: what the context leaves)")
    parser.add_argument("--default-max-tokens", type=integer(1), default=256,
                        help="tokens generated when a request names no max_tokens, within the context (default 256)")
    parser.add_argument("--default-temperature", type=number(0, 2), default=1.0,
                        help="temperature of requests that name none (default 1, as OpenAI; 0 = greedy)")
    parser.add_argument("--shutdown-timeout", type=integer(0), default=10,
                        help="seconds SIGTERM waits for requests in flight; then their answers end with "
                        "finish_reason abort (default 10)")
    parser.add_argument("--threads", type=integer(1),
                        help="torch CPU threads (default: torch's own count minus one, left to the event loop, "
                             "at least 1; 1 on 2 cores, measured in benchmarks/serve.md)")
    parser.add_argument("--api-key", default=os.environ.get("VIST2_API_KEY"),
                        help="require 'Authorization: Bearer KEY' on every /v1 route (default: $VIST2_API_KEY; "
                        "none: open)")
    parser.add_argument("--allowed-hosts", type=_names,
                        help="comma-separated Host header names answered, * for any (default: the --host address, "
                        "localhost, 127.0.0.1, [::1]); others get 421, which stops DNS rebinding. With --host "
                        "0.0.0.0, name the addresses clients use")
    parser.add_argument("--allowed-origins", type=_names, default=[],
                        help="comma-separated web origins allowed to call the API from a browser (CORS); "
                        "default none (the page at / is same-origin)")
    parser.add_argument("--read-timeout", type=number(0.1, 3600), default=30.0,
                        help="seconds a client has to send its request headers, and then its body (default 30)")
    parser.set_defaults(run=serve)


def serve(args) -> int:
    from pathlib import Path

    from vist2.flags import check_model_source, chunk_options_from
    from vist2.options import MODES

    if args.mode not in MODES:
        raise Vist2Error(f"--mode must be one of {', '.join(MODES)}, got {args.mode!r}")
    if args.max_tokens is not None and args.default_max_tokens > args.max_tokens:
        raise Vist2Error(f"--default-max-tokens {args.default_max_tokens} is more than --max-tokens {args.max_tokens}")
    if args.api_key is not None and not args.api_key.strip():
        raise Vist2Error("--api-key (or VIST2_API_KEY) is empty; give a key or leave it unset")
    check_model_source(args)
    check_device(args.device)
    try:
        import uvicorn

        from vist2.serve.app import Access, create_app
        from vist2.serve.guard import default_hosts, timed_h11_protocol
    except ImportError as error:
        raise Vist2Error(f"vist2 serve needs the serve extra: pip install 'vist2[serve]' ({error})") from None
    listener = bind(args.host, args.port)  # a busy port or a bad address fails before the model loads
    import torch

    from vist2.engine import Engine
    from vist2.generate import load_model
    from vist2.render import Renderer

    torch.set_num_threads(args.threads or default_threads(torch.get_num_threads()))
    model, tokenizer = load_model(args.model, args.preset, args.seed, args.device, args.dtype)
    renderer = Renderer(model.config.render)
    options = chunk_options_from(args, model, renderer)
    engine = Engine(model, tokenizer, renderer, options, max_batch=args.max_batch,
                    prefill_tokens=args.prefill_chunk_tokens or None)
    name = args.served_model_name or args.preset or Path(args.model).resolve().name
    limits = server_limits(model, tokenizer, args.max_prompt_tokens, args.max_tokens, args.default_max_tokens,
                           args.default_temperature)
    access = Access(args.allowed_hosts or default_hosts(args.host), args.allowed_origins, args.api_key,
                    args.read_timeout)
    fingerprint = system_fingerprint(name, model, options)
    app = create_app(engine, tokenizer, renderer, name, args.mode, limits, args.max_queue, access, fingerprint)
    config = uvicorn.Config(app, log_level="warning", http=timed_h11_protocol(args.read_timeout),
                            timeout_graceful_shutdown=args.shutdown_timeout + 5)
    server = _server_class()(config, lambda: app.state.worker.abort_after(args.shutdown_timeout))
    print(f"vist2 serve: {name} on http://{args.host}:{args.port} (page at /, API at /v1)", flush=True)
    server.run(sockets=[listener])
    return 0


def bind(host: str, port: int):
    """A socket bound to (host, port), or a one-line error naming the flag."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as error:
        raise Vist2Error(f"--host {host!r}: not an address this machine can listen on ({error})") from None
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(address)
    except OSError as error:
        listener.close()
        flag = "--port" if error.errno == 98 else "--host"  # EADDRINUSE
        raise Vist2Error(f"{flag}: cannot listen on {host}:{port}: {error.strerror}") from None
    return listener


def server_limits(model, tokenizer, max_prompt_tokens, max_tokens, default_max_tokens, default_temperature):
    """The request bounds: the context is the backbone's max_position_embeddings."""
    from vist2.serve.protocol import Limits

    context = getattr(model.llm.config, "max_position_embeddings", None) or 2**31 - 1
    max_prompt_tokens = min(max_prompt_tokens or context, context)
    longest = max(len(token) for token in tokenizer.get_vocab())  # characters one token can stand for, at most
    return Limits(context, max_prompt_tokens, min(max_tokens or context, context), default_max_tokens,
                  max_prompt_tokens * longest, default_temperature)


def system_fingerprint(name: str, model, options) -> str:
    """Changes whenever the weights' source, dtype or chunk options change (OpenAI's system_fingerprint)."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("vist2")
    except PackageNotFoundError:
        release = "dev"
    described = repr((name, release, model.config.preset, str(model.dtype), options))
    return "fp_" + hashlib.sha256(described.encode()).hexdigest()[:10]


def default_threads(torch_threads: int) -> int:
    """torch threads when --threads is not given: one core left to the event loop, HTTP and
    tokenization (more threads than free cores spin against them: benchmarks/serve.md)."""
    return max(1, torch_threads - 1)


def _server_class():
    import contextlib
    import signal
    import threading

    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, but SIGTERM/SIGINT call `on_exit` (the worker's abort timer) and end
        it with status 0 after the graceful shutdown (uvicorn re-raises the signal, which kills
        the process with -15)."""

        def __init__(self, config, on_exit):
            super().__init__(config)
            self.on_exit = on_exit

        def handle_exit(self, sig, frame):
            if not self.should_exit:
                self.on_exit()
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return Server
