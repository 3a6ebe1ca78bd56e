/*
 * The two calls the supervisor hardens itself with, prctl(2) and seccomp(2),
 * without ctypes: ctypes, _ctypes and libffi cost every kernel's supervisor
 * about half a megabyte of memory for these two calls alone.  hardening.py
 * falls back to ctypes where this module was not built.
 *
 * What it cannot do: nothing of its own judgement.  load_filter installs the
 * program the launcher compiled with libseccomp, as handed over; it checks
 * only that the bytes are whole BPF instructions.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <linux/filter.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define SECCOMP_SET_MODE_FILTER 1
#define SECCOMP_FILTER_FLAG_TSYNC 1

static PyObject *prctl_one(PyObject *module, PyObject *args)
{
    int option;
    unsigned long value;
    if (!PyArg_ParseTuple(args, "ik:prctl", &option, &value))
        return NULL;
    if (prctl(option, value, 0UL, 0UL, 0UL) == -1)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *load_filter(PyObject *module, PyObject *args)
{
    long number;
    Py_buffer code;
    if (!PyArg_ParseTuple(args, "ly*:load_filter", &number, &code))
        return NULL;
    if (code.len == 0 || code.len % sizeof(struct sock_filter) != 0
        || code.len / sizeof(struct sock_filter) > USHRT_MAX) {
        PyBuffer_Release(&code);
        PyErr_Format(PyExc_ValueError, "the filter handed over is not a BPF program (%zd bytes)", code.len);
        return NULL;
    }
    struct sock_fprog program = {
        .len = (unsigned short)(code.len / sizeof(struct sock_filter)),
        .filter = (struct sock_filter *)code.buf,
    };
    long result = syscall(number, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &program);
    int err = errno;
    PyBuffer_Release(&code);
    if (result == -1) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(result); /* with TSYNC, > 0: a thread that could not take it */
}

static PyMethodDef methods[] = {
    {"prctl", prctl_one, METH_VARARGS, "prctl(option, value): prctl(2) with one argument; raises OSError."},
    {"load_filter", load_filter, METH_VARARGS,
     "load_filter(seccomp_number, program) -> 0, or the id of a thread that could not take it\n\n"
     "seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC) of a BPF program's bytes; raises OSError."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_hardening",
    "prctl(2) and seccomp(2) for the supervisor's hardening, without ctypes.", -1, methods,
};

PyMODINIT_FUNC PyInit__hardening(void)
{
    return PyModule_Create(&module);
}
