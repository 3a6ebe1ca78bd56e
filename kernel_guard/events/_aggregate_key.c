/* kernel_guard.events._aggregate_key: the aggregation key of an event, in C.
 *
 * Why this exists: every event a kernel emits is keyed by the aggregator on the
 * emitting thread (aggregate.py, _key): sixteen fields from five objects.  In
 * Python that is 0.5-0.9 us an event (measured), up to a tenth of the emitting
 * thread's share of the pipeline; here it is a few dictionary lookups.
 *
 * KeyMaker(plain_types, fallback)
 *     plain_types  a tuple of types whose instances are read with dict lookups
 *                  (dict, and subclasses that do not change .get: schema.Shared)
 *     fallback     aggregate._key itself, called for any event this code does
 *                  not read exactly as it does (another mapping type, a list
 *                  subclass for args, a part that is neither a plain mapping
 *                  nor None)
 * KeyMaker(event) -> the same tuple as aggregate._key(event), or what it raises.
 * tests/events/test_aggregate_key.py holds the two to each other.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

typedef struct {
    PyObject_HEAD
    PyObject *plain_types;  /* tuple of types */
    PyObject *fallback;
} KeyMakerObject;

/* interned field names, made once */
static PyObject *S_event, *S_kernel_guard, *S_process, *S_file, *S_user, *S_name, *S_kernel_id, *S_notebook,
    *S_execution_count, *S_cell_id, *S_pid, *S_action, *S_outcome, *S_reason, *S_layer, *S_technique,
    *S_target, *S_executable, *S_args, *S_command_line, *S_path;

static int
is_plain(KeyMakerObject *self, PyObject *obj)
{
    PyTypeObject *type = Py_TYPE(obj);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(self->plain_types); i++)
        if ((PyObject *)type == PyTuple_GET_ITEM(self->plain_types, i))
            return 1;
    return 0;
}

/* dict.get(key) as a new reference (None when missing), or NULL with an error set. */
static PyObject *
get(PyObject *mapping, PyObject *key)
{
    if (mapping == NULL)
        Py_RETURN_NONE;
    PyObject *value = PyDict_GetItemWithError(mapping, key);
    if (value == NULL) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE;
    }
    Py_INCREF(value);
    return value;
}

/* `event.get(name) or {}` as the mapping to read (borrowed; NULL means an empty one).
 * Returns 0, or 1 when the part is of a kind only the fallback reads exactly. */
static int
part(KeyMakerObject *self, PyObject *event, PyObject *name, PyObject **out)
{
    PyObject *value = event ? PyDict_GetItemWithError(event, name) : NULL;
    *out = NULL;
    if (value == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (value == Py_None)
        return 0;
    if (!is_plain(self, value))
        return 1;
    *out = PyDict_GET_SIZE(value) ? value : NULL;  /* an empty mapping is falsy: {} instead */
    return 0;
}

static PyObject *
KeyMaker_call(KeyMakerObject *self, PyObject *args, PyObject *kwargs)
{
    PyObject *event;
    if (!PyArg_UnpackTuple(args, "KeyMaker", 1, 1, &event) || (kwargs && PyDict_GET_SIZE(kwargs))) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "KeyMaker takes one event");
        return NULL;
    }
    if (!is_plain(self, event))
        return PyObject_CallOneArg(self->fallback, event);
    PyObject *ev = NULL, *guard = NULL, *proc = NULL, *user = NULL, *file = NULL;
    /* each step: -1 an error, 1 a part only the fallback reads exactly, 0 go on */
    int odd = part(self, event, S_event, &ev);
    if (!odd)
        odd = part(self, event, S_kernel_guard, &guard);
    if (!odd)
        odd = part(self, event, S_process, &proc);
    if (!odd)
        odd = part(self, event, S_user, &user);
    if (odd < 0)
        return NULL;
    /* file is read only when it is a dict (any other value: None, as aggregate._key does) */
    PyObject *file_value = odd ? NULL : PyDict_GetItemWithError(event, S_file);
    if (file_value == NULL && PyErr_Occurred())
        return NULL;
    if (file_value != NULL && PyDict_Check(file_value)) {
        if (!is_plain(self, file_value))
            odd = 1;
        else
            file = file_value;
    }
    PyObject *args_value = NULL;
    if (!odd) {
        args_value = get(proc, S_args);
        if (args_value == NULL)
            return NULL;
        if (PyList_Check(args_value) && !PyList_CheckExact(args_value))
            odd = 1;  /* tuple() of a list subclass iterates it its own way */
    }
    if (odd) {
        Py_XDECREF(args_value);
        return PyObject_CallOneArg(self->fallback, event);
    }
    if (PyList_CheckExact(args_value)) {
        PyObject *as_tuple = PyList_AsTuple(args_value);
        Py_DECREF(args_value);
        if (as_tuple == NULL)
            return NULL;
        args_value = as_tuple;
    }
    PyObject *key = PyTuple_New(16);
    if (key == NULL) {
        Py_DECREF(args_value);
        return NULL;
    }
    struct { PyObject **mapping; PyObject *name; } fields[16] = {
        {&user, S_name}, {&guard, S_kernel_id}, {&guard, S_notebook}, {&guard, S_execution_count},
        {&guard, S_cell_id}, {&proc, S_pid}, {&ev, S_action}, {&ev, S_outcome}, {&ev, S_reason},
        {&guard, S_layer}, {&guard, S_technique}, {&guard, S_target}, {&proc, S_executable}, {NULL, NULL},
        {&proc, S_command_line}, {&file, S_path},
    };
    for (int i = 0; i < 16; i++) {
        PyObject *value = i == 13 ? args_value : get(*fields[i].mapping, fields[i].name);
        if (value == NULL) {
            if (i < 13)
                Py_DECREF(args_value);
            Py_DECREF(key);
            return NULL;
        }
        PyTuple_SET_ITEM(key, i, value);
    }
    return key;
}

