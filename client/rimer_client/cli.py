"""`rimer`: forecasts from CSV files against a server (or the shipped model in-process), and the
project's server and training tools under one command."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

# ---------------------------------------------------------------------------------------------
# What `rimer` runs from the Rimer project checkout (the server and the training tools are not
# part of rimer-client). Module moves (model.train -> training.train, ...) change this table only.
PROJECT_MODULES = {
    "serve": "service",  # python -m service: the HTTP server
    "train": "training.train",  # train a model on the benchmark datasets
    "pretrain": "training.pretrain",  # pretrain the general model (the default's recipe)
    "evaluate": "training.evaluate",  # the long-term forecasting protocol on the test splits
    "export": "model.onnx_network",  # export a checkpoint's network to ONNX for the onnx backend
}
APP_FACTORY = ("service.app", "create_app")  # create_app(settings) -> the FastAPI app
APP_SETTINGS = ("service.settings", "Settings")  # Settings(weights=..., device=...)
PROJECT_MARKER = "service/__main__.py"  # how a directory is recognised as the checkout
# ---------------------------------------------------------------------------------------------


PROG = "rimer"
TOOL_HELP = {  # (the module names come from PROJECT_MODULES)
    "serve": "run the forecasting server",
    "train": "train a model on the benchmark datasets",
    "pretrain": "pretrain a general model",
    "evaluate": "evaluate a model on the benchmark protocol",
    "export": "export a checkpoint's network to ONNX (the onnx backend's graphs)",
}
CHECKOUT_NOTE = ("It runs `python -m {module}` of the Rimer project, so it works only from the "
                 "project checkout (found in RIMER_PROJECT, the current directory or one above "
                 "it, or above this client's source when it runs from the checkout), with the "
                 "checkout's .venv/bin/python when there is one (else RIMER_PYTHON, else this "
                 "Python). The arguments after the command are passed on unchanged, so "
                 "`rimer {cmd} --help` ends with the module's own help.")


class CliError(Exception):
    """A mistake to report in one line (exit status 2)."""


def find_project(explicit: str | None = None) -> Path:
    """The Rimer project checkout: RIMER_PROJECT, else the current directory or one above it,
    else the checkout holding this client's source."""
    candidates = []
    if explicit or os.environ.get("RIMER_PROJECT"):
        candidates.append(Path(explicit or os.environ["RIMER_PROJECT"]))
    cwd = Path.cwd().resolve()
    candidates += [cwd, *cwd.parents]
    here = Path(__file__).resolve()
    candidates += list(here.parents)
    for c in candidates:
        if (c / PROJECT_MARKER).is_file():
            return c
    raise CliError("this needs the Rimer project checkout (the server and training tools are not "
                   "part of rimer-client): run it from the checkout or set RIMER_PROJECT")


def project_python(root: Path) -> str:
    """The interpreter for the project's modules: RIMER_PYTHON, else the checkout's .venv (the
    README's setup), else this one."""
    if os.environ.get("RIMER_PYTHON"):
        return os.environ["RIMER_PYTHON"]
    for candidate in (root / ".venv" / "bin" / "python", root / ".venv" / "Scripts" / "python.exe"):
        if candidate.is_file():
            return str(candidate)
    return sys.executable


