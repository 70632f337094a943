"""`vist2 serve`: flags, checks, model loading and uvicorn (imported only when it runs)."""

from __future__ import annotations

from vist2.errors import Vist2Error
from vist2.inputs import check_device, integer


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
    parser.add_argument("--max-queue", type=integer(0), default=64,
                        help="most requests waiting for a row; beyond it 429 with Retry-After (default 64)")
    parser.add_argument("--max-prompt-tokens", type=integer(1), default=8192,
                        help="longest prompt in tokens (default 8192)")
    parser.add_argument("--max-tokens", type=integer(1), default=2048,
                        help="most tokens a request may ask for (default 2048)")
    parser.add_argument("--default-max-tokens", type=integer(1), default=256,
                        help="tokens generated when a request names no max_tokens (default 256)")
    parser.add_argument("--shutdown-timeout", type=integer(0), default=10,
                        help="seconds SIGTERM waits for requests in flight before cancelling them (default 10)")
    parser.add_argument("--threads", type=integer(1), help="torch CPU threads (default: torch's choice)")
    parser.set_defaults(run=serve)


def serve(args) -> int:
    from pathlib import Path

    from vist2.flags import check_model_source, chunk_options_from
    from vist2.options import MODES

    if args.mode not in MODES:
        raise Vist2Error(f"--mode must be one of {', '.join(MODES)}, got {args.mode!r}")
    if args.default_max_tokens > args.max_tokens:
        raise Vist2Error(f"--default-max-tokens {args.default_max_tokens} is more than --max-tokens {args.max_tokens}")
    check_model_source(args)
    check_device(args.device)
    try:
        import uvicorn

        from vist2.serve.app import create_app
    except ImportError as error:
        raise Vist2Error(f"vist2 serve needs the serve extra: pip install 'vist2[serve]' ({error})") from None
    import torch

    from vist2.engine import Engine
    from vist2.generate import load_model
    from vist2.render import Renderer
    from vist2.serve.protocol import Limits

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, args.preset, args.seed, args.device, args.dtype)
    renderer = Renderer(model.config.render)
    options = chunk_options_from(args, model, renderer)
    engine = Engine(model, tokenizer, renderer, options, max_batch=args.max_batch)
    name = args.served_model_name or args.preset or Path(args.model).resolve().name

    limits = Limits(args.max_prompt_tokens, args.max_tokens, args.default_max_tokens)
    app = create_app(engine, tokenizer, renderer, name, args.mode, limits, args.max_queue)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                            timeout_graceful_shutdown=args.shutdown_timeout)
    server = _server_class()(config)
    print(f"vist2 serve: {name} on http://{args.host}:{args.port} (page at /, API at /v1)", flush=True)
    server.run()
    return 0


def _server_class():
    import contextlib
    import signal
    import threading

    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, but SIGTERM/SIGINT end it with status 0 after the graceful shutdown
        (uvicorn re-raises the signal, which kills the process with -15)."""

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
