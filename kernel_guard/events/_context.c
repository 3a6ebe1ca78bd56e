/* kernel_guard.events._context: the context every event carries, added in C.
 *
 * Why this exists: processors.AddContext runs on the emitting thread for every
 * event (user, host, pid, mode, kernel, notebook, cell).  In Python it cost
 * 0.7-1.3 us an event (measured), a quarter of what emit() costs the cell; here
 * it is a few attribute reads and dictionary stores.
 *
 * ContextStamp: the base type of processors.AddContext, whose call it makes.
 *     ContextStamp.__init__(self, pid_cell)
 *         pid_cell  a one-item list holding this process's pid (processors._pid,
 *                   which a fork handler keeps right)
 *     self.context  the KernelContext whose attributes are read at each call (they
 *                   change as cells run): AddContext's own attribute, held here
 *     self(event) adds what AddContext's Python code adds, in the same order.
 *     Any event of another shape (not a dict, or its process or kernel_guard
 *     something else than a dict or None) goes to self._add(event), the Python
 *     code, before anything is changed; a user or host value not seen before
 *     is made shareable by self._shared(part, field, value).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <structmember.h>

typedef struct {
    PyObject_HEAD
    PyObject *context;
    PyObject *pid_cell;
    /* the user and host values last seen, and the shared objects made from them */
    PyObject *user_value, *user_shared, *host_value, *host_shared;
} ContextStampObject;

static PyObject *S_user, *S_host, *S_name, *S_hostname, *S_process, *S_pid, *S_kernel_guard, *S_mode, *S_author,
    *S_recorded_by, *S_kernel_id, *S_notebook, *S_execution_count, *S_cell_id, *S__add, *S__shared;

/* The object every event shares as `part` for the context's current `attr`: a new
 * reference, or NULL. */
static PyObject *
shared_part(ContextStampObject *self, PyObject *part, PyObject *field, PyObject *attr, PyObject **seen,
            PyObject **shared)
{
    PyObject *value = PyObject_GetAttr(self->context, attr);
    if (value == NULL)
        return NULL;
    if (value == *seen && *shared != NULL) {
        Py_DECREF(value);
        return Py_NewRef(*shared);
    }
    PyObject *made = PyObject_CallMethodObjArgs((PyObject *)self, S__shared, part, field, value, NULL);
    if (made != NULL) {
        Py_XSETREF(*seen, value);
        Py_XSETREF(*shared, Py_NewRef(made));
    } else {
        Py_DECREF(value);
    }
    return made;
}

/* event[key] when missing, made by shared_part.  0, or -1. */
static int
add_shared(ContextStampObject *self, PyObject *event, PyObject *part, PyObject *field, PyObject *attr,
           PyObject **seen, PyObject **shared)
{
    int has = PyDict_Contains(event, part);
    if (has != 0)
        return has < 0 ? -1 : 0;
    PyObject *value = shared_part(self, part, field, attr, seen, shared);
    if (value == NULL)
        return -1;
    int rc = PyDict_SetItem(event, part, value);
    Py_DECREF(value);
    return rc;
}

/* `event[key]`, a plain dict put in when it is missing or None (borrowed), or NULL. */
static PyObject *
object_of(PyObject *event, PyObject *key)
{
    PyObject *node = PyDict_GetItemWithError(event, key);
    if (node != NULL && node != Py_None)
        return node;
    if (PyErr_Occurred())
        return NULL;
    node = PyDict_New();
    if (node == NULL || PyDict_SetItem(event, key, node) < 0) {
        Py_XDECREF(node);
        return NULL;
    }
    Py_DECREF(node);  /* the event holds it */
    return node;
}

/* Whether event[key] is missing, None or a plain dict: the shapes this code takes. */
static int
plain_or_absent(PyObject *event, PyObject *key)
{
    PyObject *node = PyDict_GetItemWithError(event, key);
    return node == NULL ? !PyErr_Occurred() : node == Py_None || PyDict_CheckExact(node);
}

/* guard.setdefault(key, context.attr) when that value is truthy (or always: `always`). */
static int
default_from(ContextStampObject *self, PyObject *guard, PyObject *key, PyObject *attr, int always)
{
    PyObject *value = PyObject_GetAttr(self->context, attr);
    if (value == NULL)
        return -1;
    int truth = always ? 1 : PyObject_IsTrue(value);
    PyObject *kept = truth > 0 ? PyDict_SetDefault(guard, key, value) : NULL;
    Py_DECREF(value);
    return truth < 0 || (truth > 0 && kept == NULL) ? -1 : 0;
}

/* The cell's number and id, unless the event names its own cell. */
static int
add_cell(ContextStampObject *self, PyObject *guard)
{
    int has = PyDict_Contains(guard, S_execution_count);
    if (has != 0)
        return has < 0 ? -1 : 0;
    PyObject *count = PyObject_GetAttr(self->context, S_execution_count);
    if (count == NULL)
        return -1;
    int rc = count == Py_None ? 0 : PyDict_SetItem(guard, S_execution_count, count);
    Py_DECREF(count);
    return rc < 0 ? -1 : default_from(self, guard, S_cell_id, S_cell_id, 0);
}

static int
add_guard(ContextStampObject *self, PyObject *guard)
{
    if (default_from(self, guard, S_mode, S_mode, 1) < 0
            || default_from(self, guard, S_recorded_by, S_author, 0) < 0
            || default_from(self, guard, S_kernel_id, S_kernel_id, 0) < 0
            || default_from(self, guard, S_notebook, S_notebook, 0) < 0)
        return -1;
    return add_cell(self, guard);
}

