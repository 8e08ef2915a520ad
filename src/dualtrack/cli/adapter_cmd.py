"""``dualtrack adapter``: PromQL → strategy rules → preferences file, every interval.

Every setting can come from (highest first) the command line, an
environment variable ``DUALTRACK_<SETTING>`` (e.g.
``DUALTRACK_PROMETHEUS_URL``), a YAML file given with ``--config``, or the
default. Credentials come only from files or the environment, never from
the command line (it shows in ``ps``): ``--bearer-token-file`` or
``DUALTRACK_PROMETHEUS_BEARER_TOKEN``; ``--basic-auth-user`` with
``--basic-auth-password-file`` or ``DUALTRACK_PROMETHEUS_PASSWORD``.

``--recording-rules`` (``DUALTRACK_RECORDING_RULES=1``, ``recording_rules:
true``) reads the request signals' eight inputs from the series that
recording_rules.yml records (``PrometheusSource(recorded=True)``) instead
of computing rates over the raw metrics every cycle: the cheap choice for a
large fleet. The rules must be loaded in the Prometheus queried, and the
window must be theirs, 2m (any other ``--window`` is an error, exit 2)::

    dualtrack adapter --prometheus-url http://prometheus:9090 \
        --output /shared/preferences.json --recording-rules
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import signal
import sys
from typing import Any, Dict, List, Optional, Tuple

from .._urls import has_password
from ..errors import ConfigError

log = logging.getLogger("dualtrack.adapter")

#: setting -> (default, type, help). The names are the config-file keys;
#: the flags are --setting-with-dashes and the env vars DUALTRACK_SETTING.
SETTINGS: Dict[str, Tuple[Any, Any, str]] = {
    "prometheus_url": (None, str, "base URL of Prometheus (or any PromQL engine), e.g. http://127.0.0.1:9090"),
    "output": (None, str, "the preferences file to publish"),
    "rules": (None, str, "strategy rule files or folders, comma-separated (default: the bundled rules/)"),
    "strategy": ("adaptive", str, "strategy to follow (default adaptive)"),
    "interval": (30.0, float, "seconds between cycles (default 30)"),
    "window": ("2m", str, "rate window of the signals' PromQL (default 2m; at least 4 scrape intervals)"),
    "recording_rules": (False, bool, "read the request signals' inputs from the series recording_rules.yml "
                                     "records (load those rules in Prometheus; window must be 2m)"),
    "validity": (None, float, "seconds a published file stays valid (default 3 intervals)"),
    "query_classes": ("short,medium,long", str, "query classes, comma-separated (default short,medium,long)"),
    "query_timeout": (5.0, float, "seconds per PromQL query (default 5)"),
    "metrics_host": ("127.0.0.1", str, "address for the adapter's own /metrics (default 127.0.0.1)"),
    "metrics_port": (9465, int, "port for the adapter's own /metrics; -1 disables it (default 9465)"),
    "metrics_tls_cert_file": (None, str, "serve /metrics over HTTPS with this certificate (PEM; needs the key)"),
    "metrics_tls_key_file": (None, str, "private key of --metrics-tls-cert-file (PEM)"),
    "metrics_tls_client_ca_file": (None, str, "require client certificates signed by this CA (PEM) on /metrics"),
    "bearer_token_file": (None, str, "file holding a bearer token for Prometheus (re-read when it changes)"),
    "basic_auth_user": (None, str, "basic-auth user for Prometheus (password from a file or the env)"),
    "basic_auth_password_file": (None, str, "file holding the basic-auth password"),
    "ca_bundle": (None, str, "CA bundle to verify Prometheus' TLS certificate"),
    "insecure_skip_verify": (False, bool, "do not verify Prometheus' TLS certificate (testing only)"),
    "file_mode": ("0644", str, "permissions of the preferences file, octal (default 0644)"),
    "state_file": (None, str, "keep what the strategy learned in this file (written each cycle) and go on "
                              "from it after a restart (default: not kept, every start is cold)"),
    "state_max_age": (3600.0, float, "seconds a saved state stays usable at start; an older one is not used "
                                     "(default 3600)"),
    "replay": (10, int, "intervals of Prometheus' history to evaluate at start, publishing nothing, so that the "
                        "first cycle decides from them (with a restored state: only those since it was saved; "
                        "default 10, 0: none)"),
}


#: OptimizationConfig's names for the /metrics TLS files -> the adapter's flags, for error messages.
_TLS_FLAGS = {"metrics_tls_certfile": "--metrics-tls-cert-file", "metrics_tls_keyfile": "--metrics-tls-key-file",
              "metrics_tls_client_cafile": "--metrics-tls-client-ca-file"}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "adapter", help="run the adapter: PromQL -> strategy rules -> preferences file",
        description=("Query Prometheus every interval, evaluate the strategy rules and publish routing "
                     "preferences to a file that routers read. Settings also come from DUALTRACK_<SETTING> "
                     "environment variables and --config FILE (command line wins)."),
        epilog=("example: dualtrack adapter --prometheus-url http://127.0.0.1:9090 "
                "--output /var/lib/dualtrack/preferences.json --strategy adaptive"))
    parser.add_argument("--config", metavar="FILE", help="YAML file with any of the settings below (keys with _)")
    for name, (_default, kind, help_text) in SETTINGS.items():
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, action="store_true", default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=None, metavar=name.split("_")[-1].upper(), help=help_text)
    parser.add_argument("--once", action="store_true", help="run one cycle and exit (status 1 if it failed)")
    parser.add_argument("--dry-run", action="store_true", help="print the preferences instead of writing them")
    parser.add_argument("--print-queries", action="store_true",
                        help="print the PromQL the adapter sends and exit")
    parser.set_defaults(func=run)
    return parser


def _convert(name: str, value: Any, kind: Any, where: str) -> Any:
    if value is None:
        return None
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if kind is str and isinstance(value, list):
            return ",".join(str(v) for v in value)
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{value!r} is not a valid {kind.__name__}", source=where, field=name) from None


def resolve(args: argparse.Namespace, environ: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Merge command line > environment > config file > defaults."""
    environ = dict(os.environ if environ is None else environ)
    file_values: Dict[str, Any] = {}
    if getattr(args, "config", None):
        from .. import _yaml

        doc = _yaml.load(args.config)
        data = doc.data or {}
        if not isinstance(data, dict):
            raise ConfigError("expected a mapping of settings", source=args.config, line=1)
        for key, value in data.items():
            if key not in SETTINGS:
                hint = difflib.get_close_matches(str(key), list(SETTINGS), n=1)
                raise doc.error((key,), "unknown setting" + (f"; did you mean {hint[0]!r}?" if hint else ""))
            file_values[key] = _convert(key, value, SETTINGS[key][1], f"{args.config}")
    cli_url = getattr(args, "prometheus_url", None)
    if isinstance(cli_url, str) and has_password(cli_url):
        # The one flag that could carry a secret: refused, as every other
        # credential on the command line (it shows in ps). The URL is not shown.
        raise ConfigError("a password in the URL would show in ps; give it in DUALTRACK_PROMETHEUS_PASSWORD or "
                          "--basic-auth-password-file (user: --basic-auth-user), or the whole URL in "
                          "DUALTRACK_PROMETHEUS_URL", field="--prometheus-url")
    out: Dict[str, Any] = {}
    for name, (default, kind, _) in SETTINGS.items():
        cli = getattr(args, name, None)
        env = environ.get("DUALTRACK_" + name.upper())
        if cli is not None:
            out[name] = _convert(name, cli, kind, "command line")
        elif env is not None:
            out[name] = _convert(name, env, kind, "DUALTRACK_" + name.upper())
        elif name in file_values:
            out[name] = file_values[name]
        else:
            out[name] = default
    out["bearer_token"] = environ.get("DUALTRACK_PROMETHEUS_BEARER_TOKEN")
    out["basic_auth_password"] = environ.get("DUALTRACK_PROMETHEUS_PASSWORD")
    return out


