/* kernel_guard.audit._filter: the audit layer's event filter, as a runtime audit hook.
 *
 * Why this exists: a Python hook added with sys.addaudithook costs every audited
 * event a new event-name string, a Python call and a frame -- about 0.4 us,
 * whether or not the hook cares.  A logging record raises five events, an
 * import several.  A runtime hook (PySys_AddAuditHook) receives the event name
 * as a C string before any Python object is made for it, so the events the
 * guard has no interest in (nearly all of them) cost a few string compares.
 *
 * The policy stays in Python: for an interesting event this hook calls the
 * Python callback it was given, with an interned name and the event's argument
 * tuple; an exception from the callback aborts the audited operation, as it
 * does from a Python hook.  The one decision taken here is the common
 * "reading a file" case of the open event, which hook.py's _check_open would
 * answer the same way (a str path outside /proc/, opened without write flags).
 *
 * Runtime hooks cannot be removed and hold their callback in C, out of reach
 * of Python code; the callback's own function object is guarded by the policy
 * (object.__setattr__ on it is an interesting event).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_NAMES 64

typedef struct {
    PyInterpreterState *interp;  /* the interpreter whose objects the callback is */
    PyObject *callback;          /* strong reference, never released */
    Py_ssize_t count;
    const char *names[MAX_NAMES];  /* UTF-8 of the interned strings below */
    PyObject *interned[MAX_NAMES];
    int seen_check;              /* set by the install-time check event */
} filter_t;

static const char CHECK_EVENT[] = "kernel_guard.audit._filter.check";

static const int WRITE_FLAGS = O_WRONLY | O_RDWR | O_APPEND | O_CREAT | O_TRUNC;

/* Whether an open event only reads an ordinary file: (path, mode, flags). */
static int
plain_read(PyObject *args)
{
    if (!PyTuple_CheckExact(args) || PyTuple_GET_SIZE(args) != 3) {
        return 0;
    }
    PyObject *path = PyTuple_GET_ITEM(args, 0);
    PyObject *mode = PyTuple_GET_ITEM(args, 1);
    PyObject *flags = PyTuple_GET_ITEM(args, 2);
    if (!PyUnicode_CheckExact(path)) {
        return 0;  /* bytes or an fd: left to the policy */
    }
    if (PyUnicode_CheckExact(mode)) {
        const char *m = PyUnicode_AsUTF8(mode);
        if (m == NULL) {
            PyErr_Clear();
            return 0;
        }
        if (strpbrk(m, "wax+") != NULL) {
            return 0;
        }
    }
    else if (mode == Py_None && PyLong_CheckExact(flags)) {
        long f = PyLong_AsLong(flags);
        if (f == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
        if (f & WRITE_FLAGS) {
            return 0;
        }
    }
    else {
        return 0;
    }
    return 1;
}

/* /proc/<pid>/environ and /mem are credentials: the policy decides every read of a
 * file named so, however the path is spelled (relative, "//", links in its folders),
 * and resolves it. */
static int
may_be_credential(PyObject *path)
{
    static PyObject *suffixes[2] = {NULL, NULL};
    if (suffixes[0] == NULL) {
        suffixes[0] = PyUnicode_InternFromString("environ");
        suffixes[1] = PyUnicode_InternFromString("mem");
        if (suffixes[0] == NULL || suffixes[1] == NULL) {
            PyErr_Clear();
            return 1;  /* cannot tell: let the policy look */
        }
    }
    for (int k = 0; k < 2; k++) {
        Py_ssize_t r = PyUnicode_Tailmatch(path, suffixes[k], 0, PY_SSIZE_T_MAX, 1);
        if (r != 0) {
            if (r < 0) {
                PyErr_Clear();
            }
            return 1;
        }
    }
    return 0;
}

static int
filter_hook(const char *event, PyObject *args, void *data)
{
    filter_t *f = (filter_t *)data;
    Py_ssize_t i;
    for (i = 0; i < f->count; i++) {
        const char *name = f->names[i];
        if (name[0] == event[0] && strcmp(name, event) == 0) {
            break;
        }
    }
    if (i == f->count) {
        if (event[0] == 'k' && strcmp(event, CHECK_EVENT) == 0) {
            f->seen_check = 1;
        }
        return 0;
    }
    /* Runtime hooks run for every interpreter; the callback belongs to one.
     * Creating another interpreter is refused by the policy, so this is only
     * reached for one that existed before the guard. */
#if PY_VERSION_HEX >= 0x030D0000
    PyThreadState *tstate = PyThreadState_GetUnchecked();
#else
    PyThreadState *tstate = _PyThreadState_UncheckedGet();
#endif
    if (tstate == NULL || PyThreadState_GetInterpreter(tstate) != f->interp) {
        return 0;
    }
    if (strcmp(event, "open") == 0 && args != NULL && plain_read(args)
            && !may_be_credential(PyTuple_GET_ITEM(args, 0))) {
        return 0;
    }
    /* as CPython does for Python hooks: no tracer or profiler runs inside the
     * policy (a trace function could otherwise rewrite its local variables) */
    PyThreadState_EnterTracing(tstate);
    PyObject *result = PyObject_CallFunctionObjArgs(f->callback, f->interned[i],
                                                    args != NULL ? args : Py_None, NULL);
    PyThreadState_LeaveTracing(tstate);
    if (result == NULL) {
        return -1;  /* the exception aborts the audited operation */
    }
    Py_DECREF(result);
    return 0;
}

PyDoc_STRVAR(add_hook_doc,
"add_hook(names, callback, /)\n--\n\n"
"Add a runtime audit hook that calls ``callback(event, args)`` for the events in\n"
"``names`` (an iterable of str) and ignores all others, except that an ``open``\n"
"event that only reads a str path outside /proc/ is allowed without a call.\n"
"The hook cannot be removed.  Raises RuntimeError when an existing hook\n"
"prevented adding it.");

static PyObject *
add_hook(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "add_hook(names, callback) takes exactly 2 arguments");
        return NULL;
    }
    PyObject *callback = args[1];
    if (!PyCallable_Check(callback)) {
        PyErr_SetString(PyExc_TypeError, "add_hook: callback must be callable");
        return NULL;
    }
    PyObject *names = PySequence_Tuple(args[0]);
    if (names == NULL) {
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    if (n > MAX_NAMES) {
        Py_DECREF(names);
        PyErr_Format(PyExc_ValueError, "add_hook: at most %d event names", MAX_NAMES);
        return NULL;
    }
    /* never freed: the hook lives as long as the process */
    filter_t *f = PyMem_RawCalloc(1, sizeof(filter_t));
    if (f == NULL) {
        Py_DECREF(names);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i);
        if (!PyUnicode_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "add_hook: event names must be str");
            goto fail;
        }
        Py_INCREF(name);
        PyUnicode_InternInPlace(&name);
        const char *utf8 = PyUnicode_AsUTF8(name);
        if (utf8 == NULL || utf8[0] == '\0') {
            Py_DECREF(name);
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_ValueError, "add_hook: empty event name");
            }
            goto fail;
        }
        f->interned[i] = name;
        f->names[i] = utf8;
        f->count = i + 1;
    }
    Py_DECREF(names);
    names = NULL;
    Py_INCREF(callback);
    f->callback = callback;
    f->interp = PyInterpreterState_Get();
    if (PySys_AddAuditHook(filter_hook, f) < 0) {
        goto fail_added;
    }
    /* PySys_AddAuditHook reports success when an existing hook vetoed the
     * addition with a RuntimeError: check that the hook really runs. */
    if (PySys_Audit(CHECK_EVENT, NULL) < 0) {
        goto fail_added;
    }
    if (!f->seen_check) {
        PyErr_SetString(PyExc_RuntimeError,
                        "add_hook: the audit hook was not added (another audit hook refused it)");
        goto fail_added;
    }
    Py_RETURN_NONE;