def run_module(cmd: str, args: list[str]) -> int:
    """`python -m <module> args` of the project; its exit status."""
    module = PROJECT_MODULES[cmd]
    asks_help = any(a in ("-h", "--help") for a in args)
    if asks_help:
        print(f"usage: {PROG} {cmd} [ARGS...]\n\n{TOOL_HELP[cmd]} (python -m {module}).\n"
              + CHECKOUT_NOTE.format(module=module, cmd=cmd) + "\n")
        sys.stdout.flush()
    try:
        root = find_project()
    except CliError as exc:
        if asks_help:  # the help was asked for and given; say why the module's is missing
            print(f"(no project checkout found, so not python -m {module}'s own help: {exc})")
            return 0
        raise
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.Popen([project_python(root), "-m", module, *args], env=env)
    previous = signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:  # the child got the terminal's SIGINT too: let it finish
                continue
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def in_process(weights: str | None, device: str, progress: bool, **client_kwargs):
    """A Client of the service's app run in this process (fastapi's TestClient): the shipped
    weights (or `weights`) on `device`, no network. Imported lazily: rimer-client does not
    depend on the server."""
    root = find_project()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        create_app = getattr(importlib.import_module(APP_FACTORY[0]), APP_FACTORY[1])
        settings_cls = getattr(importlib.import_module(APP_SETTINGS[0]), APP_SETTINGS[1])
        with warnings.catch_warnings():  # starlette's notice about httpx, not for our users
            warnings.filterwarnings("ignore", message="Using `httpx`")
            from fastapi.testclient import TestClient
    except ImportError as exc:
        raise CliError(f"the in-process server needs the service's requirements "
                       f"(pip install -r requirements.txt in {root}): {exc}") from None
    from rimer_client import Client

    settings = settings_cls(device=device, **({"weights": weights} if weights else {}))
    if progress:
        print(f"{PROG}: loading {Path(settings.weights).name} in-process on {device} "
              "(no --url given)", file=sys.stderr)
    with TestClient(create_app(settings), raise_server_exceptions=False) as http:
        yield Client("http://testserver", http_client=http, **client_kwargs)


@contextlib.contextmanager
def connect(args, need_url: bool = False):
    from rimer_client import Client

    kwargs = {"max_series_per_request": args.max_series_per_request,
              "max_points_per_request": args.max_points_per_request}
    if args.url:
        with Client(args.url, api_key=args.api_key, timeout=args.timeout, retries=args.retries,
                    **kwargs) as client:
            yield client
    elif need_url:
        raise CliError(f"{args.cmd} needs a server: pass --url (or set RIMER_URL)")
    else:
        with in_process(args.weights, args.device, args.progress, **kwargs) as client:
            yield client


def read_input(args):
    from rimer_client.csvio import read_series

    try:
        df, fmt = read_series(args.csv, args.format, args.id_col, args.time_col, args.target_col)
    except FileNotFoundError:
        raise CliError(f"no such file: {args.csv}") from None
    except ValueError as exc:
        raise CliError(f"{args.csv}: {exc}") from None
    if args.progress:
        n = df[args.id_col].nunique()
        print(f"{PROG}: read {len(df)} rows of {n} series ({fmt} CSV) from {args.csv}",
              file=sys.stderr)
    return df


def write_output(fc, args) -> None:
    if args.out:
        fc.to_csv(args.out, index=False)
        if args.progress:
            print(f"{PROG}: wrote {len(fc)} rows to {args.out}", file=sys.stderr)
    else:
        fc.to_csv(sys.stdout, index=False)


def cmd_forecast(args) -> int:
    df = read_input(args)
    with connect(args) as client:
        fc = client.forecast(df, args.h, level=args.level, quantiles=args.quantiles,
                             freq=parse_freq(args.freq), id_col=args.id_col,
                             time_col=args.time_col, target_col=args.target_col,
                             missing=args.missing, progress=args.progress)
    write_output(fc, args)  # (its columns already under --id-col and --time-col)
    if args.plot:
        from rimer_client.plotting import plot
        plot(df, fc, path=args.plot, max_series=args.plot_series, id_col=args.id_col,
             time_col=args.time_col, target_col=args.target_col)
        if args.progress:
            print(f"{PROG}: plotted to {args.plot}", file=sys.stderr)
    return 0