def _split(text: str) -> List[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build(values: Dict[str, Any], *, once: bool, dry_run: bool) -> Tuple[Any, Any]:
    """(AdapterSettings, PromQLClient) from resolved settings; ConfigError on a bad one."""
    from ..adapter.aggregates import RECORDED_WINDOW
    from ..adapter.loop import AdapterSettings
    from ..adapter.promql import PromQLClient
    from ..bundled import bundled_dir

    if not values["prometheus_url"]:
        raise ConfigError("required (or set DUALTRACK_PROMETHEUS_URL)", field="--prometheus-url")
    if not values["output"] and not dry_run:
        raise ConfigError("required unless --dry-run (or set DUALTRACK_OUTPUT)", field="--output")
    try:
        mode = int(str(values["file_mode"]), 8)
    except ValueError:
        raise ConfigError(f"expected octal permissions like 0644, got {values['file_mode']!r}",
                          field="file_mode") from None
    if values["recording_rules"] and values["window"] != RECORDED_WINDOW:
        raise ConfigError(f"reads the recording rules' series, which are rates over {RECORDED_WINDOW}; it "
                          f"cannot be combined with window {values['window']!r} (set the window to "
                          f"{RECORDED_WINDOW}, or turn --recording-rules off)", field="--recording-rules")
    rules = tuple(_split(values["rules"])) if values["rules"] else (str(bundled_dir("rules")),)
    settings = AdapterSettings(
        rules=rules, strategy=values["strategy"], output=values["output"] or "-",
        interval_seconds=values["interval"], window=values["window"], validity_seconds=values["validity"],
        query_classes=tuple(_split(values["query_classes"])), file_mode=mode, once=once, dry_run=dry_run,
        state_file=values["state_file"] or None, state_max_age_seconds=values["state_max_age"],
        replay_intervals=values["replay"],
    )
    basic = None
    if values["basic_auth_user"]:
        password = values["basic_auth_password"]
        if values["basic_auth_password_file"]:
            try:
                with open(values["basic_auth_password_file"], encoding="utf-8") as fh:
                    password = fh.read().strip()
            except OSError as err:
                raise ConfigError(f"cannot read: {err.strerror}", field="basic_auth_password_file") from err
        if password is None:
            raise ConfigError("needs --basic-auth-password-file or DUALTRACK_PROMETHEUS_PASSWORD",
                              field="basic_auth_user")
        basic = (values["basic_auth_user"], password)
    try:
        client = PromQLClient(
            values["prometheus_url"], timeout=values["query_timeout"], bearer_token=values["bearer_token"],
            bearer_token_file=values["bearer_token_file"], basic_auth=basic, ca_bundle=values["ca_bundle"],
            insecure_skip_verify=bool(values["insecure_skip_verify"]),
        )
    except ValueError as err:
        raise ConfigError(str(err), field="prometheus_url") from err
    return settings, client


def run(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry

    from ..adapter.loop import Adapter, effective_settings_text
    from ..adapter.prometheus_source import PrometheusSource, interval_duration
    from ..config import OptimizationConfig
    from ..exporter.exposition import serve_metrics

    try:
        values = resolve(args)
        settings, client = build(values, once=args.once, dry_run=args.dry_run or args.print_queries)
        registry = CollectorRegistry()
        adapter_holder: List[Any] = []
        source = PrometheusSource(client, window=settings.window, recorded=bool(values["recording_rules"]),
                                  interval=interval_duration(settings.interval_seconds),
                                  on_query=lambda s, e: adapter_holder[0].metrics.observe_query(s, e)
                                  if adapter_holder else None)
        if args.print_queries:
            from ..adapter.strategy import load_strategies

            print(source.batch_query(load_strategies(list(settings.rules)).catalog))
            return 0
        adapter = Adapter(settings, source, registry=registry)
        adapter_holder.append(adapter)
        server = None
        if values["metrics_port"] is not None and values["metrics_port"] >= 0 and not settings.once:
            try:
                server = serve_metrics(registry, OptimizationConfig(
                    metrics_host=values["metrics_host"], metrics_port=values["metrics_port"],
                    metrics_tls_certfile=values["metrics_tls_cert_file"],
                    metrics_tls_keyfile=values["metrics_tls_key_file"],
                    metrics_tls_client_cafile=values["metrics_tls_client_ca_file"]))
            except ValueError as err:  # ConfigError included: say the flags, not the config fields
                message = str(err)
                for field, flag in _TLS_FLAGS.items():
                    message = message.replace(field, flag)
                raise ConfigError(message) from None
    except ConfigError as err:
        print(f"dualtrack adapter: {err}", file=sys.stderr)
        return 2
    source_desc = repr(client) + (" (inputs from recording rules)" if source.recorded else "")
    log.info("effective configuration: %s", effective_settings_text(settings, source_desc))
    if server is not None:
        log.info("serving the adapter's metrics on %s", server.url)
    if not args.once:
        # SIGTERM/SIGINT only set the stop event: the cycle in progress (and its
        # atomic write) finishes, then the loop ends.
        def _stop(signum: int, frame: Any) -> None:
            log.info("signal %d: stopping after this cycle", signum)
            adapter.stop_event.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    try:
        return adapter.run()
    finally:
        if server is not None:
            server.close()
        client.close()