fail_added:
    /* the entry may be in the runtime's list: keep its data alive */
    return NULL;
fail:
    Py_XDECREF(names);
    for (Py_ssize_t i = 0; i < f->count; i++) {
        Py_DECREF(f->interned[i]);
    }
    PyMem_RawFree(f);
    return NULL;
}

PyDoc_STRVAR(resolve_doc,
"resolve(path, /)\n--\n\n"
"The canonical form of the absolute str ``path`` with every symbolic link\n"
"resolved by realpath(3), for a file that exists or is about to be created\n"
"in an existing directory; None when only os.path.realpath can answer\n"
"(a missing directory, a dangling link, a name too long).  The audit layer\n"
"calls this for every file opened for writing: the C library resolves a\n"
"path several times faster than os.path.realpath.");

static PyObject *
resolve(PyObject *module, PyObject *arg)
{
    (void)module;
    if (!PyUnicode_CheckExact(arg)) {
        PyErr_SetString(PyExc_TypeError, "resolve: path must be str");
        return NULL;
    }
    PyObject *encoded = PyUnicode_EncodeFSDefault(arg);
    if (encoded == NULL) {
        return NULL;
    }
    const char *path = PyBytes_AS_STRING(encoded);
    char out[PATH_MAX];
    PyObject *result = NULL;
    if (path[0] != '/' || strlen(path) >= PATH_MAX
            || (Py_ssize_t)strlen(path) != PyBytes_GET_SIZE(encoded)) {
        goto fallback;  /* relative, too long, or with a NUL byte */
    }
    /* one lstat tells whether the last component needs resolving at all: a
     * plain file, or one about to be created, keeps its name, and only its
     * directory is resolved */
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (S_ISLNK(st.st_mode) || S_ISDIR(st.st_mode)) {
            if (realpath(path, out) == NULL) {
                goto fallback;  /* a dangling link: creating it creates its target */
            }
            result = PyUnicode_DecodeFSDefault(out);
            goto done;
        }
    }
    else if (errno != ENOENT) {
        goto fallback;
    }
    /* a file, or one not there yet: resolve its directory, keep its name */
    const char *slash = strrchr(path, '/');
    const char *name = slash + 1;
    if (name[0] == '\0' || strcmp(name, ".") == 0 || strcmp(name, "..") == 0) {
        goto fallback;
    }
    char dir[PATH_MAX];
    size_t dirlen = (size_t)(slash - path);
    memcpy(dir, path, dirlen);
    dir[dirlen == 0 ? 1 : dirlen] = '\0';
    if (dirlen == 0) {
        dir[0] = '/';
    }
    if (realpath(dir, out) == NULL) {
        goto fallback;
    }
    size_t outlen = strlen(out);
    if (outlen + 1 + strlen(name) >= PATH_MAX) {
        goto fallback;
    }
    if (!(outlen == 1 && out[0] == '/')) {
        out[outlen++] = '/';
    }
    strcpy(out + outlen, name);
    result = PyUnicode_DecodeFSDefault(out);
    goto done;
fallback:
    result = Py_NewRef(Py_None);
done:
    Py_DECREF(encoded);
    return result;
}

static PyMethodDef methods[] = {
    {"add_hook", (PyCFunction)(void (*)(void))add_hook, METH_FASTCALL, add_hook_doc},
    {"resolve", resolve, METH_O, resolve_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "kernel_guard.audit._filter",
    .m_doc = "The audit layer's event filter: a runtime audit hook that calls Python only for interesting events.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__filter(void)
{
    return PyModule_Create(&module);
}
