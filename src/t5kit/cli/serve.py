"""``t5kit serve``: the HTTP API, dynamic batching and the playground, on uvicorn."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from t5kit.generate.continuous import DEFAULT_MAX_ENCODER_TOKENS
from t5kit.kernels.inference.precision import add_precision_argument

EPILOG = """\
example:
  t5kit serve --model path/to/checkpoint --port 8000
  curl -s localhost:8000/v1/generate -H 'content-type: application/json' \\
       -d '{"inputs": "The house is wonderful.", "task": "translate_en_de"}'

Open http://127.0.0.1:8000/ for the playground, /docs for the API reference, /metrics for
Prometheus. With --batching continuous (the default) a request joins the running batch at the next
decoding step and leaves it the moment it ends, up to --max-batch-size rows and --max-encoder-tokens
source tokens let in per step; --batching static decodes requests arriving within --batch-wait-ms of
each other together, to the end of the batch; --no-batching decodes one input at a time. Over
--max-queue-rows rows waiting, requests are answered 503 with Retry-After.
"""


class BatcherNames:
    """The keys of ``t5kit.serve.app.BATCHERS``, read only when argparse checks or shows them: that module
    imports fastapi, which the other commands (and ``t5kit --help``) neither need nor should pay for. Without
    the serve extra any name passes here, and ``t5kit serve`` then says the extra is missing."""

    def _names(self) -> tuple[str, ...] | None:
        try:
            from t5kit.serve.app import BATCHERS
        except ImportError:
            return None
        return tuple(BATCHERS)

    def __iter__(self):  # noqa: ANN204
        return iter(self._names() or ())

    def __contains__(self, name: object) -> bool:
        names = self._names()
        return names is None or name in names



def _default_model() -> str | None:
    """The built-in model's directory when ``t5kit.builtin`` is installed, else None."""
    try:
        import t5kit.builtin as builtin  # type: ignore[import-not-found]
    except ImportError:
        return None
    for name in ("model_path", "model_dir", "path"):
        value = getattr(builtin, name, None)
        if callable(value):
            value = value()
        if value:
            return str(value)
    for name in ("MODEL_DIR", "DIRECTORY", "PATH"):
        if getattr(builtin, name, None):
            return str(getattr(builtin, name))
    return None


def make_app(args: argparse.Namespace) -> Any:
    """The app ``t5kit serve`` runs, from its parsed arguments (the model is loaded here)."""
    import torch

    from t5kit.errors import T5kitError
    from t5kit.serve import Engine, Limits, create_app

    if args.threads:
        torch.set_num_threads(args.threads)
    model = args.model or _default_model()
    if model is None:
        raise T5kitError(
            "no model given and no built-in model installed; pass --model DIR (a checkpoint "
            "directory with config.json, weights and spiece.model) or a hub id"
        )
    limits = Limits(
        max_input_tokens=args.max_input_tokens,
        max_new_tokens=args.max_new_tokens,
        default_max_new_tokens=min(args.default_max_new_tokens, args.max_new_tokens),
        max_inputs_per_request=args.max_inputs_per_request,
        max_body_bytes=args.max_body_bytes,
        request_timeout_s=args.request_timeout,
        max_num_beams=args.max_num_beams,
        max_queue_rows=args.max_queue_rows,
        max_choices=args.max_choices,
    )
    for name, value in vars(limits).items():
        if value <= 0:
            raise T5kitError(f"--{name.replace('_', '-')} must be positive, got {value}")
    from t5kit.adapters.multi import parse_adapter_specs

    adapters = parse_adapter_specs(args.adapter or [])
    engine = Engine.load(model, dtype=args.dtype, name=args.name, precision=args.precision, adapters=adapters)
    max_batch = 1 if args.no_batching else args.max_batch_size
    chosen = {"batching": args.batching} if args.batching else {}  # else create_app's default
    if args.no_batching:  # one input at a time: the static batcher with batches of one
        chosen = {"batching": "static"}
    if args.max_encoder_tokens < 1:
        raise T5kitError(f"--max-encoder-tokens must be positive, got {args.max_encoder_tokens}")
    chosen["max_encoder_tokens"] = args.max_encoder_tokens
    return create_app(engine, limits, max_batch_size=max_batch, batch_wait_ms=args.batch_wait_ms, **chosen)


