"""A real container engine for the image tests: podman with runc, as Debian ships them.

Everything machine-specific is read at run time, never written into the tree:

* the Debian mirror debootstrap uses is the one apt already uses (``/etc/apt/sources.list``
  and ``sources.list.d``);
* pip inside a build gets the host's pip configuration (its config files and ``PIP_*``
  variables, merged by ``pip config list`` into one file mounted as ``/etc/pip.conf``), and
  every local folder or file that configuration names is mounted read-only at its own path;
* ulimits are the host's hard limits (podman's defaults are higher than some hosts allow).

No registry is reachable from CI, so the docker-stacks-like base is built here: a Debian
root file system from debootstrap, imported, then ``base.Containerfile`` on top.  It is
tagged with a hash of its recipe and kept in podman's image store: a second run reuses it.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BASE_RECIPE = HERE / "base.Containerfile"
#: Debian packages of the base's root file system: Python 3.11 with venv and headers, and a
#: C compiler for kernel_guard's native audit filter (docker-stacks' scipy-notebook has one)
ROOTFS_PACKAGES = ("python3", "python3-venv", "python3-dev", "gcc", "libc6-dev", "ca-certificates",
                   "libseccomp2", "tini")
BASE_NAME = "localhost/kernel-guard-test-base"


def _log(message: str) -> None:
    """Progress on the terminal running pytest (builds take minutes)."""
    sys.__stderr__.write(f"[container] {message}\n")
    sys.__stderr__.flush()


class Engine:
    """``podman --runtime runc --cgroup-manager cgroupfs``, with a containers.conf that sets no
    ulimits or pids limit of its own (this machine's hybrid cgroup layout and hard limits)."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        conf = os.path.join(workdir, "containers.conf")
        with open(conf, "w") as fh:
            fh.write("[containers]\ndefault_ulimits = []\npids_limit = 0\n")
        self.env = {**os.environ, "CONTAINERS_CONF_OVERRIDE": conf, "CONTAINERS_CONF": conf}
        nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 65536)
        nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 4096)
        self.ulimits = ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]

    def command(self, *args: str) -> List[str]:
        return ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs", *args]

    def run(self, *args: str, timeout: float = 600, check: bool = True,
            input: Optional[bytes] = None) -> subprocess.CompletedProcess:
        done = subprocess.run(self.command(*args), env=self.env, capture_output=True, timeout=timeout,
                              input=input)
        if check and done.returncode != 0:
            raise RuntimeError(f"podman {shlex.join(args[:6])} ... exited {done.returncode}:\n"
                               f"{done.stdout.decode(errors='replace')[-3000:]}\n"
                               f"{done.stderr.decode(errors='replace')[-3000:]}")
        return done

    def build(self, tag: str, containerfile: Path, context: str, timeout: float = 1200,
              args: Sequence[str] = ()) -> float:
        """``podman build`` with the host's pip configuration; returns the seconds it took.
        The image the tag named before is removed (each run rebuilds the kernel_guard
        images: their layers would otherwise pile up in the store)."""
        started = time.monotonic()
        before = self.image_id(tag)
        command = self.command("build", "--network", "host", *self.ulimits, *pip_mounts(self.workdir),
                               *args, "-f", str(containerfile), "-t", tag, context)
        # the build's own output, line by line, shows what is being installed
        with subprocess.Popen(command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
            tail: List[str] = []
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip()
                tail = (tail + [line])[-60:]
                if line.startswith(("STEP ", "Successfully installed", "COMMIT")):
                    _log(f"{tag}: {line[:160]}")
                if time.monotonic() - started > timeout:
                    proc.kill()
            if proc.wait() != 0:
                raise RuntimeError(f"podman build of {tag} failed:\n" + "\n".join(tail))
        if before and before != self.image_id(tag):
            self.run("rmi", before, check=False)
        return time.monotonic() - started

    def image_id(self, tag: str) -> Optional[str]:
        done = self.run("image", "inspect", "--format", "{{.Id}}", tag, check=False)
        return done.stdout.decode().strip() or None if done.returncode == 0 else None

    def image_exists(self, tag: str) -> bool:
        return self.run("image", "exists", tag, check=False).returncode == 0


def unusable_reason() -> Optional[str]:
    """Why no container engine can run here, or None when podman runs a container's runtime."""
    if shutil.which("podman") is None or shutil.which("runc") is None:
        return "no container engine: podman and runc are not installed (scripts/bootstrap test installs them)"
    if os.geteuid() != 0:
        return "the container tests run podman rootful: run them as root, as CI does"
    with tempfile.TemporaryDirectory() as workdir:
        done = Engine(workdir).run("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False, timeout=120)
    if done.returncode != 0:
        return f"podman cannot run here: {done.stderr.decode(errors='replace').strip()[-400:]}"
    return None


# -- the host's configuration, read at run time ---------------------------------------

def debian_mirror() -> tuple[str, str]:
    """(mirror URL, suite) of the Debian archive apt uses on this machine."""
    suite = ""
    with open("/etc/os-release") as fh:
        for line in fh:
            if line.startswith("VERSION_CODENAME="):
                suite = line.split("=", 1)[1].strip().strip('"')
    uris: List[str] = []
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        text = Path(path).read_text()
        for stanza in re.split(r"\n\s*\n", text):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
            if "deb" in fields.get("Types", "").split() and suite in fields.get("Suites", "").split():
                uris += fields.get("URIs", "").split()
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
        if os.path.exists(path):
            for line in Path(path).read_text().splitlines():
                m = re.match(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)
                if m and m.group(2) == suite:
                    uris.append(m.group(1))
    if not uris or not suite:
        raise RuntimeError("no Debian archive for this release in apt's sources: debootstrap needs one")
    return uris[0], suite


def host_pip_config() -> Dict[str, str]:
    """The host's pip settings as ``pip config list`` merges them (files and ``PIP_*``)."""
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}).stdout
    settings: Dict[str, str] = {}
    for line in listed.splitlines():
        m = re.match(r"^(?::env:|[\w-]+)\.([\w-]+)='(.*)'$", line)
        if m:
            settings[m.group(1)] = m.group(2)
    return settings