static int
KeyMaker_init(KeyMakerObject *self, PyObject *args, PyObject *kwargs)
{
    PyObject *plain_types, *fallback;
    if (!PyArg_ParseTuple(args, "O!O:KeyMaker", &PyTuple_Type, &plain_types, &fallback))
        return -1;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(plain_types); i++) {
        PyObject *type = PyTuple_GET_ITEM(plain_types, i);
        if (!PyType_Check(type) || !PyType_IsSubtype((PyTypeObject *)type, &PyDict_Type)) {
            PyErr_SetString(PyExc_TypeError, "KeyMaker: plain_types are dict types");
            return -1;
        }
    }
    if (!PyCallable_Check(fallback)) {
        PyErr_SetString(PyExc_TypeError, "KeyMaker: fallback must be callable");
        return -1;
    }
    Py_INCREF(plain_types);
    Py_INCREF(fallback);
    Py_XSETREF(self->plain_types, plain_types);
    Py_XSETREF(self->fallback, fallback);
    return 0;
}

static void
KeyMaker_dealloc(KeyMakerObject *self)
{
    Py_XDECREF(self->plain_types);
    Py_XDECREF(self->fallback);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject KeyMakerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kernel_guard.events._aggregate_key.KeyMaker",
    .tp_basicsize = sizeof(KeyMakerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "KeyMaker(plain_types, fallback)(event) -> aggregate._key(event), read natively",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)KeyMaker_init,
    .tp_dealloc = (destructor)KeyMaker_dealloc,
    .tp_call = (ternaryfunc)KeyMaker_call,
};

static int
intern_names(void)
{
    struct { PyObject **slot; const char *text; } names[] = {
        {&S_event, "event"}, {&S_kernel_guard, "kernel_guard"}, {&S_process, "process"}, {&S_file, "file"},
        {&S_user, "user"}, {&S_name, "name"}, {&S_kernel_id, "kernel_id"}, {&S_notebook, "notebook"},
        {&S_execution_count, "execution_count"}, {&S_cell_id, "cell_id"}, {&S_pid, "pid"},
        {&S_action, "action"}, {&S_outcome, "outcome"}, {&S_reason, "reason"}, {&S_layer, "layer"},
        {&S_technique, "technique"}, {&S_target, "target"}, {&S_executable, "executable"},
        {&S_args, "args"}, {&S_command_line, "command_line"}, {&S_path, "path"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (*names[i].slot == NULL && (*names[i].slot = PyUnicode_InternFromString(names[i].text)) == NULL)
            return -1;
    return 0;
}

static int
aggregate_key_exec(PyObject *module)
{
    if (intern_names() < 0 || PyType_Ready(&KeyMakerType) < 0)
        return -1;
    Py_INCREF(&KeyMakerType);
    if (PyModule_AddObject(module, "KeyMaker", (PyObject *)&KeyMakerType) < 0) {
        Py_DECREF(&KeyMakerType);
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot aggregate_key_slots[] = {
    {Py_mod_exec, aggregate_key_exec},
    {0, NULL},
};

static struct PyModuleDef aggregate_key_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "kernel_guard.events._aggregate_key",
    .m_doc = "The aggregation key of an event (aggregate._key), read natively.",
    .m_size = 0,
    .m_slots = aggregate_key_slots,
};

PyMODINIT_FUNC
PyInit__aggregate_key(void)
{
    return PyModuleDef_Init(&aggregate_key_module);
}