def _serve(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401  # optional: serve
        import prometheus_client  # noqa: F401  # optional: serve
        import uvicorn  # optional: serve
    except ImportError as err:  # only the serve extra's own packages: a loading error is reported as itself
        print(
            f"t5kit serve: error: {err.name} is missing; install the serve extra: pip install 't5kit[serve]'",
            file=sys.stderr,
        )
        return 1
    app = make_app(args)
    engine, batcher, limits = app.state.engine, app.state.batcher, app.state.limits
    max_batch = batcher.max_batch_size
    if app.state.batching == "continuous":
        window = f"joining every step, {args.max_encoder_tokens} source tokens let in per step"
    else:
        window = f"{args.batch_wait_ms:g} ms window"
    batching = "off" if max_batch == 1 else f"{app.state.batching}, up to {max_batch} rows, {window}"
    print(
        f"t5kit serve: {engine.name} ({engine.model.num_parameters() / 1e6:.1f}M parameters"
        f"{', ' + engine.precision if engine.precision else ''}"
        f"{', adapters ' + ', '.join(engine.adapters.names) if engine.adapters else ''}), batching "
        f"{batching}; playground http://{args.host}:{args.port}/",
        file=sys.stderr,
        flush=True,
    )
    if engine.model.device.type == "cpu":  # which GEMM kernel each layer runs here (timed now unless cached)
        from t5kit.kernels.inference.linear import summary

        print(summary(engine.model), file=sys.stderr, flush=True)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=int(limits.request_timeout_s) + 5,
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a model over HTTP (API, batching, playground)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model", help="checkpoint directory or hub id (default: the built-in model, if installed)"
    )
    p.add_argument("--name", help="model name reported by the API (default: the directory name)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16"], help="weights dtype (default: as saved)"
    )
    add_precision_argument(p, default=None)
    p.add_argument("--adapter", action="append", metavar="NAME=DIR",
                   help="a LoRA adapter (peft's layout) over --model, held unmerged; repeat for several. A request "
                        "picks one with \"adapter\": NAME, and rows of different adapters share a decoding step. "
                        "A bare DIR is named by its last path part")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    g = p.add_argument_group("batching")
    g.add_argument(
        "--batching",
        choices=BatcherNames(),
        metavar="MODE",
        help="how rows are batched: %(choices)s (default: the server's; GET /v1/models says which)",
    )
    g.add_argument(
        "--max-batch-size", type=int, default=32, help="rows decoded together at most (default 32)"
    )
    g.add_argument(
        "--batch-wait-ms",
        type=float,
        default=5.0,
        help="static batching: how long the oldest waiting request waits for company (default 5)",
    )
    g.add_argument(
        "--max-encoder-tokens",
        type=int,
        default=DEFAULT_MAX_ENCODER_TOKENS,
        help="continuous batching: source tokens whose encoder pass may run before one decoding step, so a "
        f"burst of long prompts does not stall the rows decoding (default {DEFAULT_MAX_ENCODER_TOKENS}; the "
        "first request of a step always joins)",
    )
    g.add_argument("--no-batching", action="store_true", help="decode one input at a time (max batch size 1)")
    g = p.add_argument_group("limits (violations are answered 4xx with the limit's name and value)")
    g.add_argument("--max-input-tokens", type=int, default=512, help="per input, with prefix and EOS (512)")
    g.add_argument("--max-new-tokens", type=int, default=256, help="the most a request may ask for (256)")
    g.add_argument("--default-max-new-tokens", type=int, default=64, help="when a request does not say (64)")
    g.add_argument("--max-inputs-per-request", type=int, default=32, help="texts in one request (32)")
    g.add_argument("--max-body-bytes", type=int, default=1_000_000, help="request body size (1000000)")
    g.add_argument("--request-timeout", type=float, default=60.0, help="seconds per request (60)")
    g.add_argument("--max-num-beams", type=int, default=16, help="beams one request may ask for (16)")
    g.add_argument("--max-queue-rows", type=int, default=256, help="rows waiting; over it 503 + Retry-After (256)")
    g.add_argument("--max-choices", type=int, default=64, help="POST /v1/score: candidates per input (64)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=_serve)
