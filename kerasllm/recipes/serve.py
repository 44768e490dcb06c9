"""Serve a run over HTTP with OpenAI's API (completions, chat, streaming) and a playground page.

    python -m kerasllm.recipes.serve --model RUN_DIR [--host 127.0.0.1] [--port 8000]
        [--api-key KEY | $KERASLLM_API_KEY] [--max-batch N] [--max-new-tokens N] [--set key=value ...]

A language model answers `/v1/completions` and `/v1/chat/completions`, a fine-tuned
classifier `/v1/classify`; both answer `/v1/models`, `/health` and the playground at `/`.
Needs the `serve` extra (`pip install "kerasllm[serve]"`). Stops cleanly on Ctrl-C or SIGTERM.
"""

import argparse
import os
import signal
import socket

from kerasllm.errors import ConfigError
from kerasllm.recipes.cli import run_cli


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m kerasllm.recipes.serve",
        description="Serve a run directory over HTTP with an OpenAI-compatible API.",
    )
    parser.add_argument("--model", required=True, help="run directory (pretrained language model or fine-tuned run)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    parser.add_argument("--api-key", default=os.environ.get("KERASLLM_API_KEY"),
                        help="require 'Authorization: Bearer KEY' on /v1 (default: $KERASLLM_API_KEY; none: open)")
    parser.add_argument("--name", default=None, help="model id clients send (default: the run directory's name)")
    parser.add_argument("--max-batch", type=int, default=8, help="requests decoded together (default 8)")
    parser.add_argument("--max-queue", type=int, default=64,
                        help="sequences queued or running before requests get 429 (default 64)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="cap on max_tokens (default export.max_new_tokens, 256; a GPT's is also block_size - 1)")
    parser.add_argument("--chunk-tokens", type=int, default=16,
                        help="while a request streams: tokens per decoding call between chunks (default 16)")
    parser.add_argument("--batch-window-ms", type=float, default=20.0,
                        help="how long a new batch waits at most for as many requests as the last one had, "
                        "besides those that came while it ran "
                        "(default 20; 0: decode whatever has arrived)")
    parser.add_argument("--warm-up", action="store_true",
                        help="compile the decoding loop before serving, for greedy requests and the run's sample "
                        "settings (sample.temperature, sample.top_k); other settings compile on first use")
    parser.add_argument("--max-body-kb", type=int, default=1024, help="larger request bodies get 413 (default 1024)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a run config value, e.g. --set export.truncate=error (repeatable)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    for flag in ("max_batch", "max_queue", "chunk_tokens", "max_body_kb"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected a positive integer")
    if not 0 <= args.batch_window_ms <= 1000:
        raise ConfigError(f"--batch-window-ms {args.batch_window_ms}: expected 0..1000 milliseconds")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: expected 0..65535")
    overrides = list(args.overrides)
    if args.max_new_tokens is not None:
        overrides.append(f"export.max_new_tokens={args.max_new_tokens}")
    try:
        import uvicorn

        from kerasllm.serving.app import create_app
    except ImportError as error:
        raise ConfigError(f"serving needs the serve extra ({error.name} is missing): pip install 'kerasllm[serve]'")
    from kerasllm.serving import ServedModel

    served = ServedModel.load(args.model, overrides, name=args.name)
    sock = _bind(args.host, args.port)
    app = create_app(served, api_key=args.api_key, max_batch=args.max_batch, max_queue=args.max_queue,
                     chunk_tokens=args.chunk_tokens, max_body_bytes=args.max_body_kb * 1024,
                     batch_window_s=args.batch_window_ms / 1000)
    if args.warm_up and served.kind == "language_model":
        _warm_up(app.state.server.scheduler, served)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {served.name!r} ({served.kind.replace('_', ' ')}) at http://{shown}:{port}  "
          f"(API: http://{shown}:{port}/v1, playground: http://{shown}:{port}/)"
          + ("; API key required" if args.api_key else ""), flush=True)
    # uvicorn handles SIGINT/SIGTERM: it stops accepting, lets in-flight requests finish (up to
    # the timeout), then runs the app's shutdown, which ends the decoding thread.
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=30)
    for number in (signal.SIGINT, signal.SIGTERM):  # uvicorn re-raises the signal once it is done
        signal.signal(number, _exit_cleanly)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        print("server stopped", flush=True)


def _warm_up(scheduler, served):
    import time

    from kerasllm.serving import Sampling

    started, stop_ids = time.perf_counter(), (int(served.tokenizer.eos_id),)
    # The settings are inputs of the compiled loop: one pass covers greedy and sampling.
    shapes = scheduler.warm_up(Sampling(float(served.config.sample.temperature), int(served.config.sample.top_k),
                                        1.0, None, stop_ids))
    print(f"compiled the decoding loop for {shapes} shapes in {time.perf_counter() - started:.0f} s", flush=True)


def _exit_cleanly(signum, frame):
    raise SystemExit(0)


def _bind(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ConfigError(f"--host {host} --port {port}: cannot bind ({error.strerror})")
    sock.listen(128)
    return sock


if __name__ == "__main__":
    run_cli(main)
