"""`fer-triton <command>`: one CLI over the library (commands only parse arguments and call it).

Flags follow tritonclient's examples and optimum-cli: ``-u/--url`` for the server, ``-v`` verbose.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import click

from fer_triton import __version__
from fer_triton.extras import guard_commands
from fer_triton.options import configure_logging, verbose_option


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fer-triton")
@click.option("-v", "--verbose", count=True, help="-v: log each step; -vv: debug logs (also per command).")
def cli(verbose: int) -> None:
    """Serve the CAFE facial-expression model on NVIDIA Triton and call it over gRPC."""
    configure_logging(verbose)


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _raise_interrupt(*_):
    raise KeyboardInterrupt


@cli.command()
@click.option("-r", "--repository", type=click.Path(path_type=Path), default=Path("model_repository"),
              show_default=True, help="Triton model repository (from `fer-triton export`).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--grpc-port", default=8001, show_default=True)
@click.option("--http-port", default=8000, show_default=True)
@click.option("--metrics-port", default=8002, show_default=True)
@click.option("--log-file", type=click.Path(path_type=Path), help="Write Triton's log here.")
@click.option("--log-verbose", default=0, show_default=True, help="Triton's own --log-verbose level.")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait for all models to load.")
@click.option("--restrict-config", is_flag=True,
              help="Also put the model-config API behind the admin key (clients then need the key to read configs).")
@click.option("--model-config-name", metavar="VARIANT",
              help="Serve each model's configs/VARIANT.pbtxt instead of config.pbtxt (tritonserver's own flag), "
                   "e.g. gpu_python: the pip-only GPU server (docs/gpu.md).")
@verbose_option
def serve(repository, host, grpc_port, http_port, metrics_port, log_file, log_verbose, timeout, restrict_config,
          verbose, model_config_name=None):
    """Start the real tritonserver (CPU, from the nvidia-pytriton wheel) on a model repository.

    Model control (load, unload, repository index) is restricted to requests carrying the admin key
    when FER_TRITON_ADMIN_KEY or FER_TRITON_ADMIN_KEY_FILE is set; inference, health and metadata stay open.
    """
    from fer_triton.admin_key import AdminKeyError, load_admin_key
    from fer_triton.server import TritonServer, TritonServerError

    try:
        admin_key = load_admin_key()
    except AdminKeyError as exc:
        raise click.ClickException(str(exc)) from exc
    if restrict_config and not admin_key:
        raise click.ClickException("--restrict-config needs an admin key: set FER_TRITON_ADMIN_KEY or "
                                   "FER_TRITON_ADMIN_KEY_FILE")
    if admin_key is None and not _is_loopback(host):
        click.secho(f"WARNING: listening on {host} without an admin key: anyone who reaches the ports can load, "
                    "unload and upload models (and so run code in the server). Set FER_TRITON_ADMIN_KEY or "
                    "FER_TRITON_ADMIN_KEY_FILE.", fg="yellow", err=True)
    server = TritonServer(repository, host=host, grpc_port=grpc_port, http_port=http_port,
                          metrics_port=metrics_port, log_file=log_file, log_verbose=log_verbose,
                          admin_key=admin_key, restrict_config=restrict_config,
                          extra_args=[f"--model-config-name={model_config_name}"] if model_config_name else [])
    if model_config_name and model_config_name.startswith("gpu_python"):  # GPU tensors between stages
        from fer_triton.export.gpu import python_server_args

        server.extra_args += python_server_args()
    click.echo(f"starting tritonserver on {repository}" + (f" ({model_config_name})" if model_config_name else "")
               + " ...")
    try:
        server.start(timeout_s=timeout)
    except TritonServerError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"ready  gRPC {server.grpc_url}  HTTP {server.http_url}  metrics {server.metrics_url}")
    click.echo(f"log    {server.log_file}")
    click.echo("model control: " + ("behind the admin key" if admin_key else "open (no admin key set)"))
    click.echo("Ctrl-C or SIGTERM stops the server.")
    signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM stops as cleanly as Ctrl-C
    try:
        while server.is_running():
            time.sleep(0.5)
        raise click.ClickException(f"tritonserver exited unexpectedly:\n{server.log_tail()}")
    except KeyboardInterrupt:
        click.echo("stopping ...")
    finally:
        code = server.stop()
    click.echo(f"stopped (exit code {code})")


def _register_commands() -> None:
    # Each command lives beside the library it drives; those modules import heavy packages lazily.
    from fer_triton.bench import bench
    from fer_triton.benchmarks.gpu_check import gpu_check
    from fer_triton.client.cli import infer
    from fer_triton.client.stream_cli import stream
    from fer_triton.demo import demo
    from fer_triton.export.cli import export
    from fer_triton.export.gpu_cli import build_trt, check_precision, gpu_configs
    from fer_triton.retrain.cli import drift, retrain, rollback, sites
    from fer_triton.retrain.fleet_cli import status
    from fer_triton.train.cli import evaluate, explain, train

    for command in (demo, export, serve, infer, stream, retrain, rollback, drift, sites, train, evaluate, explain,
                    build_trt, check_precision, gpu_configs, bench, status):
        cli.add_command(command)
    cli.add_command(gpu_check)  # benchmarks/gpu_check.py: the one-shot GPU check (issue #16)


_register_commands()
guard_commands(cli)  # a command whose extra is missing says which one to install


def main() -> None:
    cli(prog_name="fer-triton")


if __name__ == "__main__":
    sys.exit(main())