def cmd_append(args) -> int:
    if not args.url:  # (before reading a large CSV)
        raise CliError("append needs a server: pass --url (or set RIMER_URL)")
    df = read_input(args)
    with connect(args, need_url=True) as client:
        out = client.append(df, h=args.h, level=args.level, quantiles=args.quantiles,
                            freq=parse_freq(args.freq), id_col=args.id_col,
                            time_col=args.time_col, target_col=args.target_col,
                            timestamps=False if args.no_timestamps else "auto",
                            missing=args.missing, progress=args.progress)
    write_output(out, args)
    return 0


def cmd_models(args) -> int:
    with connect(args) as client:
        models = client.models()
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    for m in models:
        cfg = m.get("config", {})
        print(f"{m['name']}  device={m.get('device')}  streamable={m.get('streamable')}  "
              f"patch_len={cfg.get('patch_len')}  d_model={cfg.get('d_model')}  "
              f"quantiles={len(cfg.get('quantiles') or [])}")
    return 0


# The library's arguments, as its messages name them, and the flags that set them here.
CLI_TERMS = (("timestamps=False", "--no-timestamps"), ("missing='ffill'", "--missing ffill"),
             ("forecast()", "`rimer forecast`"), ("pass freq=", "pass --freq"))


def in_cli_terms(message: str) -> str:
    """A client library message with its argument names as this command's flags."""
    for library, flag in CLI_TERMS:
        message = message.replace(library, flag)
    return message


def parse_freq(text: str | None):
    if text is None:
        return None
    return int(text) if text.isdigit() else text


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_server_flags(p: argparse.ArgumentParser, url_help: str, in_process: bool = True) -> None:
    g = p.add_argument_group("server")
    g.add_argument("--url", default=os.environ.get("RIMER_URL"), help=url_help)
    g.add_argument("--api-key", default=os.environ.get("RIMER_API_KEY"),
                   help="API key (env RIMER_API_KEY; prefer it to the flag, which shows in ps)")
    g.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    g.add_argument("--retries", type=int, default=3,
                   help="retries on connection errors, 429 and 503 (default 3; client/README.md has "
                        "the rules)")
    g.add_argument("--max-series-per-request", type=positive_int, default=1024,
                   help="series per request (default 1024, the server's default limit)")
    g.add_argument("--max-points-per-request", type=positive_int, default=1_000_000,
                   help="values per request (default 1,000,000)")
    if in_process:
        g.add_argument("--weights", default=None,
                       help="in-process only (no --url): the weights to load (default: the "
                            "project's default model)")
        g.add_argument("--device", default="cpu", help="in-process only: cpu or cuda (default cpu)")


def add_input_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("csv", help="a long CSV (unique_id, ds, y) or a wide one (a time column, then "
                               "one column per series); detected from the columns")
    g = p.add_argument_group("input")
    g.add_argument("--format", choices=("auto", "long", "wide"), default="auto",
                   help="the CSV's layout (default auto: long when it has the id and target "
                        "columns)")
    g.add_argument("--id-col", default="unique_id", help="series id column (long CSV)")
    g.add_argument("--time-col", default="ds",
                   help="time column (a wide CSV without it uses its first column)")
    g.add_argument("--target-col", default="y", help="value column (long CSV)")
    g.add_argument("--freq", default=None,
                   help="the series' frequency as a pandas alias ('h', '15min', 'D', 'MS') or "
                        "seconds; default: inferred from the times (append: fixed steps or "
                        "business days 'B', not 'MS')")
    g.add_argument("--missing", choices=("error", "ffill"), default="error",
                   help="empty values and missing rows: an error (default), or sent as missing "
                        "points the server fills with the last value before them")


