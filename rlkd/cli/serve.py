"""``rlkd serve``: the RLKD reward of a GRPO recipe over HTTP (:mod:`rlkd.serve`), for verl and OpenRLHF.

The options become a recipe (:func:`rlkd.serve.load_serve_job`) and :class:`rlkd.serve.ServeOptions`
(whose defaults they show); the bind address is checked here, before anything loads.
"""

from __future__ import annotations

import argparse
import logging
import os

from rlkd.cli.options import CliError
from rlkd.config import ConfigError, GRPOJob
from rlkd.recipes import fields_help
from rlkd.serve import DEFAULT_PORT, TOKEN_ENV, RewardScorer, ServeOptions, build_app, is_loopback, load_serve_job

log = logging.getLogger("rlkd.serve")


def cmd_serve(args: argparse.Namespace) -> int:
    """``rlkd serve``: check the recipe and the bind address, build the reward, serve until stopped."""
    import uvicorn

    token = os.environ.get(args.token_env) or None
    if not is_loopback(args.host) and not token:
        raise CliError(f"refusing to serve on {args.host} without a token: anyone who can reach it could use "
                       f"your GSRM. Set the environment variable {args.token_env} (clients send it as "
                       "'Authorization: Bearer TOKEN' or '?token=TOKEN'), or bind 127.0.0.1")
    job = load_serve_job(args.config, args.set)
    try:
        scorer = RewardScorer.from_job(job, stop_on_failures=False, log_every=args.log_every)
        app = build_app(scorer, ServeOptions(token=token, max_batch=args.max_batch, batch_wait=args.batch_wait,
                                             concurrency=args.concurrency, max_pending=args.max_pending,
                                             scores=args.scores))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    log.info("rlkd serve: %d records of %s; rewards %s; listening on http://%s:%d (POST /get_reward for "
             "OpenRLHF, POST /v1/score, GET /health)%s", len(scorer.records), job.data.path,
             ", ".join(f"{n} {w:g}" for n, w in scorer.weights.items()), args.host, args.port,
             ", token required" if token else "")
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                           timeout_graceful_shutdown=args.shutdown_timeout))
    server.run()
    return 0


def add_parser(subparsers) -> None:
    """Register ``rlkd serve``."""
    p = subparsers.add_parser(
        "serve", help="serve the RLKD reward over HTTP (OpenRLHF's /get_reward, a JSON API) for verl and OpenRLHF",
        description="Serve the whole RLKD reward of a GRPO recipe (accuracy, format, tag_count, structure with "
        "its GSRM and judges) over HTTP: POST /get_reward speaks OpenRLHF's remote reward protocol, POST "
        "/v1/score is a JSON API (rlkd.integrations.verl uses it), GET /health reports counters. The recipe's "
        "model and training sections are not used; its output_dir receives metrics.jsonl and the structure "
        "sample log. Stop with Ctrl-C or SIGTERM: requests in flight are answered first (up to "
        "--shutdown-timeout), then the process ends by that signal.",
        epilog=fields_help(GRPOJob), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="RECIPE.yaml", required=True,
                   help="GRPO recipe (data, rewards, structure), e.g. configs/openrlhf/rlkd_reward.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one recipe field, e.g. --set structure.gsrm.concurrency=64 (repeatable)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default %(default)s; any other address needs a token)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to bind (default %(default)s)")
    p.add_argument("--token-env", default=TOKEN_ENV, metavar="NAME",
                   help="environment variable holding the access token (default %(default)s); when set, "
                        "requests must carry it")
    p.add_argument("--max-batch", type=int, default=ServeOptions.max_batch,
                   help="most completions scored in one batch (default %(default)s)")
    p.add_argument("--batch-wait", type=float, default=ServeOptions.batch_wait, metavar="SECONDS",
                   help="how long a batch waits for more completions after its first (default %(default)s)")
    p.add_argument("--concurrency", type=int, default=ServeOptions.concurrency,
                   help="batches scored at once (default %(default)s); the GSRM backend's own concurrency "
                        "(structure.gsrm.concurrency) bounds its requests in flight. With a structure.gsrm."
                        "local_model, 1 avoids two generate calls sharing the CPU/GPU")
    p.add_argument("--max-pending", type=int, default=ServeOptions.max_pending,
                   help="completions waiting or being scored beyond which requests get HTTP 503 with "
                        "Retry-After (default %(default)s)")
    p.add_argument("--scores", choices=("reward", "accuracy"), default=ServeOptions.scores,
                   help="what /get_reward's 'scores' (OpenRLHF's dynamic filtering) carries: the reward "
                        "(default) or the 0/1 accuracy")
    p.add_argument("--log-every", type=int, default=10, metavar="BATCHES",
                   help="log the reward components and append to metrics.jsonl every this many batches "
                        "(default %(default)s)")
    p.add_argument("--shutdown-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="on Ctrl-C/SIGTERM, how long requests in flight may take to finish (default %(default)s)")
    p.set_defaults(func=cmd_serve)
