"""The escape techniques and compatibility checks that ``kernel-guard check`` runs.

Each technique tries to create a marker file (``@MARKER@``) or to obtain a
secret through one route.  It counts as *stopped* when the marker does not
exist afterwards (or the cell did not print ``ESCAPED``), and as *recorded*
when the sink received a failure event while it ran.  Techniques that would
replace the kernel process on success (exec-family calls) fork first, so a
plain kernel survives its own escapes.

Placeholders: ``@MARKER@`` (a path that must not appear), ``@HOME@`` (the
kernel's home), ``@SH@`` (``sh -c 'touch @MARKER@'`` as a shell string).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

__all__ = ["COMPATIBILITY", "CATEGORIES", "Check", "TECHNIQUES", "Technique"]


@dataclass(frozen=True)
class Technique:
    """One escape attempt."""

    name: str
    category: str
    code: str
    #: "marker": stopped iff @MARKER@ is absent; "output": stopped iff no "ESCAPED" in stdout
    verdict: str = "marker"
    #: seconds to wait before judging (background routes)
    settle: float = 0.0
    #: if set, "recorded" means some event mentions this text (e.g. a variable name)
    recorded_if_mentioned: Optional[str] = None


@dataclass(frozen=True)
class Check:
    """One compatibility check: ordinary work that must keep running."""

    name: str
    code: str
    #: text the cell's output must contain
    expect: str = "OK"
    #: module that must be importable for the check to apply
    requires: Optional[str] = None
    #: interrupt the cell after this many seconds and expect KeyboardInterrupt
    interrupt_after: Optional[float] = None


TOUCH = "touch @MARKER@"

# A six-argument raw system call, machine code written for this check:
# x86_64: rax<-rdi, rdi<-rsi, rsi<-rdx, rdx<-rcx, r10<-r8, r8<-r9; syscall; ret
# aarch64: x8<-x0, x0..x4<-x1..x5; svc #0; ret
RAW_SYSCALL = '''
import ctypes, mmap, os, platform
_STUBS = {
    "x86_64": bytes.fromhex("4889f84889f74889d64889ca4d89c24d89c80f05c3"),
    "aarch64": bytes.fromhex("e80300aae00301aae10302aae20303aae30304aae40305aa010000d4c0035fd6"),
}
_mem = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
_mem.write(_STUBS[platform.machine()])
raw_syscall = ctypes.CFUNCTYPE(ctypes.c_long, *[ctypes.c_long] * 6)(ctypes.addressof(ctypes.c_char.from_buffer(_mem)))
NR = {"x86_64": {"execve": 59, "execveat": 322}, "aarch64": {"execve": 221, "execveat": 281}}[platform.machine()]
_path = ctypes.c_char_p(b"/bin/sh")
_argv = (ctypes.c_char_p * 4)(b"sh", b"-c", b"touch @MARKER@", None)
def in_child(fn):
    pid = os.fork()
    if pid == 0:
        try:
            fn()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
'''

_FORK_EXEC = '''
import os
pid = os.fork()
if pid == 0:
    try:
        {call}
    finally:
        os._exit(0)
os.waitpid(pid, 0)
'''


def _in_fork(call: str) -> str:
    return _FORK_EXEC.replace("{call}", call)


TECHNIQUES: List[Technique] = [
    # -- IPython syntax --------------------------------------------------------
    Technique("bang", "ipython-syntax", f"!{TOUCH}"),
    Technique("double bang", "ipython-syntax", f"!!{TOUCH}"),
    Technique("assignment from bang", "ipython-syntax", f"out = !{TOUCH}"),
    Technique("indented bang", "ipython-syntax", f"if True:\n    !{TOUCH}"),
    Technique("%sx", "ipython-syntax", f"%sx {TOUCH}"),
    Technique("%system", "ipython-syntax", f"%system {TOUCH}"),
    Technique("%%bash", "ipython-syntax", f"%%bash\n{TOUCH}"),
    Technique("%%sh --bg", "ipython-syntax", f"%%sh --bg\n{TOUCH}", settle=1.0),
    Technique("%%script sh", "ipython-syntax", f"%%script sh\n{TOUCH}"),
    Technique("%%python3", "ipython-syntax", "%%python3\nopen('@MARKER@', 'w').close()"),
    Technique("%%perl", "ipython-syntax", "%%perl\nopen(F, '>@MARKER@');"),
    Technique("%alias", "ipython-syntax", f"%alias mk {TOUCH}\n%mk"),
    Technique("automagic alias mkdir", "ipython-syntax", "mkdir @MARKER@"),
    Technique("%pip", "ipython-syntax", "%pip download --no-deps --dest @MARKER@ kernel-guard-does-not-exist"),
    # -- IPython API and the magics registry ----------------------------------
    Technique("get_ipython().system", "ipython-api", f"get_ipython().system({TOUCH!r})"),
    Technique("get_ipython().system_raw", "ipython-api", f"get_ipython().system_raw({TOUCH!r})"),
    Technique("get_ipython().getoutput", "ipython-api", f"get_ipython().getoutput({TOUCH!r})"),
    Technique("class-level system_raw", "ipython-api",
              f"ip = get_ipython()\ntype(ip).system_raw(ip, {TOUCH!r})"),
    Technique("del ip.system", "ipython-api",
              f"ip = get_ipython()\ntry:\n    del ip.system\nexcept AttributeError:\n    pass\nip.system({TOUCH!r})"),
    Technique("run_cell_magic bash", "ipython-api", f"get_ipython().run_cell_magic('bash', '', {TOUCH!r})"),
    Technique("magics registry sx", "ipython-api",
              f"get_ipython().magics_manager.registry['OSMagics'].sx({TOUCH!r})"),
    Technique("re-registered ScriptMagics", "ipython-api",
              "from IPython.core.magics.script import ScriptMagics\nget_ipython().register_magics(ScriptMagics)\n"
              f"get_ipython().run_cell_magic('script', 'sh', {TOUCH!r})"),
    Technique("IPython.utils.process.system", "ipython-api",
              f"import IPython.utils.process as p\np.system({TOUCH!r})"),
    Technique("lazy_magics via %config", "ipython-api",
              "%config MagicsManager.lazy_magics = {'kgx': 'IPython.core.magics.script:ScriptMagics'}\n"
              f"get_ipython().run_cell_magic('script', 'sh', {TOUCH!r})"),
    # -- stdlib process APIs ----------------------------------------------------
    Technique("subprocess.run", "stdlib-process", "import subprocess\nsubprocess.run(['touch', '@MARKER@'])"),
    Technique("subprocess shell=True", "stdlib-process", f"import subprocess\nsubprocess.call({TOUCH!r}, shell=True)"),
    Technique("os.system", "stdlib-process", f"import os\nos.system({TOUCH!r})"),
    Technique("os.popen", "stdlib-process", f"import os\nos.popen({TOUCH!r}).read()"),
    Technique("os.posix_spawn", "stdlib-process",
              "import os\npid = os.posix_spawn('/bin/sh', ['sh', '-c', 'touch @MARKER@'], dict(os.environ))\n"
              "os.waitpid(pid, 0)"),
    Technique("os.spawnv", "stdlib-process", "import os\nos.spawnv(os.P_WAIT, '/bin/sh', ['sh', '-c', 'touch @MARKER@'])"),
    Technique("fork + os.execv", "stdlib-process", _in_fork("os.execv('/bin/sh', ['sh', '-c', 'touch @MARKER@'])")),
    Technique("pty.spawn", "stdlib-process", "import pty\npty.spawn(['sh', '-c', 'touch @MARKER@'])"),
    Technique("asyncio subprocess", "stdlib-process",
              "import asyncio\nasync def main():\n    p = await asyncio.create_subprocess_exec('touch', '@MARKER@')\n"
              "    await p.wait()\nawait main()"),
    Technique("exec from a thread", "stdlib-process",
              f"import os, threading\nt = threading.Thread(target=os.system, args=({TOUCH!r},))\nt.start()\nt.join()"),
    # -- low-level routes -------------------------------------------------------
    Technique("_posixsubprocess.fork_exec", "low-level",
              "import _posixsubprocess, os\nr, w = os.pipe()\n"
              "pid = _posixsubprocess.fork_exec([b'sh', b'-c', b'touch @MARKER@'], [b'/bin/sh'], True, (), None, None,"
              " -1, -1, -1, -1, -1, -1, r, w, False, False, None, None, None, -1, None, False)\n"
              "os.waitpid(pid, 0)"),
    Technique("ctypes system()", "low-level", f"import ctypes\nctypes.CDLL(None).system({TOUCH.encode()!r})"),
    Technique("fork + ctypes execv", "low-level",
              "import ctypes\nlibc = ctypes.CDLL(None)\n"
              + _in_fork("argv = (ctypes.c_char_p * 4)(b'sh', b'-c', b'touch @MARKER@', None)\n"
                         "        libc.execv(b'/bin/sh', argv)")),
    Technique("raw syscall execve", "low-level",
              RAW_SYSCALL + "in_child(lambda: raw_syscall(NR['execve'], ctypes.cast(_path, ctypes.c_void_p).value,"
              " ctypes.addressof(_argv), 0, 0, 0))"),
    Technique("raw syscall execveat", "low-level",
              RAW_SYSCALL + "in_child(lambda: raw_syscall(NR['execveat'], -100, ctypes.cast(_path, ctypes.c_void_p).value,"
              " ctypes.addressof(_argv), 0, 0))"),
    Technique("multiprocessing spawn", "low-level",
              "import multiprocessing as mp, os\nctx = mp.get_context('spawn')\n"
              "p = ctx.Process(target=os.system, args=('touch @MARKER@',))\np.start()\np.join(20)"),
    # -- tampering ----------------------------------------------------------------
    Technique("%unload_ext then !", "tampering", f"%unload_ext kernel_guard\n!{TOUCH}"),
    Technique("%reload_ext then !", "tampering",
              "ip = get_ipython()\nif 'kernel_guard' in ip.extension_manager.loaded:\n"
              f"    ip.run_line_magic('reload_ext', 'kernel_guard')\nip.system({TOUCH!r})"),
    Technique("%config KernelGuard.mode", "tampering", f"%config KernelGuard.mode = 'audit'\nimport os\nos.system({TOUCH!r})"),
    Technique("restore IPython's system", "tampering",
              "from IPython.core.interactiveshell import InteractiveShell\nfrom ipykernel.zmqshell import ZMQInteractiveShell\n"
              "import IPython.utils._process_posix as pp\n"
              "def system(self, cmd):\n    return pp.system(cmd)\n"
              f"ZMQInteractiveShell.system_piped = ZMQInteractiveShell.system = system\nget_ipython().system({TOUCH!r})"),
    Technique("shimmed subprocess.sys", "tampering",
              "import subprocess, sys, types\n"
              "shim = types.SimpleNamespace(**{k: getattr(sys, k) for k in dir(sys) if not k.startswith('__')})\n"
              "shim.audit = lambda *a: None\nsubprocess.sys = shim\n"
              "try:\n    subprocess.run(['touch', '@MARKER@'])\nfinally:\n    subprocess.sys = sys"),
    Technique("rewire the audit hook", "tampering",
              "import sys\nfrom kernel_guard.audit import hook as audit\nfor hook in list(audit._State.installed.values()):\n"
              "    hook.__defaults__ = (frozenset(), None, None)\nimport os\nos.system('touch @MARKER@')"),
    Technique("kill the supervisor, then exec", "tampering",
              "import os, signal\n"
              "for pid in os.listdir('/proc'):\n"
              "    if pid.isdigit():\n"
              "        try:\n            cmd = open(f'/proc/{pid}/cmdline', 'rb').read()\n"
              "        except OSError:\n            continue\n"
              "        if b'kernel_guard.launch.supervisor' in cmd:\n"
              "            try:\n                os.kill(int(pid), signal.SIGKILL)\n"
              "            except Exception:\n                pass\n"
              "import time\ntime.sleep(0.5)\n"
              + RAW_SYSCALL + "in_child(lambda: raw_syscall(NR['execve'], ctypes.cast(_path, ctypes.c_void_p).value,"
              " ctypes.addressof(_argv), 0, 0, 0))"),
    # -- persistence -----------------------------------------------------------
    Technique("IPython startup file", "persistence",
              "import os\np = '@HOME@/.ipython/profile_default/startup/00-x.py'\nos.makedirs(os.path.dirname(p), exist_ok=True)\n"
              "open(p, 'w').write('print(1)')\nos.symlink(p, '@MARKER@')"),
    Technique("IPython kernel config", "persistence",
              "import os\np = '@HOME@/.ipython/profile_default/ipython_kernel_config.py'\n"
              "os.makedirs(os.path.dirname(p), exist_ok=True)\nopen(p, 'w').write('c = 1')\nos.symlink(p, '@MARKER@')"),
    Technique("Jupyter config", "persistence",
              "import os\np = '@HOME@/.jupyter/jupyter_server_config.py'\nos.makedirs(os.path.dirname(p), exist_ok=True)\n"
              "open(p, 'w').write('c = 1')\nos.symlink(p, '@MARKER@')"),
    Technique("user kernelspec override", "persistence",
              "import os\np = '@HOME@/.local/share/jupyter/kernels/python3/kernel.json'\n"
              "os.makedirs(os.path.dirname(p), exist_ok=True)\nopen(p, 'w').write('{}')\nos.symlink(p, '@MARKER@')"),
    Technique(".pth file in user site", "persistence",
              "import os, site\np = os.path.join(site.getusersitepackages(), 'kg.pth')\n"
              "os.makedirs(os.path.dirname(p), exist_ok=True)\nopen(p, 'w').write('import os')\nos.symlink(p, '@MARKER@')"),
    Technique("sitecustomize", "persistence",
              "open('sitecustomize.py', 'w').write('import os')\nimport os\nos.symlink(os.path.abspath('sitecustomize.py'), '@MARKER@')"),
    # -- environment -----------------------------------------------------------
    Technique("LD_PRELOAD", "environment",
              "import os\nos.environ['LD_PRELOAD'] = '/tmp/x.so'\nprint('ESCAPED' if os.environ.get('LD_PRELOAD') else '')",
              verdict="output"),
    Technique("PATH via %env", "environment",
              "%env PATH=/tmp/kg-evil\nimport os\nprint('ESCAPED' if os.environ['PATH'] == '/tmp/kg-evil' else '')",
              verdict="output"),
    Technique("PYTHONPATH via putenv", "environment",
              "import os\nos.putenv('PYTHONPATH', '/tmp/kg-evil')\nprint('ESCAPED')", verdict="output"),
    # -- credentials -----------------------------------------------------------
    Technique("hub token in os.environ", "credentials",
              "import os\nprint('ESCAPED' if os.environ.get('JUPYTERHUB_API_TOKEN') else '')",
              verdict="output", recorded_if_mentioned="JUPYTERHUB_API_TOKEN"),
    Technique("hub token in /proc/self/environ", "credentials",
              "print('ESCAPED' if b'JUPYTERHUB_API_TOKEN' in open('/proc/self/environ', 'rb').read() else '')",
              verdict="output", recorded_if_mentioned="JUPYTERHUB_API_TOKEN"),
    # last: forking after a subinterpreter ran can wedge an unguarded kernel
    Technique("subinterpreter", "low-level",
              "import _xxsubinterpreters as interpreters\ni = interpreters.create()\n"
              "try:\n    interpreters.run_string(i, \"import os; os.system('touch @MARKER@')\")\n"
              "finally:\n    interpreters.destroy(i)"),
]

CATEGORIES = sorted({t.category for t in TECHNIQUES})

COMPATIBILITY: List[Check] = [
    Check("numpy", "import numpy as np\nprint('OK' if np.arange(10).sum() == 45 else 'bad')", requires="numpy"),
    Check("pandas group-by", "import pandas as pd\ndf = pd.DataFrame({'k': [1, 1, 2], 'v': [1, 2, 3]})\n"
          "print('OK' if df.groupby('k').v.sum().tolist() == [3, 3] else 'bad')", requires="pandas"),
    Check("matplotlib inline plot", "%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()\n"
          "print('OK')", requires="matplotlib"),
    Check("%timeit", "%timeit -n1 -r1 sum(range(100))\nprint('OK')"),
    Check("%%writefile", "%%writefile kg_compat.txt\nOK\n", expect="Writing"),
    Check("%cd", "import os\n%cd .\nprint('OK' if os.getcwd() else 'bad')"),
    Check("read and write files", "open('kg_data.csv', 'w').write('a,b\\n1,2\\n')\nprint('OK' if open('kg_data.csv').read() else '')"),
    Check("fork-based multiprocessing pool", "import multiprocessing as mp\nwith mp.get_context('fork').Pool(2) as p:\n"
          "    print('OK' if sum(p.map(abs, range(-3, 3))) == 9 else 'bad')"),
    Check("threads", "import threading\nout = []\nts = [threading.Thread(target=out.append, args=(i,)) for i in range(4)]\n"
          "[t.start() for t in ts]; [t.join() for t in ts]\nprint('OK' if sorted(out) == [0, 1, 2, 3] else 'bad')"),
    Check("%env read", "%env HOME\nprint('OK')"),
    Check("interrupt a long cell", "import time\ntime.sleep(60)", expect="KeyboardInterrupt", interrupt_after=1.0),
    # parallel work that starts the kernel's own interpreter: the launcher's Landlock
    # domain lets it run (an extension-only kernel refuses it, and check says so)
    Check("multiprocessing spawn pool", "import multiprocessing as mp\nwith mp.get_context('spawn').Pool(2) as p:\n"
          "    print('OK' if p.map(abs, [-1, -2]) == [1, 2] else 'bad')"),
    Check("ProcessPoolExecutor with forkserver", "import concurrent.futures as cf, multiprocessing as mp\n"
          "with cf.ProcessPoolExecutor(2, mp_context=mp.get_context('forkserver')) as ex:\n"
          "    print('OK' if list(ex.map(abs, [-1, -2])) == [1, 2] else 'bad')"),
    Check("joblib.Parallel, default backend", "from joblib import Parallel, delayed\n"
          "print('OK' if Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(3)) == [0, 1, 2] else 'bad')",
          requires="joblib"),
    Check("ctypes.util.find_library", "import ctypes.util\nprint('OK' if ctypes.util.find_library('m') else 'bad')"),
]