def add_output_flags(p: argparse.ArgumentParser, h_required: bool) -> None:
    g = p.add_argument_group("forecast")
    g.add_argument("--h", "--horizon", dest="h", type=positive_int, required=h_required,
                   help="points to forecast" + ("" if h_required else " after the append"))
    g.add_argument("--level", type=float, nargs="+", default=None, metavar="L",
                   help="prediction intervals at these levels (percent): --level 80 95")
    g.add_argument("--quantiles", type=float, nargs="+", default=None, metavar="Q",
                   help="these quantiles: --quantiles 0.1 0.5 0.9")
    g.add_argument("--out", default=None, help="write the CSV here (default: standard output)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="progress bars (on a terminal) and notes on standard error (default on)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=PROG, description="Forecast CSV files with a Rimer server or the shipped model "
        "in-process, and run the project's server and training tools.",
        epilog="examples:\n"
               "  rimer forecast data.csv --h 96 --level 80 95 --out fc.csv --plot fc.png\n"
               "  rimer forecast data.csv --h 24 --url http://127.0.0.1:8000\n"
               "  rimer append new_rows.csv --url http://127.0.0.1:8000 --h 24\n"
               "  rimer models --url http://127.0.0.1:8000\n"
               "  rimer serve --device cpu --port 8000     (from the project checkout)\n"
               "`rimer <command> --help` describes each command.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", metavar="command")

    p = sub.add_parser("forecast", help="forecast every series of a CSV",
                       description="Forecast every series of a CSV and write the forecasts as a "
                       "CSV (unique_id, ds, Rimer, Rimer-lo-80, Rimer-hi-80, ...). Against a "
                       "server with --url; without it, in-process with the project's shipped "
                       "weights (needs the project checkout and the service's requirements).")
    add_input_flags(p)
    add_output_flags(p, h_required=True)
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="also draw history, forecast and intervals to this PNG (needs matplotlib)")
    p.add_argument("--plot-series", type=positive_int, default=8,
                   help="series drawn with --plot (the first N; default 8)")
    add_server_flags(p, "the server (env RIMER_URL); none: the model in-process")
    p.set_defaults(run=cmd_forecast)

    p = sub.add_parser("append", help="append a CSV's rows to streaming series on a server",
                       description="Append a CSV's rows to streaming series on a server "
                       "(POST /series/append in batches; datetime times are sent as timestamps). "
                       "Writes each series' length, or with --h the forecast after the append.")
    add_input_flags(p)
    add_output_flags(p, h_required=False)
    p.add_argument("--no-timestamps", action="store_true",
                   help="send values only (the series' next points), not the CSV's times")
    add_server_flags(p, "the server (required; env RIMER_URL)", in_process=False)
    p.set_defaults(run=cmd_append)

    p = sub.add_parser("models", help="the models a server serves",
                       description="The models a server serves (GET /models); without --url, "
                       "the project's default model in-process.")
    p.add_argument("--json", action="store_true", help="the whole answer as JSON")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False,
                   help=argparse.SUPPRESS)
    add_server_flags(p, "the server (env RIMER_URL); none: the model in-process")
    p.set_defaults(run=cmd_models)

    for cmd, module in PROJECT_MODULES.items():
        sub.add_parser(cmd, help=f"{TOOL_HELP[cmd]}: python -m {module} (project checkout only)",
                       description=CHECKOUT_NOTE.format(module=module, cmd=cmd), add_help=False)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = None
    try:
        if argv and argv[0] in PROJECT_MODULES:  # passed on whole, --help included
            return run_module(argv[0], argv[1:])
        ap = parser()
        args = ap.parse_args(argv)
        if args.cmd is None:
            ap.print_help()
            return 2
        return args.run(args)
    except CliError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # the frame's mistakes (gaps, duplicates, short series...)
        print(f"{PROG}: error: {in_cli_terms(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from rimer_client.errors import RimerError
        if isinstance(exc, RimerError):
            where = f" [series {exc.series_id!r}]" if exc.series_id is not None else ""
            field = f" (field {exc.field})" if exc.field else ""
            local = args is not None and not getattr(args, "url", True)  # (the model
            # in-process: its own server, not one the user named)
            said = (f"refused ({exc.status})" if local else
                    f"the server answered {exc.status}" if exc.status else "no answer from the server")
            print(f"{PROG}: error: {said}: {exc.detail}{field}{where}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