def pip_mounts(workdir: str) -> List[str]:
    """``-v`` options giving a build the host's pip configuration and the local paths it names."""
    settings = host_pip_config()
    conf = os.path.join(workdir, "pip.conf")
    with open(conf, "w") as fh:
        fh.write("[global]\n" + "".join(f"{key} = {value}\n" for key, value in settings.items()))
    mounts = ["-v", f"{conf}:/etc/pip.conf:ro"]
    seen = set()
    for value in settings.values():
        for token in value.split():
            path = token[len("file://"):] if token.startswith("file://") else token
            if token.startswith("file://") and os.path.basename(path.rstrip("/")) == "simple":
                path = os.path.dirname(path.rstrip("/"))  # a PEP 503 index links to ../../files
            if path.startswith("/") and os.path.exists(path) and path not in seen:
                seen.add(path)
                mounts += ["-v", f"{path}:{path}:ro"]
    return mounts


# -- the docker-stacks-like base --------------------------------------------------------

def base_tag() -> str:
    """The base's tag: a hash of everything that makes it (the recipe, packages, this builder)."""
    digest = hashlib.sha256()
    for part in (BASE_RECIPE.read_bytes(), " ".join(ROOTFS_PACKAGES).encode(),
                 debian_mirror()[1].encode(), _builder_source()):
        digest.update(part)
    return f"{BASE_NAME}:{digest.hexdigest()[:16]}"


def _builder_source() -> bytes:
    """The code that builds the base (not the rest of this module: editing it keeps the cache)."""
    import inspect

    return inspect.getsource(ensure_base).encode()


def ensure_base(engine: Engine) -> tuple[str, Optional[float]]:
    """The base image's tag, built if podman's store lacks it; and the build's seconds (None: cached)."""
    tag = base_tag()
    if engine.image_exists(tag):
        _log(f"base image {tag} is cached")
        return tag, None
    started = time.monotonic()
    rootfs_tag = tag.replace(BASE_NAME, BASE_NAME + "-rootfs")
    if not engine.image_exists(rootfs_tag):
        mirror, suite = debian_mirror()
        rootfs = os.path.join(engine.workdir, "rootfs")
        _log(f"debootstrap {suite} from {mirror} ({', '.join(ROOTFS_PACKAGES)})")
        done = subprocess.run(["debootstrap", "--variant=minbase", "--include=" + ",".join(ROOTFS_PACKAGES),
                               suite, rootfs, mirror], capture_output=True, text=True, timeout=1200)
        if done.returncode != 0:
            raise RuntimeError(f"debootstrap failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for name in glob.glob(os.path.join(rootfs, cache, "*")):
                if os.path.isfile(name):
                    os.unlink(name)
        _log(f"debootstrap done in {time.monotonic() - started:.0f} s; importing")
        with subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE) as tar:
            subprocess.run(engine.command("import", "-", rootfs_tag), env=engine.env, stdin=tar.stdout,
                           check=True, capture_output=True, timeout=600)
        shutil.rmtree(rootfs, ignore_errors=True)
    context = os.path.join(engine.workdir, "base-context")
    os.makedirs(context, exist_ok=True)
    engine.build(tag, BASE_RECIPE, context, args=["--build-arg", f"ROOTFS={rootfs_tag}"])
    return tag, time.monotonic() - started


def build_wheel(outdir: str) -> Path:
    """kernel_guard's wheel, built from this checkout as an operator would (``pip wheel``)."""
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", outdir, str(REPO)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # the metadata is current: setuptools prints no deprecation banner while building
    assert "deprecated" not in done.stderr, done.stderr[-3000:]
    wheels = sorted(Path(outdir).glob("kernel_guard-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]