static PyObject *
ContextStamp_call(ContextStampObject *self, PyObject *args, PyObject *kwargs)
{
    PyObject *event;
    if (!PyArg_UnpackTuple(args, "AddContext", 1, 1, &event))
        return NULL;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs))
        return PyErr_Format(PyExc_TypeError, "AddContext takes no keyword arguments");
    if (self->context == NULL || self->pid_cell == NULL)
        return PyErr_Format(PyExc_RuntimeError, "AddContext: ContextStamp.__init__ was not called, or no context set");
    if (!PyDict_CheckExact(event) || !plain_or_absent(event, S_process) || !plain_or_absent(event, S_kernel_guard)) {
        if (PyErr_Occurred())
            return NULL;
        return PyObject_CallMethodOneArg((PyObject *)self, S__add, event);
    }
    if (add_shared(self, event, S_user, S_name, S_user, &self->user_value, &self->user_shared) < 0
            || add_shared(self, event, S_host, S_hostname, S_hostname, &self->host_value, &self->host_shared) < 0)
        return NULL;
    PyObject *proc = object_of(event, S_process);
    if (proc == NULL)
        return NULL;
    int has_pid = PyDict_Contains(proc, S_pid);
    if (has_pid < 0 || (!has_pid && PyDict_SetItem(proc, S_pid, PyList_GET_ITEM(self->pid_cell, 0)) < 0))
        return NULL;
    PyObject *guard = object_of(event, S_kernel_guard);
    if (guard == NULL || add_guard(self, guard) < 0)
        return NULL;
    return Py_NewRef(event);
}

static int
ContextStamp_init(ContextStampObject *self, PyObject *args, PyObject *kwargs)
{
    PyObject *pid_cell;
    static char *names[] = {"pid_cell", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!:ContextStamp", names, &PyList_Type, &pid_cell))
        return -1;
    if (PyList_GET_SIZE(pid_cell) != 1) {
        PyErr_SetString(PyExc_ValueError, "ContextStamp: pid_cell holds one pid");
        return -1;
    }
    Py_XSETREF(self->pid_cell, Py_NewRef(pid_cell));
    Py_CLEAR(self->user_value);
    Py_CLEAR(self->user_shared);
    Py_CLEAR(self->host_value);
    Py_CLEAR(self->host_shared);
    return 0;
}

static int
ContextStamp_traverse(ContextStampObject *self, visitproc visit, void *arg)
{
    /* not the type: a Python subclass's traverse visits its (heap) type itself */
    Py_VISIT(self->context);
    Py_VISIT(self->pid_cell);
    Py_VISIT(self->user_value);
    Py_VISIT(self->user_shared);
    Py_VISIT(self->host_value);
    Py_VISIT(self->host_shared);
    return 0;
}

static int
ContextStamp_clear(ContextStampObject *self)
{
    Py_CLEAR(self->context);
    Py_CLEAR(self->pid_cell);
    Py_CLEAR(self->user_value);
    Py_CLEAR(self->user_shared);
    Py_CLEAR(self->host_value);
    Py_CLEAR(self->host_shared);
    return 0;
}

static void
ContextStamp_dealloc(ContextStampObject *self)
{
    /* a Python subclass's dealloc releases its (heap) type after this returns */
    PyObject_GC_UnTrack(self);
    ContextStamp_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef ContextStamp_members[] = {
    {"context", T_OBJECT_EX, offsetof(ContextStampObject, context), 0,
     "the KernelContext whose attributes each call reads"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject ContextStampType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kernel_guard.events._context.ContextStamp",
    .tp_basicsize = sizeof(ContextStampObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The base of processors.AddContext: its call, natively",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)ContextStamp_init,
    .tp_traverse = (traverseproc)ContextStamp_traverse,
    .tp_clear = (inquiry)ContextStamp_clear,
    .tp_dealloc = (destructor)ContextStamp_dealloc,
    .tp_call = (ternaryfunc)ContextStamp_call,
    .tp_members = ContextStamp_members,
};

static int
intern_names(void)
{
    struct { PyObject **slot; const char *text; } names[] = {
        {&S_user, "user"}, {&S_host, "host"}, {&S_name, "name"}, {&S_hostname, "hostname"},
        {&S_process, "process"}, {&S_pid, "pid"}, {&S_kernel_guard, "kernel_guard"}, {&S_mode, "mode"},
        {&S_author, "author"}, {&S_recorded_by, "recorded_by"}, {&S_kernel_id, "kernel_id"},
        {&S_notebook, "notebook"}, {&S_execution_count, "execution_count"}, {&S_cell_id, "cell_id"},
        {&S__add, "_add"}, {&S__shared, "_shared"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (*names[i].slot == NULL && (*names[i].slot = PyUnicode_InternFromString(names[i].text)) == NULL)
            return -1;
    return 0;
}

static int
context_exec(PyObject *module)
{
    if (intern_names() < 0 || PyType_Ready(&ContextStampType) < 0)
        return -1;
    Py_INCREF(&ContextStampType);
    if (PyModule_AddObject(module, "ContextStamp", (PyObject *)&ContextStampType) < 0) {
        Py_DECREF(&ContextStampType);
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot context_slots[] = {
    {Py_mod_exec, context_exec},
    {0, NULL},
};

static struct PyModuleDef context_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "kernel_guard.events._context",
    .m_doc = "The context every event carries (processors.AddContext), added natively.",
    .m_size = 0,
    .m_slots = context_slots,
};

PyMODINIT_FUNC
PyInit__context(void)
{
    return PyModuleDef_Init(&context_module);
}
